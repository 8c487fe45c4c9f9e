"""Horovod jobs: through mpirun (MPI controller) and horovodrun (MPI or Gloo controller)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fitdock import Horovod, Mpi, PyTorch, RunStatus
from fitdock.distributions.horovod import horovodrun_argv
from fitdock.errors import MpiMismatchError, SpecError

MPICH_HERE = str(Path(sys.executable).parent / "mpiexec")  # the mpi extra's MPICH

SCRIPT = """\
import os, sys
import torch
import horovod.torch as hvd
hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum)
rank, size = hvd.rank(), hvd.size()
line = f"hvd rank {rank} of {size} sum {int(total.item())} RANK {os.environ['RANK']}"
print(line, flush=True)
if len(sys.argv) > 1 and hvd.rank() == 1:
    print("rank 1: loss is nan", file=sys.stderr, flush=True)
    os._exit(6)  # no interpreter teardown: torch/MPI finalizers could turn 6 into an abort
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "hvd.py").write_text(SCRIPT)
    return tmp_path / "src"


def fit(source: Path, config: Horovod | Mpi, *args: str):  # type: ignore[no-untyped-def]
    return PyTorch(
        source, entry_script="hvd.py", script_params=list(args), process_count_per_node=2,
        distributed_training=config, user_managed=True, max_run_duration_seconds=120,
    ).fit()  # fmt: skip


def check_allreduce(run) -> None:  # type: ignore[no-untyped-def]
    assert run.status is RunStatus.COMPLETED, run.error
    for rank in (0, 1):
        out = (run.log_dir / f"rank_{rank}.stdout.log").read_text()
        assert f"hvd rank {rank} of 2 sum 3 RANK {rank}" in out


@pytest.mark.horovod
@pytest.mark.parametrize(
    "config",
    [
        Horovod(),
        Horovod(launcher="horovodrun"),
        Horovod(controller="gloo", launcher="horovodrun"),
        Mpi(),  # the launcher of the MPI Horovod links to, found by probing the environment
    ],
    ids=["mpirun", "horovodrun-mpi", "horovodrun-gloo", "plain-mpi"],
)
def test_horovod_allreduce_on_two_ranks(source: Path, config: Horovod | Mpi) -> None:
    check_allreduce(fit(source, config))


@pytest.mark.horovod
def test_a_horovod_job_refuses_a_launcher_of_another_mpi(source: Path) -> None:
    """Horovod is built against Open MPI (scripts/build-horovod.sh); MPICH's mpiexec would
    start two worlds of one."""
    with pytest.raises(MpiMismatchError, match=r"horovod loads Open MPI \(libmpi.so.40\)"):
        fit(source, Horovod(mpirun=MPICH_HERE))


@pytest.mark.horovod
def test_the_guard_stops_horovod_in_a_world_of_one(source: Path) -> None:
    """An Mpi() job names MPICH's launcher itself (its script might not use Horovod, so
    that is allowed); when the script does call hvd.init(), the guard fails it at once."""
    run = fit(source, Mpi(mpirun=MPICH_HERE))
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "world_size_mismatch", run.error
    assert "Horovod formed an MPI world of 1 rank(s), but 2 were started" in run.error["message"]


@pytest.mark.horovod
def test_a_failing_horovod_rank_is_named(source: Path) -> None:
    run = fit(source, Horovod(controller="gloo", launcher="horovodrun"), "fail")
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert (run.error["rank"], run.error["exit_code"]) == (1, 6)
    assert "loss is nan" in run.error["stderr_tail"]


def test_gloo_needs_horovodrun() -> None:
    with pytest.raises(SpecError, match="launcher='horovodrun'"):
        Horovod(controller="gloo")


def test_horovodrun_argv() -> None:
    config = Horovod(controller="gloo", launcher="horovodrun", extra_args=("--verbose",))
    argv = horovodrun_argv("/v/horovodrun", config, 4, ["n1:2", "n2:2"], ["wrap", "train.py"])
    assert argv == [
        "/v/horovodrun",
        "-np",
        "4",
        "-H",
        "n1:2,n2:2",
        "--gloo",
        "--verbose",
        "wrap",
        "train.py",
    ]
