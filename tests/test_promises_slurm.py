"""Promises of the slurm target proven on the private cluster (tests/slurm_cluster.py):
``max_requeues`` running out, a requeue after a failure (``max_restarts``), the Queued status
while the job is held, the fitdock virtualenv (``user_managed=False``) used by the job's ranks,
``Horovod()`` through ``srun``; and two nodes (a slurmd in each of two fake hosts): 2 x 2 MPI
ranks through ``srun --mpi=pmix``, torchrun with its c10d head node, a node's ranks killed."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import pid_alive, wait_until, write_script
from netns import namespace_hosts, namespace_pids, netns_unavailable, require
from slurm_cluster import slurm_cluster_on_hosts

from fitdock import Estimator, Horovod, Mpi, PyTorch, PyTorchConfiguration, Run, RunStatus, Slurm

pytestmark = pytest.mark.slurm

# Attempt 1 fails (exit 3); later attempts run past any limit. Each prints its attempt, so the
# archived logs show which one they were.
FAILS_THEN_OVERRUNS = """
import os, sys, time
attempt = int(os.environ["FITDOCK_ATTEMPT"])
if attempt == 1:
    print("attempt 1: bad batch", file=sys.stderr, flush=True)
    sys.exit(3)
print(f"attempt {attempt} runs", flush=True)
time.sleep(60)
"""


def job_id(run: Run) -> str:
    return str(run.record["slurm"]["job_id"])


def test_a_failure_is_requeued_then_max_requeues_runs_out(slurm: Any, tmp_path: Path) -> None:
    """Attempt 1 fails and is requeued (max_restarts=1); attempt 2 overruns its time and is not
    requeued (max_requeues=1 spent): the run ends Timed out, after two attempts of one job."""
    est = Estimator(
        write_script(tmp_path / "src", FAILS_THEN_OVERRUNS), entry_script="train.py",
        user_managed=True, compute_target=Slurm(max_requeues=1), max_restarts=1,
        max_run_duration_seconds=1, termination_grace_seconds=1,
    )  # fmt: skip
    run = est.fit()
    assert run.status is RunStatus.TIMED_OUT, run.error
    attempts = run.record["attempts"]
    assert [(a["outcome"], a["requeued"]) for a in attempts] == [
        ("failed", True),
        ("timeout", False),
    ]
    assert attempts[0]["exit_code"] == 3
    assert {a["job_id"] for a in attempts} == {job_id(run)}  # one job, started twice by Slurm
    assert run.error is not None and run.error["reason"] == "timeout"
    assert "requeued 1 time(s)" in run.error["message"]
    assert "attempt 1: bad batch" in (run.log_dir / "attempt-1" / "rank_0.stderr.log").read_text()
    assert (run.log_dir / "rank_0.stdout.log").read_text() == "attempt 2 runs\n"
    assert wait_until(lambda: not slurm.run("squeue", "-h").stdout.strip(), 30)


def test_without_restarts_a_failure_is_not_requeued(slurm: Any, tmp_path: Path) -> None:
    est = Estimator(
        write_script(tmp_path / "src", FAILS_THEN_OVERRUNS), entry_script="train.py",
        user_managed=True, compute_target=Slurm(max_requeues=3),
    )  # fmt: skip
    run = est.fit()
    assert run.status is RunStatus.FAILED
    assert [(a["outcome"], a["requeued"]) for a in run.record["attempts"]] == [("failed", False)]
    assert run.error is not None and run.error["exit_code"] == 3


def test_a_held_job_reads_queued_until_released(slurm: Any, tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", "print('ran', flush=True)\n")
    est = Estimator(
        src, entry_script="train.py", user_managed=True,
        compute_target=Slurm(extra_sbatch_args=("--hold",)),
    )  # fmt: skip
    run = est.fit(wait=False)
    assert wait_until(lambda: run.record.get("slurm"), 30, 0.05), "never submitted"
    held_since = time.monotonic()
    while time.monotonic() - held_since < 3:  # held: Slurm will not start it
        assert run.status is RunStatus.QUEUED, run.record
        time.sleep(0.2)
    info = slurm.run("scontrol", "show", "job", "-o", job_id(run)).stdout
    assert "JobState=PENDING" in info and "Reason=JobHeldUser" in info, info
    assert run.record["started_at"] is None
    assert not (run.log_dir.parent / "slurm" / "attempt-1.json").exists()  # no attempt began
    released = slurm.run("scontrol", "release", job_id(run))
    assert released.returncode == 0, released.stderr
    record = run.wait_for_completion()
    assert record["status"] == RunStatus.COMPLETED.value
    assert (run.log_dir / "rank_0.stdout.log").read_text() == "ran\n"


VENV_SCRIPT = """
import json, os, sys
import six
from fitdock import Run
ctx = Run.get_context()
where = {"python": sys.executable, "prefix": sys.prefix, "six": six.__version__,
         "virtual_env": os.environ.get("VIRTUAL_ENV"), "slurm_job": os.environ.get("SLURM_JOB_ID")}
