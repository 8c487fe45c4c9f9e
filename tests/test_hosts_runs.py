"""The hosts target for real: fitdock jobs over fake hosts (network namespaces joined by
veth pairs, tests/netns.py), MPI and torchrun traffic crossing the veths, fail-fast across
hosts, and the ssh agent against a private sshd per host."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from helpers import pid_alive, wait_until
from netns import OPEN_MPI, NamespaceHosts, needs_open_mpi

from fitdock import Estimator, Hosts, Mpi, PyTorch, PyTorchConfiguration, RunStatus

pytestmark = [pytest.mark.netns, pytest.mark.mpi]

ELEMENTS = 250_000  # float64: 2 MB must cross each host's veth for the allreduce

MPI_SCRIPT = f"""\
import json, os, sys, time
import numpy as np
from mpi4py import MPI
from fitdock import Run
ctx = Run.get_context()
comm = MPI.COMM_WORLD
data = np.full({ELEMENTS}, comm.rank + 1.0)
total = np.empty_like(data)
comm.Allreduce(data, total)
record = {{"rank": ctx.rank, "size": ctx.world_size, "host": os.environ["SM_CURRENT_HOST"],
          "sum": float(total[0]), "run": os.environ["FITDOCK_RUN_ID"]}}
(ctx.output_dir / f"rank{{ctx.rank}}.json").write_text(json.dumps(record))
(ctx.output_dir / f"pid{{ctx.rank}}").write_text(str(os.getpid()))
if len(sys.argv) > 1:
    comm.Barrier()
    if ctx.rank == 3:
        print("rank 3 dies", file=sys.stderr, flush=True)
        os.kill(os.getpid(), 9)
    time.sleep(60)
"""

TORCH_SCRIPT = f"""\
import json, os
import torch, torch.distributed as dist
from fitdock import Run
ctx = Run.get_context()
dist.init_process_group(os.environ["FITDOCK_DIST_BACKEND"])
data = torch.full(({ELEMENTS},), float(dist.get_rank() + 1), dtype=torch.float64)
dist.all_reduce(data)
record = {{"rank": dist.get_rank(), "size": dist.get_world_size(),
          "host": os.environ["SM_CURRENT_HOST"], "sum": float(data[0])}}
(ctx.output_dir / f"rank{{ctx.rank}}.json").write_text(json.dumps(record))
dist.destroy_process_group()
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "mpi_job.py").write_text(MPI_SCRIPT)
    (src / "torch_job.py").write_text(TORCH_SCRIPT)
    return src


