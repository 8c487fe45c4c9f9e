"""The `fitdock` command on live runs, as real subprocesses with real signals: `run --detach`
returns at once and `runs logs -f` follows the run to its end, `runs cancel` stops a live
run, Ctrl-C on `fitdock run` exits 130 with the run Canceled, `--resume-from`,
`env build --lock`, and `--target docker` with the image build's progress."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import RECORD_PID, pid_alive, processes_mentioning, read_pids, wait_until, write_script

from fitdock import Run, RunStatus

ROOT = Path(__file__).resolve().parents[1]
GRACE = "1"

WAITS_FOR_GO = (
    RECORD_PID
    + """
import pathlib, time
print("started", flush=True)
while not pathlib.Path(os.environ["GO"]).exists():
    time.sleep(0.05)
print("finished", flush=True)
"""
)

SLEEPER = RECORD_PID + "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fitdock.cli", *args]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}  # FITDOCK_HOME: the test's (conftest)


def fitdock(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), capture_output=True, text=True, env=cli_env(), timeout=timeout,
        check=False,
    )  # fmt: skip


def run_flags(src: Path, *more: str) -> list[str]:
    return ["run", "--source-directory", str(src), "--entry-script", "train.py", *more]


def job(tmp_path: Path, script: str) -> tuple[Path, list[str]]:
    """The script's folder, and the --env flags that tell it where its files are."""
    src = write_script(tmp_path / "src", script)
    return src, ["--env", f"PID_FILE={tmp_path / 'pids'}", "--env", f"GO={tmp_path / 'go'}"]


def run_id_of(out: str) -> str:
    first = out.splitlines()[0]
    assert first.startswith("run "), out
    return first.split()[1]


def assert_all_gone(run: Run, pids: list[int]) -> None:
    supervisor = int(run.record["supervisor"]["pid"])
    assert wait_until(lambda: not pid_alive(supervisor), 5), "the supervisor outlived the run"
    assert [pid for pid in pids if pid_alive(pid)] == [], "job processes outlived the run"
    assert processes_mentioning(run.id) == [], "launcher/reaper processes outlived the run"


# ---------------------------------------------------------------------------------------------
# --detach, runs logs -f, runs cancel
# ---------------------------------------------------------------------------------------------
def test_detach_returns_at_once_and_logs_follow_the_run_to_its_end(tmp_path: Path) -> None:
    src, env = job(tmp_path, WAITS_FOR_GO)
    dry = time.monotonic()
    assert fitdock(*run_flags(src, "--user-managed", "--dry-run", *env)).returncode == 0
    dry_took = time.monotonic() - dry  # the interpreter, the imports, the environment
    started = time.monotonic()
    done = fitdock(*run_flags(src, "--user-managed", "--detach", *env))
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < dry_took + 2.0, f"--detach took {took:.2f} s, --dry-run {dry_took:.2f} s"
    run = Run(run_id_of(done.stdout))
    pids = read_pids(tmp_path / "pids")
    assert not run.status.is_terminal  # fitdock has returned; the job waits for "go"
    follower = subprocess.Popen(
        command("runs", "logs", "-f", run.id), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=cli_env(),
    )  # fmt: skip
    try:
        assert wait_until(lambda: (run.log_dir / "rank_0.stdout.log").stat().st_size > 0, 10)
        assert follower.poll() is None, "runs logs -f ended before the run"
        (tmp_path / "go").touch()
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    assert "[rank 0] started" in out and "[rank 0] finished" in out
    assert run.status is RunStatus.COMPLETED
    assert_all_gone(run, pids)


def test_runs_cancel_stops_a_live_detached_run(tmp_path: Path) -> None:
    src, env = job(tmp_path, SLEEPER)
    done = fitdock(*run_flags(src, "--user-managed", "--detach", "--grace", GRACE, *env))
    assert done.returncode == 0, done.stderr
    run = Run(run_id_of(done.stdout))
    pids = read_pids(tmp_path / "pids")
    assert wait_until(lambda: run.status is RunStatus.RUNNING, 10)
    asked = time.monotonic()
    canceled = fitdock("runs", "cancel", run.id)
    assert canceled.returncode == 0, canceled.stderr
    assert canceled.stdout.strip() == f"cancel requested for run {run.id}"
    assert wait_until(lambda: run.status.is_terminal, 15)
    assert time.monotonic() - asked < 10
    assert run.status is RunStatus.CANCELED
    assert run.error == {"reason": "canceled", "message": "canceled by request"}
    assert_all_gone(run, pids)
    again = fitdock("runs", "cancel", run.id)
    assert again.stdout.strip() == f"run {run.id} already ended: Canceled"


