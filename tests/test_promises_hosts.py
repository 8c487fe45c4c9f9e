"""Promises of the hosts target proven on fake hosts (tests/netns.py): fail-fast across hosts
for torchrun; the deadline and its grace, cancel, the hang watchdog and a SIGKILLed supervisor,
each checked on the ranks of both hosts (their pids, in their network namespaces); staging
without a shared filesystem, with a private folder per host; MPICH and torchrun through ssh to
a private sshd per host. Times are measured from what the ranks wrote (marker files)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import pid_alive, python_child_killed_after, run_dirs, wait_until
from netns import (
    OPEN_MPI,
    NamespaceHosts,
    namespace_pids,
    needs_open_mpi,
    private_filesystem,
    private_folder,
)

from fitdock import Estimator, Hosts, Mpi, PyTorch, PyTorchConfiguration, Run, RunStatus
from fitdock.errors import NotAvailableError

pytestmark = pytest.mark.netns

RANKS = 4

# Every rank writes outputs/rank<r>.json (pid, host, time) once it runs; on each SIGTERM it adds
# the time to outputs/term<r> and, with "exit", exits 0; with "ignore" it carries on.
LIFE_SCRIPT = """\
import json, os, signal, socket, sys, time
from pathlib import Path
out = Path(os.environ["FITDOCK_OUTPUT_DIR"])
rank = os.environ["RANK"]
def on_term(*_):
    with open(out / f"term{rank}", "a") as log:
        log.write(f"{time.time()!r}\\n")
    if sys.argv[1] == "exit":
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print(f"rank {rank} loading shard", flush=True)
marker = {"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()}
(out / f"rank{rank}.tmp").write_text(json.dumps(marker))
os.replace(out / f"rank{rank}.tmp", out / f"rank{rank}.json")
while True:
    time.sleep(0.05)
"""

# Each rank writes its file, waits for all, then lists what it sees in outputs/ and snapshot/.
STAGED_SCRIPT = """\
import json, os, socket
from pathlib import Path
from mpi4py import MPI
comm = MPI.COMM_WORLD
out = Path(os.environ["FITDOCK_OUTPUT_DIR"])
total = comm.allreduce(comm.rank + 1)
(out / f"rank{comm.rank}.json").write_text(json.dumps({"host": socket.gethostname(), "sum": total}))
comm.Barrier()
seen = sorted(p.name for p in out.iterdir() if p.name.startswith("rank"))
(out / f"seen{comm.rank}.json").write_text(json.dumps(seen))
"""

TORCH_SCRIPT = """\
import json, os, socket, sys, time
import torch, torch.distributed as dist
from pathlib import Path
out = Path(os.environ["FITDOCK_OUTPUT_DIR"])
dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(total)
rank = dist.get_rank()
marker = {"pid": os.getpid(), "host": socket.gethostname(), "sum": total.item()}
(out / f"rank{rank}.json").write_text(json.dumps(marker))
if len(sys.argv) > 1:
    dist.barrier()
    if rank == 1:
        print("rank 1 dies", file=sys.stderr, flush=True)
        os.kill(os.getpid(), 9)
    time.sleep(60)
dist.destroy_process_group()
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "life.py").write_text(LIFE_SCRIPT)
    (src / "staged.py").write_text(STAGED_SCRIPT)
    (src / "torch_job.py").write_text(TORCH_SCRIPT)
    return src


def over_agent(net: NamespaceHosts, agent: Path | None = None, **options: Any) -> Hosts:
    hosts = [f"{h.address}:2" for h in net.hosts]
    return Hosts(hosts, agent=(str(agent or net.agent),), network=net.subnet, **options)


def life_job(source: Path, target: Hosts, mode: str, **kwargs: Any) -> Estimator:
    return Estimator(
        source, entry_script="life.py", script_params=[mode], compute_target=target,
        node_count=2, process_count_per_node=2, distributed_training=Mpi(mpirun=OPEN_MPI),
        user_managed=True, **kwargs,
    )  # fmt: skip


def markers(run: Run, ranks: int = RANKS, timeout: float = 60) -> dict[int, dict[str, Any]]:
    """Wait until every rank wrote outputs/rank<r>.json; return them by rank."""

    def ready() -> bool:
        return all((run.output_dir / f"rank{r}.json").is_file() for r in range(ranks))

    assert wait_until(ready, timeout, 0.05), f"ranks did not start: {run.record.get('error')}"
    return {r: json.loads((run.output_dir / f"rank{r}.json").read_text()) for r in range(ranks)}


