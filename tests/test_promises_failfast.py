"""Fail-fast escalation, for real: when one rank fails, a surviving rank that ignores SIGTERM
is killed once the fail-fast grace is over (README: "SIGTERM, then SIGKILL 2 s later"), under
mpirun and under torchrun.

The surviving rank traps SIGTERM (it writes the time it got it, and carries on sleeping); the
test watches its pid from outside, so the grace is measured from the SIGTERM it received to
its death, not from the launch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import pid_alive, wait_until, write_script

from fitdock import Estimator, Mpi, PyTorch, PyTorchConfiguration, Run, RunStatus
from fitdock.execution.supervisor import FAIL_FAST_GRACE

SLACK = 3.0  # a loaded 2-core machine: polling, interpreter starts, the launcher's own exit

# Rank 0 survives: it records its pid, traps SIGTERM (writing when it came) and keeps
# sleeping; rank 1 fails once rank 0's trap is in place.
SURVIVOR = """\
import json, os, signal, sys, time
marks = os.environ["MARKS"]
rank = int(os.environ["RANK"])
if rank == 0:
    def note(*_):
        with open(os.path.join(marks, "term.json"), "w") as f:
            json.dump({"at": time.time()}, f)
    signal.signal(signal.SIGTERM, note)
    with open(os.path.join(marks, "ready.json.tmp"), "w") as f:
        json.dump({"pid": os.getpid()}, f)
    os.replace(os.path.join(marks, "ready.json.tmp"), os.path.join(marks, "ready.json"))
    while True:
        time.sleep(0.05)
while not os.path.exists(os.path.join(marks, "ready.json")):
    time.sleep(0.02)
print("rank 1: lost its data loader", file=sys.stderr, flush=True)
os._exit(3)
"""


def _started(estimator: type[Estimator], tmp_path: Path, script: str, **kwargs: Any) -> Run:
    """``script`` as a user-managed job of ``estimator`` (120 s at most), started."""
    src = write_script(tmp_path / "src", script)
    return estimator(
        src, entry_script="train.py", user_managed=True, max_run_duration_seconds=120, **kwargs
    ).fit(wait=False)


def _two_gloo_ranks() -> PyTorchConfiguration:
    return PyTorchConfiguration(communication_backend="gloo", process_count=2)


def _watch_the_survivor(run: Run, marks: Path) -> tuple[float, float]:
    """Wait for the survivor's pid, then for its death; return (SIGTERM time, death time)."""
    assert wait_until(lambda: (marks / "ready.json").exists(), 60), run.status
    pid = json.loads((marks / "ready.json").read_text())["pid"]
    assert wait_until(lambda: not pid_alive(pid), 30, interval=0.01), "the survivor lives on"
    died = time.time()
    run.wait_for_completion(raise_on_error=False)
    assert (marks / "term.json").exists(), "the survivor never got SIGTERM"
    return json.loads((marks / "term.json").read_text())["at"], died


def _assert_failed_by_rank_1(run: Run) -> None:
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert (run.error["rank"], run.error["exit_code"]) == (1, 3), run.error
    assert "rank 1: lost its data loader" in run.error["stderr_tail"]
    survivor = run.record["ranks"]["0"]
    assert not survivor["recorded"] or survivor["signal"] == 9, survivor


def _assert_killed_after_the_grace(termed: float, died: float) -> None:
    waited = died - termed  # the trap runs a little after the SIGTERM (up to 0.5 s, loaded)
    print(f"survivor: SIGTERM -> death {waited:.2f} s (grace {FAIL_FAST_GRACE} s)")
    assert waited >= FAIL_FAST_GRACE - 0.5, f"SIGKILL came {waited:.2f} s after SIGTERM"
    assert waited < FAIL_FAST_GRACE + SLACK, f"the survivor lived {waited:.2f} s after SIGTERM"


def _survivor_killed_after_the_grace(
    estimator: type[Estimator], tmp_path: Path, **kwargs: Any
) -> Run:
    """SURVIVOR under ``estimator``: rank 1 fails the job, and the survivor dies the fail-fast
    grace after its SIGTERM."""
    marks = tmp_path / "marks"
    marks.mkdir()
    run = _started(
        estimator, tmp_path, SURVIVOR, environment_variables={"MARKS": str(marks)},
        termination_grace_seconds=60,  # fail-fast has its own grace: this one must not apply
        **kwargs,
    )  # fmt: skip
    termed, died = _watch_the_survivor(run, marks)
    _assert_failed_by_rank_1(run)
    _assert_killed_after_the_grace(termed, died)
    return run


@pytest.mark.mpi
def test_mpi_survivor_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    _survivor_killed_after_the_grace(
        Estimator, tmp_path, process_count_per_node=2, distributed_training=Mpi()
    )


@pytest.mark.torch
def test_torchrun_survivor_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path,
) -> None:
    """torchrun's own agent would wait 30 s before its SIGKILL; fitdock's grace is 2 s."""
    run = _survivor_killed_after_the_grace(
        PyTorch, tmp_path, distributed_training=_two_gloo_ranks()
    )
    assert "torch.distributed.run" in run.record["argv"]


SLEEPER = """\
import os, sys, time
if os.environ["RANK"] == "1":
    while not os.path.exists(os.environ["READY"]):
        time.sleep(0.02)
    print("rank 1: bad batch", file=sys.stderr, flush=True)
    os._exit(3)
open(os.environ["READY"], "w").write(str(os.getpid()))
time.sleep(300)
"""


@pytest.mark.torch
def test_torchrun_fail_fast_stops_a_sleeping_rank_within_seconds(tmp_path: Path) -> None:
    """A rank that sleeps (default SIGTERM handling) dies at the SIGTERM, long before the
    job's 300 s sleep or torchrun's own timeouts."""
    ready = tmp_path / "ready"
    run = _started(
        PyTorch, tmp_path, SLEEPER, distributed_training=_two_gloo_ranks(),
        environment_variables={"READY": str(ready)},
    )  # fmt: skip
    assert wait_until(ready.exists, 60), run.status
    pid = int(ready.read_text())
    seen = time.time()
    assert wait_until(lambda: not pid_alive(pid), FAIL_FAST_GRACE + SLACK + 2, interval=0.01)
    print(f"sleeping rank stopped {time.time() - seen:.2f} s after it was ready")
    run.wait_for_completion(raise_on_error=False)
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert (run.error["rank"], run.error["exit_code"]) == (1, 3), run.error
    sleeper = run.record["ranks"]["0"]
    assert not sleeper["recorded"] or sleeper["signal"] == 15, sleeper
