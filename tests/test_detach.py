"""Detached runs (``fit(wait=False)``): a supervisor process of its own takes the run, the
caller may exit, and every supervision promise still holds: deadline and grace, cancel,
restarts, fail-fast, and a supervisor lost to SIGKILL (the job dies, in a container too, and
the run reads Failed). Real interpreters, real signals, real Docker; times measured from the
event they are about."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import RECORD_PID, pid_alive, processes_mentioning, read_pids, wait_until, write_script

from fitdock import Estimator, Mpi, Run, RunStatus

GRACE = 1.0

WAITS_FOR_GO = (
    RECORD_PID
    + """
import pathlib, time
while not pathlib.Path(os.environ["GO"]).exists():
    time.sleep(0.05)
pathlib.Path("outputs/result.txt").write_text("trained")
print("done", flush=True)
"""
)

IGNORES_TERM = (
    RECORD_PID
    + """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(60)
"""
)

# The caller: fit(wait=False), print the run id and how long fit took, then exit (or wait,
# with "wait" as the last argument, to be interrupted).
CALLER = """
import sys, time
from fitdock import Estimator
est = Estimator(sys.argv[1], entry_script="train.py", user_managed=True,
                environment_variables={"GO": sys.argv[2], "PID_FILE": sys.argv[3]})
started = time.monotonic()
run = est.fit(wait=False)
print(run.id, f"{time.monotonic() - started:.3f}", flush=True)
if sys.argv[4] == "wait":
    run.wait_for_completion()
"""


def estimator(tmp_path: Path, script: str, **kwargs: object) -> Estimator:
    variables = {"PID_FILE": str(tmp_path / "pids"), "GO": str(tmp_path / "go")}
    return Estimator(
        write_script(tmp_path / "src", script),
        entry_script="train.py",
        user_managed=True,
        environment_variables=variables,
        **kwargs,  # type: ignore[arg-type]
    )


def supervisor_pid(run: Run) -> int:
    """The detached supervisor's pid, once it has taken the run (it names itself in the
    record before the run reads Running)."""
    assert wait_until(lambda: run.status is RunStatus.RUNNING, 15), run.record
    pid = int(run.record["supervisor"]["pid"])
    assert pid != os.getpid()
    return pid


def assert_all_gone(run: Run, pids: list[int], supervisor: int) -> None:
    assert wait_until(lambda: not pid_alive(supervisor), 5), "the supervisor outlived the run"
    assert [pid for pid in pids if pid_alive(pid)] == [], "job processes outlived the run"
    assert processes_mentioning(run.id) == [], "launcher/reaper processes outlived the run"


def epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def open_files() -> list[str]:
    """What this process's descriptors point at."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the one listdir used, closed since
            continue
    return found


def start_caller(tmp_path: Path, then: str) -> subprocess.Popen[str]:
    src = write_script(tmp_path / "src", WAITS_FOR_GO)
    argv = [sys.executable, "-c", textwrap.dedent(CALLER), str(src), str(tmp_path / "go")]
    argv += [str(tmp_path / "pids"), then]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )


# ---------------------------------------------------------------------------------------------
# The caller exits; the run goes on, supervised
# ---------------------------------------------------------------------------------------------
def test_caller_exit_leaves_the_run_supervised_to_completion(tmp_path: Path) -> None:
    caller = start_caller(tmp_path, "exit")
    out, err = caller.communicate(timeout=60)
    assert caller.returncode == 0, err
    run_id, took = out.split()
    assert float(took) < 2.0, f"fit(wait=False) took {took} s to return"
    run = Run(run_id)
    (pid,) = read_pids(tmp_path / "pids")
    supervisor = supervisor_pid(run)
    assert supervisor != caller.pid
    # the caller is gone and the job still runs (it waits for the go file), supervised
    assert pid_alive(pid) and pid_alive(supervisor)
    assert run.status is RunStatus.RUNNING
    (tmp_path / "go").touch()
    record = run.wait_for_completion()
    assert record["status"] == "Completed"
    assert (run.output_dir / "result.txt").read_text() == "trained"
    assert (run.log_dir / "rank_0.stdout.log").read_text() == "done\n"
    assert (run.log_dir / "launcher.log").read_text() == ""  # the supervisor said nothing
    assert_all_gone(run, [pid], supervisor)


def test_ctrl_c_while_waiting_on_a_detached_run_leaves_it_running(tmp_path: Path) -> None:
    caller = start_caller(tmp_path, "wait")
    try:
        assert caller.stdout is not None
        run_id = caller.stdout.readline().split()[0]
        run = Run(run_id)
        supervisor = supervisor_pid(run)
        caller.send_signal(signal.SIGINT)
        _, err = caller.communicate(timeout=30)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.communicate()
    assert "KeyboardInterrupt" in err
    assert run.status is RunStatus.RUNNING  # only stopping the wait: cancel() stops the run
    (tmp_path / "go").touch()
    assert run.wait_for_completion()["status"] == "Completed"
    assert_all_gone(run, read_pids(tmp_path / "pids"), supervisor)


