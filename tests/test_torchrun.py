"""PyTorchConfiguration: torchrun with c10d rendezvous, run for real with gloo."""

from __future__ import annotations

from pathlib import Path

import pytest

from fitdock import PyTorch, PyTorchConfiguration, RunStatus
from fitdock.distributions.torchrun import torchrun_argv
from fitdock.errors import SpecError

DDP = """\
import os, sys
import torch
import torch.distributed as dist
dist.init_process_group(os.environ["FITDOCK_DIST_BACKEND"])
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print("rank", dist.get_rank(), "of", dist.get_world_size(), "local", os.environ["LOCAL_RANK"],
      "sum", int(value.item()), flush=True)
if len(sys.argv) > 1 and dist.get_rank() == 1:
    print("rank 1: bad batch", file=sys.stderr, flush=True)
    os._exit(4)  # no interpreter teardown: torch/MPI finalizers could turn 4 into an abort
dist.destroy_process_group()
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ddp.py").write_text(DDP)
    return tmp_path / "src"


def ddp(source: Path, *args: str) -> PyTorch:
    return PyTorch(
        source,
        entry_script="ddp.py",
        script_params=list(args),
        distributed_training=PyTorchConfiguration(communication_backend="Gloo", process_count=2),
        user_managed=True,
        max_run_duration_seconds=120,
    )


@pytest.mark.torch
def test_two_ranks_through_torchrun_allreduce(source: Path) -> None:
    run = ddp(source).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    for rank in (0, 1):
        out = (run.log_dir / f"rank_{rank}.stdout.log").read_text()
        assert f"rank {rank} of 2 local {rank} sum 3" in out
    assert "torch.distributed.run" in run.record["argv"]
    assert run.record["env"]["FITDOCK_DIST_BACKEND"] == "gloo"


@pytest.mark.torch
def test_a_failing_torchrun_rank_is_named(source: Path) -> None:
    run = ddp(source, "fail").fit()
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert (run.error["rank"], run.error["exit_code"]) == (1, 4)
    assert "rank 1: bad batch" in run.error["stderr_tail"]


def test_torchrun_argv_single_node_and_multi_node() -> None:
    config = PyTorchConfiguration(communication_backend="gloo")
    single = torchrun_argv("py", config, 1, 4, ["wrap", "train.py"], run_id="r1")
    assert single == [
        "py", "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "4",
        "--standalone", "--max-restarts", "0", "--no-python", "wrap", "train.py",
    ]  # fmt: skip
    multi = torchrun_argv(
        "py", config, 2, 2, ["w"], run_id="r1", endpoint="10.0.0.1:29400", node_rank=1
    )
    assert multi[multi.index("--rdzv-endpoint") + 1] == "10.0.0.1:29400"
    assert multi[multi.index("--rdzv-id") + 1] == "r1"
    assert multi[multi.index("--node-rank") + 1] == "1"
    assert "--standalone" not in multi


def test_configuration_counts_become_the_job_shape(source: Path) -> None:
    spec = ddp(source).job_spec
    assert (spec.node_count, spec.process_count_per_node, spec.world_size) == (1, 2, 2)
    config = PyTorchConfiguration(communication_backend="Nccl", process_count=4, node_count=2)
    assert config.communication_backend == "nccl"
    est = PyTorch(source, entry_script="ddp.py", distributed_training=config, user_managed=True)
    assert (est.job_spec.node_count, est.job_spec.process_count_per_node) == (2, 2)


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        (
            {"distributed_training": PyTorchConfiguration(process_count=3, node_count=2)},
            "distributed_training",
            "multiple of 2",
        ),
        (
            {"node_count": 3, "distributed_training": PyTorchConfiguration(node_count=2)},
            "node_count",
            "give it once",
        ),
        (
            {"distributed_training": {"kind": "pytorch", "communication_backend": "mpi"}},
            "distributed_training",
            "gloo",
        ),
    ],
)
def test_bad_configurations_are_refused(
    source: Path, kwargs: dict, field: str, message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        PyTorch(source, entry_script="ddp.py", user_managed=True, **kwargs)
    assert caught.value.field is not None and caught.value.field.startswith(field)
    assert message in str(caught.value)
