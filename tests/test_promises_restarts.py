"""Automatic restarts after a time-out and after a failed launcher, and the hang watchdog
reset by a metric and by output: real processes, real signals, real mpiexec.

The failed launcher is the real MPICH ``mpiexec`` behind a two-line wrapper that fails the
first attempt only (``FITDOCK_ATTEMPT=1``), the way a launcher fails before any rank starts
(a host not reachable, a port taken); the second attempt runs the real launcher."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import write_script

from fitdock import Estimator, Mpi, Run, RunStatus
from fitdock.execution.supervisor import FAIL_FAST_GRACE

SLACK = 3.0  # a loaded 2-core machine

# Checkpoints one step per 0.1 s; attempt 1 sleeps (to be timed out) after step 5, later
# attempts resume from resume_dir and finish.
RESUMES = """\
import json, os, time
from fitdock import Run
ctx = Run.get_context()
attempt = int(os.environ["FITDOCK_ATTEMPT"])
step = 0
if ctx.resume_dir is not None and (ctx.resume_dir / "step.json").exists():
    step = json.loads((ctx.resume_dir / "step.json").read_text())["step"]
ctx.log("start_step", step)
while step < 10:
    step += 1
    tmp = ctx.checkpoint_dir / "step.json.tmp"
    tmp.write_text(json.dumps({"step": step}))
    os.replace(tmp, ctx.checkpoint_dir / "step.json")
    if attempt == 1 and step == 5:
        print("attempt 1: stuck in an all-reduce", flush=True)
        time.sleep(300)
