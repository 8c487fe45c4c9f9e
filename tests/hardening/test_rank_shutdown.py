"""Rank shutdown (issue 15): fit() ends when the ranks have, a raising MPI rank ends the job,
SIGKILL after the grace is recorded, and a local Open MPI rank gets each signal once."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import processes_mentioning, wait_until, write_script

from fitdock import Chainer, Estimator, Mpi, PyTorchConfiguration, RunStatus

OPEN_MPI = "/usr/bin/mpirun"


def open_mpi() -> Mpi:
    if not os.access(OPEN_MPI, os.X_OK):
        pytest.skip(f"{OPEN_MPI} (Open MPI) is not installed")
    return Mpi(mpirun=OPEN_MPI)


def fit(src: Path, distribution: Any, estimator: type[Estimator] = Estimator, **kwargs: Any) -> Any:
    kwargs.setdefault("process_count_per_node", 2)
    return estimator(
        src,
        entry_script="train.py",
        user_managed=True,
        distributed_training=distribution,
        **kwargs,
    ).fit()


def zombie_children() -> list[int]:
    """This process's children that have exited and were not reaped."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == os.getpid() and fields[0] == b"Z":
            found.append(int(entry.name))
    return found


def assert_all_reaped(run: Any) -> None:
    """The launcher that was still tearing down went, and left no process or zombie."""
    reaper = run.record["reaper_pid"]
    assert wait_until(lambda: not Path(f"/proc/{reaper}").exists(), 30), "reaper not reaped"
    assert wait_until(lambda: not processes_mentioning(run.id), 10), processes_mentioning(run.id)
    assert zombie_children() == []


def assert_rank_1_ended_the_world(run: Any, returned: float) -> None:
    """Rank 1 raised, and the job failed within 20 s of it, rank 1's error in its log."""
    assert run.status is RunStatus.FAILED, run.error
    raised = float((run.output_dir / "raising").read_text())
    # Before: rank 1 waited in MPI_Finalize, rank 0 in recv, until the deadline.
    assert returned - raised < 20, returned - raised
    assert "rank 1 gives up" in (run.log_dir / "rank_1.stderr.log").read_text()


QUICK = "from fitdock import Run\nprint('rank', Run.get_context().rank)\n"


# torchrun takes about a second to tear down after its ranks have exited (measured: median
# 0.83 s, up to 1.6 s, before this change; 0.07 s after): fit() need not wait.
@pytest.mark.parametrize(
    ("distribution", "within"),
    [
        pytest.param(PyTorchConfiguration, 0.6, marks=pytest.mark.torch, id="torchrun"),
        pytest.param(open_mpi, 1.0, marks=pytest.mark.mpi, id="open_mpi"),
    ],
)
def test_fit_returns_when_every_rank_has_exited(
    tmp_path: Path, distribution: Callable[[], Any], within: float
) -> None:
    src = write_script(tmp_path / "src", QUICK)
    run = fit(src, distribution())
    returned = time.time()
    assert run.status is RunStatus.COMPLETED, run.error
    last = max(r["ended"] for r in run.record["ranks"].values())
    assert 0 <= returned - last < within, returned - last
    assert_all_reaped(run)


RAISES_MPI4PY = """
import os, time
from mpi4py import MPI
from fitdock import Run
ctx = Run.get_context()
comm = MPI.COMM_WORLD
comm.Barrier()
if comm.Get_rank() == 1:
    with open(os.path.join(ctx.output_dir, "raising"), "w") as f:
        f.write(repr(time.time()))
    raise RuntimeError("rank 1 gives up")
comm.recv(source=1)  # rank 0 waits for a message that never comes
"""


@pytest.mark.mpi
@pytest.mark.parametrize("launcher", ["default", "openmpi"])
def test_a_rank_raising_in_mpi4py_aborts_the_world(tmp_path: Path, launcher: str) -> None:
    src = write_script(tmp_path / "src", RAISES_MPI4PY)
    config = Mpi() if launcher == "default" else open_mpi()
    run = fit(src, config, max_run_duration_seconds=120)
    assert_rank_1_ended_the_world(run, time.time())
    assert run.error["reason"] != "timeout"