(ctx.output_dir / "where.json").write_text(json.dumps(where))
"""


@pytest.mark.slow
def test_the_fitdock_virtualenv_runs_the_job_on_slurm(
    slurm: Any, tmp_path: Path, fitdock_home: Path
) -> None:
    est = Estimator(
        write_script(tmp_path / "src", VENV_SCRIPT), entry_script="train.py",
        pip_packages=["six==1.16.0"], compute_target=Slurm(),
    )  # fmt: skip
    run = est.fit()
    assert run.status is RunStatus.COMPLETED, run.error
    build = run.record["environment_build"]
    assert build["built"] is True and "six==1.16.0" in build["packages"]
    venv = Path(build["venv"])
    assert venv.is_relative_to(fitdock_home / "envs")
    where = json.loads((run.output_dir / "where.json").read_text())
    assert where["slurm_job"] == job_id(run)  # it ran as the Slurm job
    assert where["six"] == "1.16.0"
    assert Path(where["prefix"]) == venv and where["virtual_env"] == str(venv)
    assert where["python"] != sys.executable
    script = Path(run.record["slurm"]["script"]).read_text()
    assert f"export VIRTUAL_ENV={venv}" in script


HOROVOD = """
import os
import torch
import horovod.torch as hvd
hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum)
print(f"hvd rank {hvd.rank()} of {hvd.size()} sum {int(total.item())} RANK {os.environ['RANK']}")
"""


@pytest.mark.horovod
@pytest.mark.mpi
def test_horovod_through_srun(slurm: Any, tmp_path: Path) -> None:
    run = PyTorch(
        write_script(tmp_path / "src", HOROVOD), entry_script="train.py",
        compute_target=Slurm(), process_count_per_node=2, distributed_training=Horovod(),
        user_managed=True, max_run_duration_seconds=120,
    ).fit()  # fmt: skip
    assert run.status is RunStatus.COMPLETED, run.error
    for rank in (0, 1):
        out = (run.log_dir / f"rank_{rank}.stdout.log").read_text()
        assert f"hvd rank {rank} of 2 sum 3 RANK {rank}" in out
    script = Path(run.record["slurm"]["script"]).read_text()
    assert "srun --kill-on-bad-exit=1 --ntasks=2 --mpi=pmix" in script


# ---------------------------------------------------------------------------------------------
# Two nodes: a slurmd in each of two fake hosts (tests/netns.py, tests/slurm_cluster.py)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def nodes(slurm: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """``(net, cluster)``: two fake hosts, one Slurm node each; SLURM_CONF names that cluster
    (``slurm`` first: the session's cluster starts munged, and must be idle meanwhile)."""
    require(netns_unavailable())
    with namespace_hosts(2) as net, slurm_cluster_on_hosts(net) as cluster:
        monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
        yield net, cluster


# Each rank: where it runs, the allreduce, its pid (outputs/rank<r>.json); with an argument,
# it then waits (for the test to kill a node's ranks).
NODE_MPI = """
import json, os, socket, sys, time
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.rank + 1)
out = os.environ["FITDOCK_OUTPUT_DIR"]
seen = {"rank": comm.rank, "size": comm.size, "sum": total, "host": socket.gethostname(),
        "pid": os.getpid(), "RANK": os.environ["RANK"], "LOCAL_RANK": os.environ["LOCAL_RANK"]}
final = os.path.join(out, f"rank{comm.rank}.json")
with open(final + ".tmp", "w") as f:
    json.dump(seen, f)
os.replace(final + ".tmp", final)
if len(sys.argv) > 1:
    time.sleep(120)
"""


def node_mpi_job(src: Path, *args: str) -> Estimator:
    return Estimator(
        write_script(src, NODE_MPI), entry_script="train.py", script_params=list(args),
        compute_target=Slurm(), node_count=2, process_count_per_node=2,
        distributed_training=Mpi(), user_managed=True, max_run_duration_seconds=120,
    )  # fmt: skip


def rank_files(run: Run, ranks: int, timeout: float = 60) -> list[dict[str, Any]]:
    paths = [run.output_dir / f"rank{r}.json" for r in range(ranks)]
    assert wait_until(lambda: all(p.is_file() for p in paths), timeout, 0.05), run.record
    return [json.loads(p.read_text()) for p in paths]


@pytest.mark.netns
@pytest.mark.mpi
def test_two_nodes_by_two_mpi_ranks_through_srun_pmix(nodes: Any, tmp_path: Path) -> None:
    net, _ = nodes
    run = node_mpi_job(tmp_path / "src").fit()
    assert run.status is RunStatus.COMPLETED, run.error
    found = rank_files(run, 4)
    names = [h.hostname for h in net.hosts]
    assert [seen["host"] for seen in found] == [names[0], names[0], names[1], names[1]]
    assert {(seen["size"], seen["sum"]) for seen in found} == {(4, 10)}
    assert [(seen["RANK"], seen["LOCAL_RANK"]) for seen in found] == [
        ("0", "0"), ("1", "1"), ("2", "0"), ("3", "1"),
    ]  # fmt: skip
    script = Path(run.record["slurm"]["script"]).read_text()
    assert "#SBATCH --nodes=2" in script and "--ntasks=4 --mpi=pmix" in script


TORCH_NODES = """
import json, os, socket
import torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(total)
seen = {"rank": dist.get_rank(), "size": dist.get_world_size(), "sum": total.item(),
        "host": socket.gethostname(), "master": os.environ["MASTER_ADDR"]}
with open(os.path.join(os.environ["FITDOCK_OUTPUT_DIR"], f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump(seen, f)
dist.destroy_process_group()
"""


@pytest.mark.netns
@pytest.mark.torch
def test_two_node_torchrun_with_its_c10d_head_node(nodes: Any, tmp_path: Path) -> None:
    net, _ = nodes
    config = PyTorchConfiguration(communication_backend="gloo", process_count=2, node_count=2)
    run = PyTorch(
        write_script(tmp_path / "src", TORCH_NODES), entry_script="train.py",
        compute_target=Slurm(), distributed_training=config, user_managed=True,
        max_run_duration_seconds=120,
    ).fit()  # fmt: skip
    assert run.status is RunStatus.COMPLETED, run.error
    found = rank_files(run, 2)
    assert sorted(seen["host"] for seen in found) == [h.hostname for h in net.hosts]
    assert {(seen["size"], seen["sum"]) for seen in found} == {(2, 3.0)}
    script = Path(run.record["slurm"]["script"]).read_text()
    assert '--rdzv-endpoint "$FITDOCK_HEAD_NODE:$FITDOCK_RDZV_PORT"' in script
    # torchrun's store ran on the head node, the first of the allocation
    assert {seen["master"] for seen in found} == {net.hosts[0].hostname}


@pytest.mark.netns
@pytest.mark.mpi
def test_a_nodes_ranks_killed_mid_run_end_the_job_on_every_node(nodes: Any, tmp_path: Path) -> None:
    net, _ = nodes
    run = node_mpi_job(tmp_path / "src", "wait").fit(wait=False)
    found = rank_files(run, 4)
    second = net.hosts[1]
    victims = [seen["pid"] for seen in found if seen["host"] == second.hostname]
    survivors = [seen["pid"] for seen in found if seen["host"] != second.hostname]
    assert len(victims) == 2 and set(victims) <= namespace_pids(second)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    gone = wait_until(lambda: not any(pid_alive(p) for p in survivors), 20, 0.05)
    print(f"[slurm nodes] node 1's ranks gone {time.monotonic() - killed_at:.2f} s after the kill")
    assert gone, "the first node's ranks outlived the second node's"
    record = run.wait_for_completion(raise_on_error=False)
    assert record["status"] == RunStatus.FAILED.value
    error = record["error"]
    assert error["rank"] in (2, 3) and error["signal"] == signal.SIGKILL, error
    assert error["host"] == second.hostname
