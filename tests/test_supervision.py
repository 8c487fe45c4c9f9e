"""Supervision with real processes and real signals: deadline, grace, cancel, orphans,
and a supervisor that dies by SIGKILL."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import (
    RECORD_PID,
    pid_alive,
    processes_mentioning,
    python_child,
    python_child_killed_after,
    read_pids,
    wait_until,
    write_script,
)

from fitdock import Estimator, Run, RunStatus
from fitdock.errors import RunFailedError
from fitdock.jobside.jobtree import ORPHAN_GRACE

DEADLINE = 1.0
GRACE = 1.0

SLEEPER = RECORD_PID + "import time\ntime.sleep(60)\n"

# The pid is the script's "ready" marker: these two write it only once their SIGTERM
# handler is in place, so a test that acts on the pid never races the handler.
TRAPS_TERM = (
    """
import os, signal, sys, time
def save(*_):
    with open(os.environ["CKPT_FILE"], "w") as f:
        f.write("checkpoint saved")
    sys.exit(0)
signal.signal(signal.SIGTERM, save)
"""
    + RECORD_PID
    + "time.sleep(60)\n"
)

IGNORES_TERM = (
    """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
"""
    + RECORD_PID
    + "time.sleep(60)\n"
)


def started_wall(run: Run) -> float:
    return dt.datetime.fromisoformat(run.record["started_at"]).timestamp()


def estimator(tmp_path: Path, script: str, **kwargs: object) -> Estimator:
    variables = {"PID_FILE": str(tmp_path / "pids"), "CKPT_FILE": str(tmp_path / "ckpt.txt")}
    return Estimator(
        write_script(tmp_path / "src", script),
        entry_script="train.py",
        user_managed=True,
        environment_variables=variables,
        **kwargs,  # type: ignore[arg-type]
    )


def assert_all_gone(run: Run, pids: list[int]) -> None:
    assert [pid for pid in pids if pid_alive(pid)] == [], "job processes outlived the run"
    assert processes_mentioning(run.id) == [], "launcher/reaper processes outlived the run"
    reaper = run.record.get("reaper_pid")
    assert reaper is None or not pid_alive(reaper)


# ---------------------------------------------------------------------------------------------
# Deadline
# ---------------------------------------------------------------------------------------------
def test_deadline_stops_the_job_and_reads_timed_out(tmp_path: Path) -> None:
    est = estimator(
        tmp_path, SLEEPER, max_run_duration_seconds=DEADLINE, termination_grace_seconds=GRACE
    )
    run = est.fit()
    returned = time.time()
    assert run.status is RunStatus.TIMED_OUT
    assert run.error == {"reason": "timeout", "message": "exceeded max_run_duration_seconds=1"}
    ran_for = returned - started_wall(run)
    assert DEADLINE - 0.05 <= ran_for < DEADLINE + GRACE + 1.0
    rank = run.record["ranks"]["0"]
    assert (rank["signal"], rank["exit_code"]) == (signal.SIGTERM, 128 + signal.SIGTERM)
    assert_all_gone(run, read_pids(tmp_path / "pids"))


def test_script_that_saves_on_sigterm_within_the_grace_still_times_out(tmp_path: Path) -> None:
    est = estimator(
        tmp_path, TRAPS_TERM, max_run_duration_seconds=DEADLINE, termination_grace_seconds=GRACE
    )
    run = est.fit()
    returned = time.time()
    assert (tmp_path / "ckpt.txt").read_text() == "checkpoint saved"
    assert run.status is RunStatus.TIMED_OUT
    assert run.error is not None and run.error["reason"] == "timeout"
    assert run.record["ranks"]["0"]["exit_code"] == 0, "the script exited cleanly in the grace"
    assert returned - started_wall(run) < DEADLINE + GRACE + 1.0
    assert_all_gone(run, read_pids(tmp_path / "pids"))


def test_script_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    est = estimator(
        tmp_path, IGNORES_TERM, max_run_duration_seconds=DEADLINE, termination_grace_seconds=GRACE
    )
    run = est.fit()
    returned = time.time()
    pids = read_pids(tmp_path / "pids")
    assert run.status is RunStatus.TIMED_OUT
    ran_for = returned - started_wall(run)
    assert ran_for >= DEADLINE + GRACE - 0.05, "SIGKILL came before the grace was over"
    assert ran_for < DEADLINE + GRACE + 1.0, "pid should be gone by deadline + grace + 1 s"
    assert_all_gone(run, pids)


DAEMON = (
    RECORD_PID
    + """