def on_hosts(net: NamespaceHosts, found: dict[int, dict[str, Any]]) -> None:
    """Ranks 0-1 ran on host 1, 2-3 on host 2, each inside its host's network namespace."""
    assert [found[r]["host"] for r in range(RANKS)] == [h.hostname for h in net.hosts for _ in "ab"]
    for rank, seen in found.items():
        host = net.hosts[rank // 2]
        assert seen["pid"] in namespace_pids(host) or not pid_alive(seen["pid"]), (rank, host)


def left_on_hosts(net: NamespaceHosts, pids: list[int]) -> list[int]:
    """The given rank pids still running, on any fake host."""
    inside = set().union(*(namespace_pids(h) for h in net.hosts))
    return [pid for pid in pids if pid in inside and pid_alive(pid)]


def wall(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def term_times(run: Run, once: bool = True) -> dict[int, float]:
    """When each rank first got SIGTERM; with ``once``, each must have got it exactly once
    (jobtree's promise for the supervisor's orders)."""
    found = {}
    for rank in range(RANKS):
        path = run.output_dir / f"term{rank}"
        if path.is_file():
            times = [float(line) for line in path.read_text().split()]
            assert len(times) == 1 or not once, f"rank {rank} got SIGTERM {len(times)} times"
            found[rank] = times[0]
    return found


# ---------------------------------------------------------------------------------------------
# Fail-fast across hosts, torchrun
# ---------------------------------------------------------------------------------------------
@pytest.mark.torch
def test_a_torchrun_rank_killed_on_one_host_stops_every_rank_on_every_host(
    net: NamespaceHosts, source: Path
) -> None:
    target = Hosts(
        [f"{h.address}:2" for h in net.hosts], agent=(str(net.agent),),
        interface=net.hosts[0].interface,
    )  # fmt: skip
    # one rank per host: torch starts slowly, and two hosts are what the promise is about
    config = PyTorchConfiguration(communication_backend="gloo", process_count=2, node_count=2)
    est = PyTorch(
        source, entry_script="torch_job.py", script_params=["die"], compute_target=target,
        distributed_training=config, user_managed=True, max_run_duration_seconds=120,
    )  # fmt: skip
    run = est.fit(wait=False)
    found = markers(run, ranks=2)
    run.wait_for_completion(raise_on_error=False)
    gone_by = time.time()
    assert run.status is RunStatus.FAILED
    error = run.error or {}
    assert (error["rank"], error["signal"]) == (1, signal.SIGKILL), error
    assert error["host"] == found[1]["host"]
    assert "rank 1 dies" in error["stderr_tail"]
    died = run.record["ranks"]["1"]["ended"]
    print(f"[hosts] torchrun: every rank gone {gone_by - died:.2f} s after rank 1 died")
    assert gone_by - died < 10.0
    assert {seen["host"] for seen in found.values()} == {h.hostname for h in net.hosts}
    assert left_on_hosts(net, [seen["pid"] for seen in found.values()]) == []


# ---------------------------------------------------------------------------------------------
# Deadline and grace, cancel, hang, a killed supervisor
# ---------------------------------------------------------------------------------------------
@pytest.mark.mpi
def test_deadline_sends_sigterm_to_every_host_then_sigkill_after_the_grace(
    net: NamespaceHosts, source: Path
) -> None:
    needs_open_mpi()
    deadline, grace = 5.0, 3.0
    est = life_job(
        source, over_agent(net), "ignore", max_run_duration_seconds=deadline,
        termination_grace_seconds=grace,
    )  # fmt: skip
    run = est.fit(wait=False)
    found = markers(run)
    on_hosts(net, found)
    run.wait_for_completion(raise_on_error=False)
    assert run.status is RunStatus.TIMED_OUT
    assert run.error is not None and run.error["reason"] == "timeout"
    started = wall(run.record["started_at"])
    terms = term_times(run)
    assert sorted(terms) == list(range(RANKS)), "SIGTERM did not reach every rank on both hosts"
    ended = {r: run.record["ranks"][str(r)]["ended"] for r in range(RANKS)}
    print(f"[hosts] SIGTERM {[round(t - started, 2) for t in terms.values()]} s after the start; "
          f"SIGKILL {[round(ended[r] - terms[r], 2) for r in terms]} s after SIGTERM")  # fmt: skip
    for rank in range(RANKS):
        assert deadline - 0.2 <= terms[rank] - started < deadline + 3.0, rank
        assert run.record["ranks"][str(rank)]["signal"] == signal.SIGKILL
        assert grace - 0.2 <= ended[rank] - terms[rank] < grace + 4.0, rank
    assert left_on_hosts(net, [seen["pid"] for seen in found.values()]) == []


@pytest.mark.mpi
def test_cancel_stops_the_ranks_on_every_host(net: NamespaceHosts, source: Path) -> None:
    needs_open_mpi()
    run = life_job(source, over_agent(net), "exit", termination_grace_seconds=5).fit(wait=False)
    found = markers(run)
    on_hosts(net, found)
    asked = time.time()
    run.cancel()
    record = run.wait_for_completion(raise_on_error=False)
    took = time.time() - asked
    print(f"[hosts] cancel: run ended {took:.2f} s after the request")
    assert record["status"] == RunStatus.CANCELED.value, record["error"]
    assert took < 15.0
    terms = term_times(run)
    assert sorted(terms) == list(range(RANKS)), "SIGTERM did not reach every rank on both hosts"
    assert all(asked - 0.1 <= t < asked + 10.0 for t in terms.values()), terms
    assert {run.record["ranks"][str(r)]["exit_code"] for r in range(RANKS)} == {0}
    assert left_on_hosts(net, [seen["pid"] for seen in found.values()]) == []


@pytest.mark.mpi
def test_a_job_silent_on_every_host_is_stopped_as_hung(net: NamespaceHosts, source: Path) -> None:
    needs_open_mpi()
    hang = 3.0
    est = life_job(source, over_agent(net), "exit", hang_timeout_seconds=hang)
    run = est.fit(wait=False)
    found = markers(run)
    on_hosts(net, found)
    run.wait_for_completion(raise_on_error=False)
    assert run.status is RunStatus.FAILED
    error = run.error or {}
    assert error["reason"] == "hung", error
    assert f"hang_timeout_seconds={hang:g}" in error["message"]
    assert error["last_lines"] == {str(r): f"rank {r} loading shard" for r in range(RANKS)}
    terms = term_times(run)
    last_word = max(seen["at"] for seen in found.values())
    print(f"[hosts] hang: SIGTERM {min(terms.values()) - last_word:.2f} s after the last output")
    assert sorted(terms) == list(range(RANKS))
    assert hang - 0.5 <= min(terms.values()) - last_word < hang + 5.0
    assert left_on_hosts(net, [seen["pid"] for seen in found.values()]) == []


# fit() waits: its supervisor is a thread of this process, which the test kills.
SUPERVISE_IN_CHILD = f"""
import sys
from fitdock import Estimator, Hosts, Mpi
src, agent, subnet, *hosts = sys.argv[1:]
target = Hosts(hosts, agent=(agent,), network=subnet)
Estimator(src, entry_script="life.py", script_params=["ignore"], compute_target=target,
          node_count=2, process_count_per_node=2, user_managed=True,
          distributed_training=Mpi(mpirun={OPEN_MPI!r})).fit()
"""


@pytest.mark.mpi
def test_no_rank_on_any_host_survives_a_killed_supervisor(
    net: NamespaceHosts, source: Path, tmp_path: Path, fitdock_home: Path
) -> None:
    needs_open_mpi()
    hosts = [f"{h.address}:2" for h in net.hosts]
    with python_child_killed_after(SUPERVISE_IN_CHILD, str(source), str(net.agent), net.subnet,
                                   *hosts, cwd=tmp_path) as parent:  # fmt: skip
        runs = fitdock_home / "runs"
        assert wait_until(lambda: list(runs.glob("*/run.json")), 60, 0.05)
        (folder,) = runs.iterdir()
        run = Run(folder.name)
        found = markers(run)
        pids = [seen["pid"] for seen in found.values()]
        assert len(left_on_hosts(net, pids)) == RANKS  # all 4 run, inside the fake hosts
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        killed_at = time.monotonic()
        gone = wait_until(lambda: not left_on_hosts(net, pids), timeout=5.0, interval=0.05)
        print(f"[hosts] ranks gone {time.monotonic() - killed_at:.2f} s after the SIGKILL")
        assert gone, f"ranks {left_on_hosts(net, pids)} outlived their supervisor by 5 s"
    # SIGTERM first, then SIGKILL (the reaper's stop of an orphaned tree reaches the rank
    # wrappers too, which pass it on: a rank may get it twice here)
    assert sorted(term_times(run, once=False)) == list(range(RANKS))
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "lost_supervisor"


# ---------------------------------------------------------------------------------------------
# No shared filesystem, for real: each host has its own FITDOCK_HOME
# ---------------------------------------------------------------------------------------------
@pytest.mark.mpi
def test_staging_in_and_out_with_a_private_filesystem_per_host(
    net: NamespaceHosts, source: Path, fitdock_home: Path
) -> None:
    needs_open_mpi()
    fitdock_home.mkdir(parents=True, exist_ok=True)
    agent = private_filesystem(net, fitdock_home)
    target = over_agent(net, agent, shared_filesystem=False)
    est = Estimator(
        source, entry_script="staged.py", compute_target=target, node_count=2,
        process_count_per_node=2, distributed_training=Mpi(mpirun=OPEN_MPI), user_managed=True,
        max_run_duration_seconds=120,
    )  # fmt: skip
    run = est.fit()
    assert run.status is RunStatus.COMPLETED, run.error
    remote = {h.hostname: private_folder(net, h) / "runs" / run.id for h in net.hosts}
    for index, (name, folder) in enumerate(remote.items()):
        mine = [f"rank{2 * index}.json", f"rank{2 * index + 1}.json"]
        # staged in: the snapshot arrived in the host's own folder
        assert (folder / "snapshot" / "staged.py").read_text() == STAGED_SCRIPT
        # the host's ranks wrote there, and saw only their own host's outputs
        assert sorted(p.name for p in (folder / "outputs").glob("rank*.json")) == mine, name
        for rank in (2 * index, 2 * index + 1):
            assert json.loads((folder / "outputs" / f"seen{rank}.json").read_text()) == mine
            assert (folder / "logs" / f"rank_{rank}.exit.json").is_file()
            other = remote[net.hosts[1 - index].hostname]
            assert not (other / "logs" / f"rank_{rank}.exit.json").exists()
    # staged out: every host's files came back here
    for rank in range(RANKS):
        record = json.loads((run.output_dir / f"rank{rank}.json").read_text())
        assert (record["host"], record["sum"]) == (net.hosts[rank // 2].hostname, 10)
        assert (run.log_dir / f"rank_{rank}.exit.json").is_file()
    assert {run.record["ranks"][str(r)]["exit_code"] for r in range(RANKS)} == {0}


def test_a_hang_timeout_without_a_shared_filesystem_is_refused(
    source: Path, fitdock_home: Path
) -> None:
    # The watchdog reads the rank logs here, which such hosts send back only at the end.
    target = Hosts(["10.0.0.1:2", "10.0.0.2:2"], agent=("true",), shared_filesystem=False)
    est = life_job(source, target, "exit", hang_timeout_seconds=5)
    with pytest.raises(NotAvailableError, match="hang_timeout_seconds"):
        est.fit()
    assert run_dirs(fitdock_home) == []  # refused before anything was made


# ---------------------------------------------------------------------------------------------
# MPICH and torchrun through ssh to a private sshd per host
# ---------------------------------------------------------------------------------------------
def over_ssh(net: NamespaceHosts, **options: Any) -> Hosts:
    assert net.ssh is not None
    return Hosts(
        [f"{h.address}:2" for h in net.hosts], ssh_user=net.ssh.user, ssh_key=net.ssh.key,
        ssh_options=net.ssh.options, **options,
    )  # fmt: skip


def check_spread(net: NamespaceHosts, run: Run, per_host: int = 2) -> None:
    ranks = per_host * len(net.hosts)
    found = [json.loads((run.output_dir / f"rank{r}.json").read_text()) for r in range(ranks)]
    assert {seen["sum"] for seen in found} == {ranks * (ranks + 1) // 2}, found
    by_host = sorted(seen["host"] for seen in found)
    assert by_host == sorted(h.hostname for h in net.hosts for _ in range(per_host))


@pytest.mark.mpi
def test_mpich_over_ssh_to_a_private_sshd_per_host(ssh_net: NamespaceHosts, source: Path) -> None:
    target = over_ssh(ssh_net, local_address=ssh_net.gateway)
    assert target.agent_argv()[0] == "ssh"
    run = Estimator(
        source, entry_script="staged.py", compute_target=target, node_count=2,
        process_count_per_node=2, distributed_training=Mpi(), user_managed=True,
        max_run_duration_seconds=120, environment_variables={"UCX_TLS": "tcp,self"},
    ).fit()  # fmt: skip
    assert run.status is RunStatus.COMPLETED, run.error
    assert "MPICH" in run.record["env"]["FITDOCK_MPI"]
    check_spread(ssh_net, run)


@pytest.mark.torch
def test_torchrun_over_ssh_to_a_private_sshd_per_host(
    ssh_net: NamespaceHosts, source: Path
) -> None:
    target = over_ssh(ssh_net, interface=ssh_net.hosts[0].interface)
    config = PyTorchConfiguration(communication_backend="gloo", process_count=2, node_count=2)
    run = PyTorch(
        source, entry_script="torch_job.py", compute_target=target, distributed_training=config,
        user_managed=True, max_run_duration_seconds=120,
    ).fit()  # fmt: skip
    assert run.status is RunStatus.COMPLETED, run.error
    assert [c[0] for c in run.record["commands"]] == ["ssh", "ssh"]
    check_spread(ssh_net, run, per_host=1)