def check_spread(net: NamespaceHosts, outputs: Path, size: int = 4) -> None:
    found = [json.loads((outputs / f"rank{rank}.json").read_text()) for rank in range(size)]
    expected = sum(range(1, size + 1))
    assert {r["sum"] for r in found} == {expected}
    by_host: dict[str, int] = {}
    for record in found:
        by_host[record["host"]] = by_host.get(record["host"], 0) + 1
    assert sorted(by_host) == sorted(h.hostname for h in net.hosts)
    assert set(by_host.values()) == {size // len(net.hosts)}


def check_crossed(net: NamespaceHosts, before: dict, payload: int) -> None:
    after = net.traffic()
    for name, counters in after.items():
        moved = counters - before[name]
        assert moved.rx_bytes >= payload and moved.tx_bytes >= payload, (name, moved)


def mpi_job(
    source: Path, target: Hosts, mpirun: str | None, *args: str, **kwargs: object
) -> Estimator:
    return Estimator(
        source, entry_script="mpi_job.py", script_params=list(args), compute_target=target,
        node_count=2, process_count_per_node=2, distributed_training=Mpi(mpirun=mpirun),
        user_managed=True, max_run_duration_seconds=120, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_open_mpi_ranks_on_two_hosts_through_the_agent(net: NamespaceHosts, source: Path) -> None:
    needs_open_mpi()
    target = Hosts(
        [f"{h.address}:2" for h in net.hosts], agent=(str(net.agent),), network=net.subnet
    )
    before = net.traffic()
    run = mpi_job(source, target, OPEN_MPI).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    check_spread(net, run.output_dir)
    check_crossed(net, before, ELEMENTS * 8)
    assert run.record["env"]["SM_HOSTS"] == json.dumps([h.address for h in net.hosts])


def test_mpich_ranks_on_two_hosts_through_the_agent(net: NamespaceHosts, source: Path) -> None:
    target = Hosts(
        [f"{h.address}:2" for h in net.hosts], agent=(str(net.agent),), local_address=net.gateway
    )
    before = net.traffic()
    # Only for these fake hosts: UCX would otherwise use shared memory between namespaces.
    run = mpi_job(source, target, None, environment_variables={"UCX_TLS": "tcp,self"}).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    check_spread(net, run.output_dir)
    check_crossed(net, before, ELEMENTS * 8)


def test_a_rank_killed_on_one_host_stops_every_rank_on_every_host(
    net: NamespaceHosts, source: Path
) -> None:
    needs_open_mpi()
    target = Hosts(
        [f"{h.address}:2" for h in net.hosts], agent=(str(net.agent),), network=net.subnet
    )
    run = mpi_job(source, target, OPEN_MPI, "die").fit(wait=False)
    pids: dict[str, int] = {}

    def every_rank_wrote_its_pid() -> bool:
        for path in run.output_dir.glob("pid*"):
            text = path.read_text().strip()  # empty while the rank is still writing it
            if text:
                pids[path.name] = int(text)
        return len(pids) == 4

    # every rank writes its pid before the barrier that rank 3 dies after
    assert wait_until(every_rank_wrote_its_pid, timeout=60), f"pid files: {sorted(pids)}"
    run.wait_for_completion(raise_on_error=False)
    died = run.record["ranks"]["3"]["ended"]
    gone_by = time.time()
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert (run.error["rank"], run.error["signal"]) == (3, signal.SIGKILL)
    assert run.error["host"] == net.hosts[1].hostname
    assert "rank 3 dies" in run.error["stderr_tail"]
    assert gone_by - died < 5.0
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} ({pid}) outlived the job"


@pytest.mark.torch
def test_torchrun_on_two_hosts_through_the_agent(net: NamespaceHosts, source: Path) -> None:
    target = Hosts(
        [f"{h.address}:2" for h in net.hosts],
        agent=(str(net.agent),),
        interface=net.hosts[0].interface,
    )
    config = PyTorchConfiguration(communication_backend="gloo", process_count=4, node_count=2)
    before = net.traffic()
    est = PyTorch(
        source, entry_script="torch_job.py", compute_target=target, distributed_training=config,
        user_managed=True, max_run_duration_seconds=120,
    )  # fmt: skip
    run = est.fit()
    assert run.status is RunStatus.COMPLETED, run.error
    assert len(run.record["commands"]) == 2  # one torchrun per host
    check_spread(net, run.output_dir)
    check_crossed(net, before, ELEMENTS * 8)


def test_open_mpi_over_ssh_to_a_private_sshd_per_host(
    ssh_net: NamespaceHosts, source: Path
) -> None:
    needs_open_mpi()
    assert ssh_net.ssh is not None
    target = Hosts(
        [f"{h.address}:2" for h in ssh_net.hosts], ssh_user=ssh_net.ssh.user,
        ssh_key=ssh_net.ssh.key, ssh_options=ssh_net.ssh.options, network=ssh_net.subnet,
    )  # fmt: skip
    assert target.agent_argv()[0] == "ssh"
    run = mpi_job(source, target, OPEN_MPI).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    check_spread(ssh_net, run.output_dir)


def test_without_a_shared_filesystem_the_run_is_staged_through_the_agent(
    net: NamespaceHosts, source: Path
) -> None:
    needs_open_mpi()
    target = Hosts(
        [f"{h.address}:2" for h in net.hosts], agent=(str(net.agent),), network=net.subnet,
        shared_filesystem=False,
    )  # fmt: skip
    run = mpi_job(source, target, OPEN_MPI).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    check_spread(net, run.output_dir)
    assert any(
        "copied to each host" in note for note in mpi_job(source, target, OPEN_MPI).plan().notes
    )