import subprocess, sys, time
child = ("import os, signal, time\\n"
         "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
         "open(os.environ['PID_FILE'], 'a').write(f'{os.getpid()}\\\\n')\\n"
         "time.sleep(60)\\n")
# a daemon in a session of its own, which ignores SIGTERM; the script does not wait for it
subprocess.Popen([sys.executable, "-c", child], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while len(open(os.environ["PID_FILE"]).read().split()) < 2:
    time.sleep(0.02)
if os.environ.get("THEN") == "sleep":
    time.sleep(60)
"""
)


@pytest.mark.parametrize("then", ["exit", "sleep"])
def test_daemons_left_behind_are_stopped(tmp_path: Path, then: str) -> None:
    """The script starts a setsid daemon that ignores SIGTERM; when the script exits (or the
    deadline passes) the daemon is stopped too."""
    est = Estimator(
        write_script(tmp_path / "src", DAEMON),
        entry_script="train.py",
        user_managed=True,
        environment_variables={"PID_FILE": str(tmp_path / "pids"), "THEN": then},
        # only the sleeping variant needs a deadline: the other must end on its own
        max_run_duration_seconds=DEADLINE if then == "sleep" else None,
        termination_grace_seconds=GRACE,
    )
    run = est.fit()
    expected = RunStatus.COMPLETED if then == "exit" else RunStatus.TIMED_OUT
    assert run.status is expected, run.error
    assert_all_gone(run, read_pids(tmp_path / "pids", 2))


# ---------------------------------------------------------------------------------------------
# Cancel
# ---------------------------------------------------------------------------------------------
def test_cancel_from_the_supervising_process(tmp_path: Path) -> None:
    run = estimator(tmp_path, SLEEPER, termination_grace_seconds=GRACE).fit(wait=False)
    pids = read_pids(tmp_path / "pids")
    assert wait_until(lambda: run.status is RunStatus.RUNNING, 5)
    start = time.monotonic()
    run.cancel()
    record = run.wait_for_completion(raise_on_error=False)
    assert time.monotonic() - start < GRACE + 1.0
    assert record["status"] == "Canceled"
    assert run.status is RunStatus.CANCELED
    assert run.error == {"reason": "canceled", "message": "canceled by request"}
    assert_all_gone(run, pids)
    with pytest.raises(RunFailedError) as info:
        run.wait_for_completion()
    assert info.value.status is RunStatus.CANCELED


def test_cancel_a_script_that_ignores_sigterm(tmp_path: Path) -> None:
    run = estimator(tmp_path, IGNORES_TERM, termination_grace_seconds=GRACE).fit(wait=False)
    pids = read_pids(tmp_path / "pids")
    start = time.monotonic()
    run.cancel()
    run.wait_for_completion(raise_on_error=False)
    took = time.monotonic() - start
    assert GRACE - 0.1 <= took < GRACE + 1.0
    assert run.status is RunStatus.CANCELED
    assert_all_gone(run, pids)


def test_cancel_from_another_process(tmp_path: Path) -> None:
    run = estimator(tmp_path, SLEEPER, termination_grace_seconds=GRACE).fit(wait=False)
    pids = read_pids(tmp_path / "pids")
    canceler = python_child(f"from fitdock import Run\nRun({run.id!r}).cancel()\nprint('asked')")
    out, err = canceler.communicate(timeout=60)
    assert canceler.returncode == 0, err
    assert out.strip() == "asked"
    record = run.wait_for_completion(raise_on_error=False)
    assert record["status"] == "Canceled"
    assert (run.run_dir / "cancel").exists()
    assert_all_gone(run, pids)


def test_cancel_after_the_end_changes_nothing(tmp_path: Path) -> None:
    run = Estimator(
        write_script(tmp_path / "src", "print('done')\n"),
        entry_script="train.py",
        user_managed=True,
    ).fit()
    assert run.status is RunStatus.COMPLETED
    Run(run.id).cancel()
    run.cancel()
    assert run.status is RunStatus.COMPLETED
    assert not (run.run_dir / "cancel").exists()


# ---------------------------------------------------------------------------------------------
# The supervising process dies by SIGKILL
# ---------------------------------------------------------------------------------------------
SUPERVISE_IN_CHILD = """
import sys
from fitdock import Estimator, Mpi
ranks = int(sys.argv[1])
est = Estimator(sys.argv[2], entry_script="train.py", user_managed=True,
                environment_variables={"PID_FILE": sys.argv[3]},
                process_count_per_node=ranks, distributed_training=Mpi() if ranks > 1 else None)
from fitdock.execution.submit import submit
run = submit(est.job_spec, wait=False)  # supervised in this process (fit(wait=False) detaches)
print(run.id, flush=True)
run.wait_for_completion()
"""


def _kill_the_supervisor(tmp_path: Path, ranks: int) -> str:
    """fit() in a child process on a script that ignores SIGTERM; SIGKILL the child once
    the ranks are up; the ranks must be gone within 5 s and the run must read as lost."""
    src = write_script(tmp_path / "src", IGNORES_TERM)
    pid_file = tmp_path / "pids"
    with python_child_killed_after(
        SUPERVISE_IN_CHILD, str(ranks), str(src), str(pid_file), cwd=tmp_path
    ) as parent:
        assert parent.stdout is not None and parent.stderr is not None
        run_id = parent.stdout.readline().strip()
        assert run_id, parent.stderr.read()
        pids = read_pids(pid_file, ranks)
        assert wait_until(lambda: Run(run_id).status is RunStatus.RUNNING, 30)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        killed_at = time.monotonic()
        gone = wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=5.0)
        took = time.monotonic() - killed_at
        assert gone, f"job processes {pids} outlived their supervisor by more than 5 s"
        # the README's number: SIGTERM (ignored here) at once, SIGKILL ORPHAN_GRACE = 2 s
        # later; a lower bound holds on any machine, the upper one allows for load
        if ranks == 1:  # (Hydra may SIGKILL its ranks itself on SIGTERM)
            assert took >= ORPHAN_GRACE - 0.1, f"SIGKILL came {took:.2f} s after the loss"
        assert took < 5.0
    run = Run(run_id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "lost_supervisor"
    assert "lost supervisor" in run.error["message"]
    assert wait_until(lambda: not processes_mentioning(run_id), timeout=5.0), "reaper left behind"
    return run_id


def test_job_dies_with_its_supervisor(tmp_path: Path) -> None:
    _kill_the_supervisor(tmp_path, ranks=1)


@pytest.mark.mpi
def test_mpi_job_dies_with_its_supervisor(tmp_path: Path) -> None:
    _kill_the_supervisor(tmp_path, ranks=2)


def test_lost_supervisor_run_lists_as_failed(tmp_path: Path, fitdock_home: Path) -> None:
    """``Run.list()`` uses the same checked read: no run stays Running forever."""
    run_id = _kill_the_supervisor(tmp_path, ranks=1)
    (only,) = Run.list()
    assert only.id == run_id
    assert only.status is RunStatus.FAILED
    assert only.error is not None and only.error["reason"] == "lost_supervisor"


# ---------------------------------------------------------------------------------------------
# Ctrl-C in the supervising process cancels the run
# ---------------------------------------------------------------------------------------------
FIT_IN_CHILD = """
import sys
from fitdock import Estimator
est = Estimator(sys.argv[1], entry_script="train.py", user_managed=True,
                environment_variables={"PID_FILE": sys.argv[2]}, termination_grace_seconds=1)
from fitdock.execution.submit import submit
run = submit(est.job_spec, wait=False)  # supervised in this process (fit(wait=False) detaches)
print(run.id, flush=True)
try:
    run.wait_for_completion()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_while_waiting_cancels_the_run(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", SLEEPER)
    pid_file = tmp_path / "pids"
    with python_child_killed_after(FIT_IN_CHILD, str(src), str(pid_file), cwd=tmp_path) as parent:
        assert parent.stdout is not None
        run_id = parent.stdout.readline().strip()
        pids = read_pids(pid_file)
        assert wait_until(lambda: Run(run_id).status is RunStatus.RUNNING, 30)
        os.kill(parent.pid, signal.SIGINT)
        out, err = parent.communicate(timeout=10)
    assert parent.returncode == 130, err
    assert out.strip() == "interrupted"
    run = Run(run_id)
    assert run.status is RunStatus.CANCELED
    assert_all_gone(run, pids)