# ---------------------------------------------------------------------------------------------
# Ctrl-C on `fitdock run`
# ---------------------------------------------------------------------------------------------
def test_ctrl_c_exits_130_and_cancels_the_run(tmp_path: Path) -> None:
    src, env = job(tmp_path, SLEEPER)
    cli = subprocess.Popen(
        command(*run_flags(src, "--user-managed", "--grace", GRACE, *env)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip
    try:
        assert cli.stdout is not None
        run = Run(run_id_of(cli.stdout.readline()))
        pids = read_pids(tmp_path / "pids")
        assert wait_until(lambda: run.status is RunStatus.RUNNING, 10)
        cli.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        _, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 130, err
    assert time.monotonic() - interrupted < float(GRACE) + 5
    assert "fitdock: interrupted" in err
    assert run.status is RunStatus.CANCELED
    assert_all_gone(run, pids)


# ---------------------------------------------------------------------------------------------
# --resume-from
# ---------------------------------------------------------------------------------------------
RESUMES = """
import os, pathlib
from fitdock import Run
ctx = Run.get_context()
step = 0
if ctx.resume_dir is not None:
    step = int((ctx.resume_dir / "step").read_text())
    print("resumed at", step, flush=True)
(ctx.checkpoint_dir / "step").write_text(str(step + 5))
(ctx.output_dir / "step").write_text(str(step + 5))
"""


def test_resume_from_a_run_id_and_from_a_folder(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", RESUMES)
    first = fitdock(*run_flags(src, "--user-managed"))
    assert first.returncode == 0, first.stderr
    before = Run(run_id_of(first.stdout))
    assert (before.output_dir / "step").read_text() == "5"
    second = fitdock(*run_flags(src, "--user-managed", "--resume-from", before.id))
    assert second.returncode == 0, second.stderr
    assert "[rank 0] resumed at 5" in second.stdout
    after = Run(run_id_of(second.stdout))
    assert (after.output_dir / "step").read_text() == "10"
    assert after.record["resume"]["from"] == before.id
    folder = fitdock(*run_flags(src, "--user-managed", "--resume-from", str(after.checkpoint_dir)))
    assert folder.returncode == 0, folder.stderr
    assert "[rank 0] resumed at 10" in folder.stdout
    missing = fitdock(*run_flags(src, "--user-managed", "--resume-from", "no-such-run"))
    assert missing.returncode == 2
    assert "resume_from='no-such-run' is neither a folder nor a run id" in missing.stderr


# ---------------------------------------------------------------------------------------------
# env build --lock
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_env_build_installs_exactly_the_lock_file(tmp_path: Path) -> None:
    env_file = tmp_path / "env.yml"
    env_file.write_text("name: six-env\npython:\n  pip_packages: [six]\n")
    lock = tmp_path / "six.lock.txt"
    locked = fitdock("env", "lock", str(env_file), "-o", str(lock), timeout=300)
    assert locked.returncode == 0, locked.stderr
    pins = [line for line in lock.read_text().splitlines() if line.startswith("six==")]
    assert len(pins) == 1, lock.read_text()
    built = fitdock("env", "build", str(env_file), "--lock", str(lock), timeout=300)
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("built: "), built.stdout
    venv = Path(built.stdout.split()[1])
    code = "import importlib.metadata as m; print('six==' + m.version('six'))"
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == pins[0]
    again = fitdock("env", "build", str(env_file), "--lock", str(lock), timeout=300)
    assert again.stdout.startswith("cached: "), again.stdout


# ---------------------------------------------------------------------------------------------
# --target docker, with the image build's progress
# ---------------------------------------------------------------------------------------------
IN_CONTAINER = """
import os, pathlib
pathlib.Path("outputs/where.json").write_text(
    __import__("json").dumps({"dockerenv": os.path.exists("/.dockerenv"), "uid": os.getuid()})
)
print("in the container", flush=True)
"""


@pytest.mark.docker
@pytest.mark.slow
def test_target_docker_shows_the_image_build_and_runs_in_the_container(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", IN_CONTAINER)
    stamp = f"{time.time_ns()}"  # a new environment: its image is built, with progress
    env = {**cli_env(), "FITDOCK_BASE_IMAGE": "local/debian:bookworm"}
    argv = command(*run_flags(src, "--target", "docker", "--env", f"BUILD_STAMP={stamp}"))
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    run = Run(run_id_of(done.stdout))
    assert "building the environment" in done.stdout, done.stdout
    assert (run.log_dir / "image-build.log").stat().st_size > 0
    assert "[rank 0] in the container" in done.stdout
    where = json.loads((run.output_dir / "where.json").read_text())
    assert where == {"dockerenv": True, "uid": os.getuid()}
    assert run.record["target"] == "docker"