RAISES_CHAINERMN = """
import os, time
import chainermn
from fitdock import Run
ctx = Run.get_context()
comm = chainermn.create_communicator("naive")
comm.mpi_comm.Barrier()
if comm.rank == 1:
    with open(os.path.join(ctx.output_dir, "raising"), "w") as f:
        f.write(repr(time.time()))
    raise RuntimeError("rank 1 gives up")
comm.bcast_obj(None, root=1)  # rank 0 waits for rank 1 in a collective
"""


@pytest.mark.chainer
@pytest.mark.mpi
def test_a_chainermn_rank_raising_aborts_the_world(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", RAISES_CHAINERMN)
    run = fit(src, Mpi(), estimator=Chainer, max_run_duration_seconds=120)
    assert_rank_1_ended_the_world(run, time.time())


IGNORES_TERM = """
import os, signal, time
from fitdock import Run
ctx = Run.get_context()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(os.path.join(ctx.output_dir, f"ready{ctx.rank}"), "w").close()
time.sleep(120)
"""


@pytest.mark.mpi
def test_ranks_killed_after_the_grace_have_exit_records_that_say_so(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", IGNORES_TERM)
    run = fit(src, open_mpi(), max_run_duration_seconds=8, termination_grace_seconds=1)
    assert all((run.output_dir / f"ready{rank}").exists() for rank in (0, 1))
    assert run.status is RunStatus.TIMED_OUT, run.error
    for rank in ("0", "1"):
        exit = run.record["ranks"][rank]
        assert exit["recorded"] is True, exit
        assert (exit["signal"], exit["exit_code"]) == (9, 137), exit
    assert_all_reaped(run)


def test_a_single_rank_killed_after_the_grace_says_so(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", IGNORES_TERM)
    run = Estimator(
        src,
        entry_script="train.py",
        user_managed=True,
        max_run_duration_seconds=5,
        termination_grace_seconds=1,
    ).fit()
    assert run.status is RunStatus.TIMED_OUT
    assert (run.output_dir / "ready0").exists()  # the deadline came after SIGTERM was ignored
    exit = run.record["ranks"]["0"]
    assert (exit["recorded"], exit["signal"], exit["exit_code"]) == (True, 9, 137), exit


COUNTS_TERMS = """
import os, signal, sys, time
from fitdock import Run
ctx = Run.get_context()
out = os.path.join(ctx.output_dir, f"terms{ctx.rank}")
count = 0
def on_term(*_):
    global count
    count += 1
    with open(out, "w") as f:
        f.write(str(count))
signal.signal(signal.SIGTERM, on_term)
open(os.path.join(ctx.output_dir, f"ready{ctx.rank}"), "w").close()
while count == 0:
    time.sleep(0.05)
if ctx.rank == 0:
    sys.exit(3)  # rank 0 ends at once, with an error: mpirun would then stop rank 1 itself
end = time.time() + 3  # rank 1 takes its time, as one saving a checkpoint does
while time.time() < end:
    time.sleep(0.05)
"""


@pytest.mark.mpi
def test_local_open_mpi_ranks_get_each_signal_once(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", COUNTS_TERMS)
    run = fit(src, open_mpi(), max_run_duration_seconds=8, termination_grace_seconds=10)
    assert run.status is RunStatus.TIMED_OUT
    # Before: 2 and 4 (the reaper took mpirun for a rank wrapper and signalled the wrappers,
    # which passed it on; mpirun then signalled each rank's process group again).
    counts = [(run.output_dir / f"terms{rank}").read_text() for rank in (0, 1)]
    assert counts == ["1", "1"]
    # rank 1 had the whole grace: it ended by itself, its exit recorded
    assert run.record["ranks"]["1"]["exit_code"] == 0, run.record["ranks"]