# ---------------------------------------------------------------------------------------------
# The supervision promises, held by the detached supervisor
# ---------------------------------------------------------------------------------------------
def test_killed_detached_supervisor_fails_the_run_and_no_rank_survives(tmp_path: Path) -> None:
    run = estimator(tmp_path, IGNORES_TERM).fit(wait=False)
    pids = read_pids(tmp_path / "pids")
    supervisor = supervisor_pid(run)
    lock = str(run.run_dir / "supervisor.lock")
    assert lock not in open_files(), "the caller still holds the supervisor lock"
    os.kill(supervisor, signal.SIGKILL)
    killed = time.monotonic()
    gone = wait_until(lambda: not any(pid_alive(pid) for pid in pids), 10)
    took = time.monotonic() - killed
    assert gone, f"job processes {pids} outlived their supervisor"
    assert took < 5.0, f"the ranks died {took:.1f} s after their supervisor"
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "lost_supervisor"
    assert wait_until(lambda: not processes_mentioning(run.id), 5), "reaper left behind"


def test_deadline_and_grace_hold_for_a_detached_run(tmp_path: Path) -> None:
    est = estimator(
        tmp_path, IGNORES_TERM, max_run_duration_seconds=1.0, termination_grace_seconds=GRACE
    )
    run = est.fit(wait=False)
    pids = read_pids(tmp_path / "pids")
    supervisor = supervisor_pid(run)
    record = run.wait_for_completion(raise_on_error=False)
    assert record["status"] == "TimedOut", record["error"]
    lasted = epoch(record["ended_at"]) - epoch(record["started_at"])
    assert 1.0 + GRACE - 0.2 <= lasted < 1.0 + GRACE + 3.0, lasted
    assert_all_gone(run, pids, supervisor)


def test_sigterm_to_the_detached_supervisor_cancels_the_run(tmp_path: Path) -> None:
    run = estimator(tmp_path, IGNORES_TERM, termination_grace_seconds=GRACE).fit(wait=False)
    pids = read_pids(tmp_path / "pids")
    supervisor = supervisor_pid(run)
    os.kill(supervisor, signal.SIGTERM)
    asked = time.monotonic()
    record = run.wait_for_completion(raise_on_error=False)
    assert time.monotonic() - asked < GRACE + 3.0
    assert record["status"] == "Canceled"
    assert record["error"]["reason"] == "canceled"
    assert_all_gone(run, pids, supervisor)


def test_cancel_from_the_handle_stops_a_detached_run(tmp_path: Path) -> None:
    run = estimator(tmp_path, WAITS_FOR_GO, termination_grace_seconds=GRACE).fit(wait=False)
    pids = read_pids(tmp_path / "pids")
    supervisor = supervisor_pid(run)
    run.cancel()
    asked = time.monotonic()
    assert run.wait_for_completion(raise_on_error=False)["status"] == "Canceled"
    assert time.monotonic() - asked < GRACE + 3.0
    assert not (run.output_dir / "result.txt").exists()
    assert_all_gone(run, pids, supervisor)


def test_restart_after_a_failure_in_a_detached_run(tmp_path: Path) -> None:
    script = """
    import os, pathlib, sys
    if os.environ["FITDOCK_ATTEMPT"] == "1":
        sys.exit(3)
    pathlib.Path("outputs/attempt.txt").write_text(os.environ["FITDOCK_ATTEMPT"])
    """
    run = estimator(tmp_path, script, max_restarts=1).fit(wait=False)
    record = run.wait_for_completion()
    assert [a["outcome"] for a in record["attempts"]] == ["rank_failed", "completed"]
    assert (run.output_dir / "attempt.txt").read_text() == "2"


@pytest.mark.mpi
def test_fail_fast_in_a_detached_mpi_run(tmp_path: Path) -> None:
    script = (
        RECORD_PID
        + """
import sys, time
if os.environ["RANK"] == "1":
    while len(open(os.environ["PID_FILE"]).read().split()) < 2:  # both ranks are up
        time.sleep(0.05)
    print("rank 1: bad batch", file=sys.stderr, flush=True)
    sys.exit(3)
time.sleep(60)
"""
    )
    est = estimator(tmp_path, script, process_count_per_node=2, distributed_training=Mpi())
    run = est.fit(wait=False)
    pids = read_pids(tmp_path / "pids", 2)
    supervisor = supervisor_pid(run)
    record = run.wait_for_completion(raise_on_error=False)
    assert record["status"] == "Failed"
    assert (record["error"]["reason"], record["error"]["rank"]) == ("rank_failed", 1)
    failed_at = float(record["ranks"]["1"]["ended"])  # the rank's exit record: epoch seconds
    assert epoch(record["ended_at"]) - failed_at < 10.0, "the other rank was not stopped fast"
    assert_all_gone(run, pids, supervisor)


@pytest.mark.docker
def test_container_stops_when_the_detached_supervisor_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FITDOCK_BASE_IMAGE", "local/debian:bookworm")
    src = write_script(
        tmp_path / "src",
        "import pathlib, time\npathlib.Path('outputs/up').touch()\ntime.sleep(60)\n",
    )
    run = Estimator(src, entry_script="train.py", use_docker=True).fit(wait=False)
    assert wait_until((run.output_dir / "up").exists, 300), run.record.get("error")
    assert containers(run.id), "the job should be running in its container"
    supervisor = supervisor_pid(run)
    os.kill(supervisor, signal.SIGKILL)
    killed = time.monotonic()
    assert wait_until(lambda: not containers(run.id), 15, interval=0.2)
    assert time.monotonic() - killed < 10, "the container outlived its supervisor"
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "lost_supervisor"


def containers(run_id: str) -> str:
    """The ids of the run's containers, running or not."""
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=fitdock-{run_id}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()