(ctx.output_dir / "final.json").write_text(json.dumps({"step": step, "attempt": attempt}))
"""


def fit(tmp_path: Path, script: str, **kwargs: Any) -> Run:
    """``script`` as a user-managed job, run to its end."""
    return Estimator(
        write_script(tmp_path / "src", script), entry_script="train.py", user_managed=True, **kwargs
    ).fit()


def test_a_timed_out_attempt_restarts_from_its_checkpoint(tmp_path: Path) -> None:
    run = fit(
        tmp_path, RESUMES, max_run_duration_seconds=3, termination_grace_seconds=1, max_restarts=1
    )
    assert run.status is RunStatus.COMPLETED, run.error
    attempts = run.record["attempts"]
    assert [a["outcome"] for a in attempts] == ["timeout", "completed"]
    assert attempts[0]["status"] == "TimedOut"
    assert attempts[0]["error"]["reason"] == "timeout"
    assert run.get_metrics("start_step", as_lists=True) == {"start_step": [0, 5]}
    assert json.loads((run.output_dir / "final.json").read_text()) == {"step": 10, "attempt": 2}
    archived = (run.log_dir / "attempt-1" / "rank_0.stdout.log").read_text()
    assert "stuck in an all-reduce" in archived
    assert "stuck" not in (run.log_dir / "rank_0.stdout.log").read_text()


def test_timeouts_stop_restarting_when_the_budget_is_spent(tmp_path: Path) -> None:
    """Every attempt gets stuck past step 5 here: both time out, and the run reads so."""
    script = RESUMES.replace('int(os.environ["FITDOCK_ATTEMPT"])', "1")
    script = script.replace("step == 5", "step >= 5")
    run = fit(
        tmp_path, script, max_run_duration_seconds=2, termination_grace_seconds=1, max_restarts=1
    )
    assert run.status is RunStatus.TIMED_OUT
    assert [a["outcome"] for a in run.record["attempts"]] == ["timeout", "timeout"]
    assert run.get_metrics("start_step", as_lists=True) == {"start_step": [0, 5]}
    assert run.error is not None and run.error["reason"] == "timeout"


# ---------------------------------------------------------------------------------------------
# A failed launcher
# ---------------------------------------------------------------------------------------------
RANKS = """\
import os
from fitdock import Run
ctx = Run.get_context()
(ctx.output_dir / f"rank{ctx.rank}.txt").write_text(f"{ctx.rank}/{ctx.world_size}")
"""


def _flaky_launcher(folder: Path) -> Path:
    """``mpiexec`` that fails the first attempt, then is the real MPICH launcher."""
    real = Path(sys.executable).parent / "mpiexec"
    if not os.access(real, os.X_OK):
        pytest.fail(f"{real} is missing: the mpi extra installs MPICH beside the interpreter")
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "mpiexec"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" != "--version" ] && [ "$FITDOCK_ATTEMPT" = "1" ]; then\n'
        '  echo "flaky-launcher: cannot start the ranks (attempt 1)" >&2; exit 7\n'
        "fi\n"
        f'exec {shlex.quote(str(real))} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def fit_two_ranks(tmp_path: Path, launcher: Path, **kwargs: Any) -> Run:
    """RANKS as two MPI ranks that ``launcher`` starts, run to its end."""
    mpi = Mpi(mpirun=str(launcher))
    return fit(tmp_path, RANKS, process_count_per_node=2, distributed_training=mpi, **kwargs)


@pytest.mark.mpi
def test_a_failed_launcher_restarts_and_the_second_attempt_completes(tmp_path: Path) -> None:
    launcher = _flaky_launcher(tmp_path / "bin")
    run = fit_two_ranks(tmp_path, launcher, max_restarts=1, max_run_duration_seconds=120)
    assert run.status is RunStatus.COMPLETED, run.error
    first, second = run.record["attempts"]
    assert (first["outcome"], second["outcome"]) == ("launcher_failed", "completed")
    assert first["exit_code"] == 7
    assert first["error"]["reason"] == "launcher_failed"
    assert "cannot start the ranks (attempt 1)" in first["error"]["message"]
    for rank in (0, 1):
        assert (run.output_dir / f"rank{rank}.txt").read_text() == f"{rank}/2"


@pytest.mark.mpi
def test_a_launcher_that_always_fails_spends_the_budget(tmp_path: Path) -> None:
    launcher = _flaky_launcher(tmp_path / "bin")
    script = launcher.read_text().replace('[ "$FITDOCK_ATTEMPT" = "1" ]', "true")
    launcher.write_text(script)
    run = fit_two_ranks(tmp_path, launcher, max_restarts=2)
    assert run.status is RunStatus.FAILED
    assert [a["outcome"] for a in run.record["attempts"]] == ["launcher_failed"] * 3
    assert run.error is not None and run.error["reason"] == "launcher_failed"
    assert run.error["exit_code"] == 7


# ---------------------------------------------------------------------------------------------
# The hang watchdog, reset by metrics and by output
# ---------------------------------------------------------------------------------------------
HANG = 1.5
ACTIVE_FOR = 3 * HANG  # the job stays busy three times the hang timeout, then goes quiet

ACTIVE_THEN_QUIET = f"""\
import json, os, sys, time
from fitdock import Run
ctx = Run.get_context()
how = sys.argv[1]
end = time.time() + {ACTIVE_FOR}
i = 0
while time.time() < end:
    time.sleep(0.3)
    i += 1
    if how == "metric":
        ctx.log("loss", 1.0 / i)
    else:
        print(f"step {{i}}", flush=True)
with open(os.environ["QUIET"], "w") as f:
    json.dump({{"at": time.time()}}, f)
time.sleep(300)
"""


@pytest.mark.parametrize("how", ["metric", "output"])
def test_the_hang_watchdog_is_reset_by_activity(tmp_path: Path, how: str) -> None:
    """Busy (a metric, or a line of output, every 0.3 s) for 3x the hang timeout: not hung.
    Then quiet: stopped as hung within the timeout (plus the poll), measured from the
    moment the job went quiet."""
    quiet = tmp_path / "quiet.json"
    run = fit(
        tmp_path,
        ACTIVE_THEN_QUIET,
        script_params=[how],
        hang_timeout_seconds=HANG,
        environment_variables={"QUIET": str(quiet)},
        max_run_duration_seconds=120,
    )
    returned = time.time()
    assert quiet.exists(), f"stopped while still active: {run.error}"
    went_quiet = json.loads(quiet.read_text())["at"]
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "hung", run.error
    stopped_after = returned - went_quiet
    print(f"{how}: hung stop {stopped_after:.2f} s after the job went quiet (timeout {HANG} s)")
    assert stopped_after >= HANG - 0.35, "stopped before the hang timeout had passed"
    assert stopped_after < HANG + FAIL_FAST_GRACE + SLACK
    if how == "output":
        assert run.error["last_lines"]["0"].startswith("step ")
    else:
        assert len(run.get_metrics("loss", as_lists=True)["loss"]) >= 10
