"""The fake hosts of tests/netns.py, proven for real.

Two network namespaces play two hosts; 4 ranks (2 per host) run across them with Debian's
Open MPI 4.1.4, with MPICH's hydra (the `mpi` extra), with torchrun, through the netns
launch agent and through a private sshd per host. Every allreduce result is checked, and each
host's ``eth0`` byte counters must grow by at least the payload (a correct allreduce across two
hosts cannot move less than one full vector into and out of each host), so the traffic really
crossed the veths. The last tests prove that nothing is left behind.

These tests need root (skipped otherwise, failed with CI=true). Run with ``-s`` to see timings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import (
    AGENT_SCRIPT,
    Counters,
    NamespaceHosts,
    clean_stale,
    ip,
    leftovers,
    list_links,
    list_namespaces,
    namespace_hosts,
    netns_unavailable,
    require,
    sshd_unavailable,
)

VENV_BIN = Path(sys.executable).parent
OPEN_MPI = "/usr/bin/mpirun"
HYDRA = str(VENV_BIN / "mpiexec")
TORCHRUN = str(VENV_BIN / "torchrun")
RANKS, SLOTS = 4, 2
MPI_ELEMENTS = 1 << 20  # float64: 8 MiB per rank
TORCH_ELEMENTS = 1 << 20  # float32: 4 MiB per rank
EXPECTED_SUM = float(sum(range(1, RANKS + 1)))  # rank r contributes r + 1
RDZV_PORT = 29400
MASTER_PORT = 29500

# Every rank writes OUTDIR/rank-<rank>.json: where it ran, what it saw, what the allreduce
# gave (not stdout: hydra interleaves the ranks' output inside lines).
MPI_SCRIPT = """\
import json, os, socket, sys
import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
send = np.full(int(sys.argv[1]), comm.rank + 1.0)
recv = np.empty_like(send)
comm.Allreduce(send, recv)
local = os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", os.environ.get("MPI_LOCALRANKID"))
with open(os.path.join(sys.argv[2], f"rank-{comm.rank}.json"), "w") as out:
    json.dump({
        "rank": comm.rank, "size": comm.size, "host": socket.gethostname(),
        "local_rank": int(local), "sum": float(recv[0]),
        "uniform": bool((recv == recv[0]).all()),
        "passed": os.environ.get("FDK_PROBE_PASSED"),
        "hidden": os.environ.get("FDK_PROBE_HIDDEN"),
        "library": MPI.Get_library_version().split(",")[0].strip(),
    }, out)
"""

# Under mpirun, RANK/WORLD_SIZE/LOCAL_RANK come from Open MPI's variables (fitdock maps them
# the same way); under torchrun they are set already.
TORCH_SCRIPT = """\
import json, os, socket, sys
for name, ompi in (("RANK", "OMPI_COMM_WORLD_RANK"), ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"),
                   ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")):
    if name not in os.environ:
        os.environ[name] = os.environ[ompi]
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
tensor = torch.full((int(sys.argv[1]),), float(dist.get_rank() + 1))
dist.all_reduce(tensor)
with open(os.path.join(sys.argv[2], f"rank-{dist.get_rank()}.json"), "w") as out:
    json.dump({
        "rank": dist.get_rank(), "size": dist.get_world_size(), "host": socket.gethostname(),
        "local_rank": int(os.environ["LOCAL_RANK"]), "sum": tensor[0].item(),
        "uniform": bool((tensor == tensor[0]).all()),
    }, out)
dist.destroy_process_group()
"""


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def needs(condition: bool, reason: str) -> None:
    """Skip (fail with CI=true) unless ``condition``."""
    require(None if condition else reason)


def needs_open_mpi() -> None:
    done = subprocess.run([OPEN_MPI, "--version"], capture_output=True, text=True, check=False)
    needs("Open MPI" in done.stdout, f"{OPEN_MPI} is not Open MPI (scripts/install-system.sh)")


def needs_hydra() -> None:
    needs(os.access(HYDRA, os.X_OK), f"{HYDRA} is missing (the `mpi` extra)")


def needs_torchrun() -> None:
    needs(os.access(TORCHRUN, os.X_OK), f"{TORCHRUN} is missing (the `torch` extra)")


@pytest.fixture
def make_hosts() -> Iterator[Callable[..., NamespaceHosts]]:
    """``make_hosts(count=2, **options)``: fake hosts, removed at the end of the test."""
    with contextlib.ExitStack() as stack:

        def make(count: int = 2, **options: Any) -> NamespaceHosts:
            require(sshd_unavailable() if options.get("sshd") else netns_unavailable())
            start = time.monotonic()
            net = stack.enter_context(namespace_hosts(count, **options))
            report(f"namespace setup ({count} hosts, {options})", start)
            return net

        yield make


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    """A folder with the MPI and torch scripts and an empty ``results`` folder for the ranks
    (the fake hosts share this machine's file system, like hosts sharing an NFS home)."""
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "results").mkdir()
    (folder / "mpi_allreduce.py").write_text(MPI_SCRIPT)
    (folder / "torch_allreduce.py").write_text(TORCH_SCRIPT)
    return folder


def mpi_program(scripts: Path) -> list[str]:
    """The MPI allreduce script's command line."""
    script = scripts / "mpi_allreduce.py"
    return [sys.executable, str(script), str(MPI_ELEMENTS), str(scripts / "results")]


def report(label: str, start: float) -> None:
    """Print how long ``label`` took (visible with ``pytest -s``)."""
    print(f"[netns timing] {label}: {time.monotonic() - start:.2f} s")


def launch(argv: list[str], label: str, timeout: float = 60, **kwargs: Any) -> None:
    """Run ``argv``; assert it succeeded."""
    start = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL, **kwargs,
    )  # fmt: skip
    report(label, start)
    assert done.returncode == 0, (
        f"{label} failed ({done.returncode}):\n{shlex.join(argv)}\n"
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    )


def records(scripts: Path) -> list[dict[str, Any]]:
    """What the ranks wrote into ``scripts/results``, by rank."""
    found = [json.loads(path.read_text()) for path in (scripts / "results").glob("rank-*.json")]
    return sorted(found, key=lambda r: r["rank"])


def check_ranks(net: NamespaceHosts, found: list[dict[str, Any]], block: bool = True) -> None:
    """4 ranks, 2 per fake host, local ranks 0 and 1 on each, the right allreduce result.

    ``block``: ranks 0-1 on host 1 and 2-3 on host 2 (MPI's by-slot mapping); torchrun
    assigns nodes in rendezvous order, so there only "contiguous per host" holds.
    """
    assert [r["rank"] for r in found] == list(range(RANKS)), found
    assert {r["size"] for r in found} == {RANKS}
    assert all(r["sum"] == EXPECTED_SUM and r["uniform"] for r in found), found
    by_host: dict[str, list[dict[str, Any]]] = {}
    for r in found:
        by_host.setdefault(r["host"], []).append(r)
    assert set(by_host) == {h.hostname for h in net.hosts}, by_host.keys()
    for ranks in by_host.values():
        assert sorted(r["local_rank"] for r in ranks) == list(range(SLOTS))
        first = min(r["rank"] for r in ranks)
        assert sorted(r["rank"] for r in ranks) == [first, first + 1]
    if block:
        assert [r["host"] for r in found] == [h.hostname for h in net.hosts for _ in range(SLOTS)]


def check_crossed(before: dict[str, Counters], net: NamespaceHosts, payload: int) -> None:
    """Every host's eth0 received and sent at least ``payload`` bytes since ``before``."""
    grown = {name: counters - before[name] for name, counters in net.traffic().items()}
    print(f"[netns traffic] payload {payload} B per rank; eth0 grew by {grown}")
    for name, delta in grown.items():
        assert delta.rx_bytes >= payload and delta.tx_bytes >= payload, (name, delta, payload)


def open_mpi_argv(net: NamespaceHosts, rsh: list[str], program: list[str]) -> list[str]:
    """Debian Open MPI 4.1.4 across the fake hosts; ``rsh``: how it reaches them."""
    return [
        OPEN_MPI, "--allow-run-as-root", "-np", str(RANKS), "--host", net.host_list(SLOTS),
        *rsh,
        "--mca", "btl", "tcp,self",
        "--mca", "btl_tcp_if_include", net.subnet,
        "--mca", "oob_tcp_if_include", net.subnet,
        # the venv's mpi4py loads MPICH's libmpi unless told to use Open MPI's
        "-x", "MPI4PY_LIBMPI=libmpi.so.40",
        "-x", "FDK_PROBE_PASSED",
        *program,
    ]  # fmt: skip


def hydra_argv(net: NamespaceHosts, launcher_exec: str, program: list[str]) -> list[str]:
    """MPICH's hydra (from the venv) across the fake hosts through ``launcher_exec``."""
    return [
        HYDRA, "-n", str(RANKS), "-hosts", net.host_list(SLOTS),
        "-launcher", "ssh", "-launcher-exec", launcher_exec,
        # proxies call back to this address; by default hydra sends its own hostname,
        # which the hosts cannot resolve
        "-localhost", net.gateway,
        # UCX would use shared memory between the namespaces (one kernel): force TCP
        "-genv", "UCX_TLS", "tcp,self",
        "-genv", "FDK_PROBE_PASSED", "yes",
        *program,
    ]  # fmt: skip


def probe_env() -> dict[str, str]:
    """The launcher's environment: one variable meant to reach the ranks, one that is not."""
    return {**os.environ, "FDK_PROBE_PASSED": "yes", "FDK_PROBE_HIDDEN": "leaked"}


def agent(net: NamespaceHosts, host: str, command: str, *options: str) -> subprocess.Popen[str]:
    """Start ``AGENT [options] host command`` with pipes."""
    return subprocess.Popen(
        [str(net.agent), *options, host, command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def agent_output(net: NamespaceHosts, host: str, command: str, *options: str) -> str:
    out, err = agent(net, host, command, *options).communicate(timeout=30)
    assert not err, err
    return out


# ---------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------
def test_agent_runs_the_command_inside_the_host(
    make_hosts: Callable[..., NamespaceHosts], tmp_path: Path
) -> None:
    net = make_hosts(2)
    for h in net.hosts:
        for key in (h.address, h.hostname, h.namespace, f"root@{h.address}"):
            out = agent_output(net, key, "hostname; ip -4 -o addr show dev eth0; pwd; env")
            assert out.splitlines()[0] == h.hostname
            assert f"inet {h.address}/24" in out
            assert out.splitlines()[2] == os.environ.get("HOME", "/")
            names = {line.split("=", 1)[0] for line in out.splitlines()[3:] if "=" in line}
            assert names <= {"HOME", "USER", "LOGNAME", "SHELL", "PATH", "PWD", "SHLVL", "_"}
        resolved = agent_output(net, h.address, f"getent hosts {net.hosts[-1].hostname}")
        assert resolved.split() == [net.hosts[-1].address, net.hosts[-1].hostname]
    # the root namespace reaches each host, and the hosts reach each other
    serve = f"exec python3 -m http.server -b $(hostname -i) -d {shlex.quote(str(tmp_path))} 8765"
    server = agent(net, net.hosts[1].address, serve)
    try:
        fetch = "python3 -c 'import sys,urllib.request as u; u.urlopen(sys.argv[1]).read()' "
        url = f"http://{net.hosts[1].address}:8765/"
        deadline = time.monotonic() + 10
        while subprocess.run(["sh", "-c", fetch + url], check=False).returncode != 0:
            assert time.monotonic() < deadline, "the root namespace cannot reach host 2"
            time.sleep(0.1)
        client = agent(net, net.hosts[0].address, fetch + url)
        client.communicate(timeout=10)
        assert client.returncode == 0
    finally:
        server.kill()
        server.communicate()


@pytest.mark.parametrize(
    ("options", "words", "expected"),
    [
        # Open MPI 4.1.4 style: the remote command in several words, quotes for the remote shell
        ((), ["echo", '"a  b"', "'$HOME'"], "a  b $HOME"),
        # one string, as Open MPI 5 and most ssh users pass it
        ((), ["echo one; echo two"], "one\ntwo"),
        # hydra style: `-x` before the host
        (("-x",), ["echo", "x"], "x"),
        (("-o", "BatchMode=yes", "-p", "22", "-oLogLevel=ERROR", "-q"), ["echo", "ok"], "ok"),
        (("--",), ["echo", "dashes"], "dashes"),
    ],
)
def test_agent_takes_commands_like_ssh(
    make_hosts: Callable[..., NamespaceHosts],
    options: tuple[str, ...],
    words: list[str],
    expected: str,
) -> None:
    net = make_hosts(1)
    host = net.hosts[0].address
    done = subprocess.run(
        [str(net.agent), *options, host, *words], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, expected, "")


def test_agent_exit_status_and_errors(make_hosts: Callable[..., NamespaceHosts]) -> None:
    net = make_hosts(1)
    host = net.hosts[0].address
    assert subprocess.run([str(net.agent), host, "exit 7"], check=False).returncode == 7
    unknown = subprocess.run(
        [str(net.agent), "10.0.0.99", "true"], capture_output=True, text=True, check=False
    )
    assert unknown.returncode == 255 and "unknown host" in unknown.stderr
    bare = subprocess.run(["sh", str(AGENT_SCRIPT), host, "true"], capture_output=True, text=True,
                          check=False, env={"PATH": os.environ["PATH"]})  # fmt: skip
    assert bare.returncode == 255 and "FDK_NETNS_MAP" in bare.stderr


# ---------------------------------------------------------------------------------------------
# (a) Open MPI, (b) MPICH hydra, through the agent
# ---------------------------------------------------------------------------------------------
@pytest.mark.mpi
def test_open_mpi_across_hosts_via_agent(
    make_hosts: Callable[..., NamespaceHosts], scripts: Path
) -> None:
    needs_open_mpi()
    net = make_hosts(2, resolve_hostnames=False)
    program = mpi_program(scripts)
    argv = open_mpi_argv(net, ["--mca", "plm_rsh_agent", str(net.agent)], program)
    before = net.traffic()
    launch(argv, "Open MPI 4 via agent, 4 ranks", env=probe_env())
    found = records(scripts)
    check_ranks(net, found)
    assert {r["library"] for r in found} == {"Open MPI v4.1.4"}
    # the agent gives a fresh environment, like ssh: only `-x` variables reach the ranks
    assert {(r["passed"], r["hidden"]) for r in found} == {("yes", None)}
    check_crossed(before, net, MPI_ELEMENTS * 8)


@pytest.mark.mpi
def test_mpich_hydra_across_hosts_via_agent(
    make_hosts: Callable[..., NamespaceHosts], scripts: Path
) -> None:
    needs_hydra()
    net = make_hosts(2, resolve_hostnames=False)
    program = mpi_program(scripts)
    before = net.traffic()
    argv = hydra_argv(net, str(net.agent), program)
    launch(argv, "MPICH hydra via agent, 4 ranks", env=probe_env())
    found = records(scripts)
    check_ranks(net, found)
    assert all(r["library"].startswith("MPICH Version:") for r in found), found
    # hydra forwards mpiexec's whole environment itself (-genvall is its default)
    assert {(r["passed"], r["hidden"]) for r in found} == {("yes", "leaked")}
    check_crossed(before, net, MPI_ELEMENTS * 8)


# ---------------------------------------------------------------------------------------------
# (c) torchrun on every host; torch gloo under Open MPI
# ---------------------------------------------------------------------------------------------
def torchrun_command(net: NamespaceHosts, index: int, scripts: Path, run_id: str) -> str:
    """The shell command that starts host ``index``'s torchrun (node 0 hosts the store)."""
    host, first = net.hosts[index], net.hosts[0]
    torchrun = [
        "env", "OMP_NUM_THREADS=1", f"GLOO_SOCKET_IFNAME={host.interface}",
        TORCHRUN, "--nnodes", str(len(net.hosts)), "--nproc-per-node", str(SLOTS),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{first.address}:{RDZV_PORT}",
        "--rdzv-id", run_id, f"--rdzv-conf=is_host={'true' if index == 0 else 'false'}",
        f"--local-addr={host.address}",
        "torch_allreduce.py", str(TORCH_ELEMENTS), "results",
    ]  # fmt: skip
    return f"cd {shlex.quote(str(scripts))} && {shlex.join(torchrun)}"


@pytest.mark.torch
@pytest.mark.slow
def test_torchrun_across_hosts_via_agent(
    make_hosts: Callable[..., NamespaceHosts], scripts: Path
) -> None:
    needs_torchrun()
    net = make_hosts(2, resolve_hostnames=False)
    before = net.traffic()
    start = time.monotonic()
    nodes = [
        agent(net, h.address, torchrun_command(net, i, scripts, f"fdk{os.getpid()}"))
        for i, h in enumerate(net.hosts)
    ]
    try:
        for node in nodes:
            out, err = node.communicate(timeout=90)
            assert node.returncode == 0, f"torchrun failed ({node.returncode}):\n{out}\n{err}"
    finally:
        for node in nodes:
            node.kill()
            node.communicate()
    report("torchrun on 2 hosts via agent, 4 ranks", start)
    check_ranks(net, records(scripts), block=False)
    check_crossed(before, net, TORCH_ELEMENTS * 4)


@pytest.mark.mpi
@pytest.mark.torch
@pytest.mark.slow
def test_torch_gloo_under_open_mpi_across_hosts(
    make_hosts: Callable[..., NamespaceHosts], scripts: Path
) -> None:
    needs_open_mpi()
    net = make_hosts(2, resolve_hostnames=False)
    program = [
        "-x", f"MASTER_ADDR={net.hosts[0].address}", "-x", f"MASTER_PORT={MASTER_PORT}",
        "-x", f"GLOO_SOCKET_IFNAME={net.hosts[0].interface}", "-x", "OMP_NUM_THREADS=1",
        sys.executable, str(scripts / "torch_allreduce.py"), str(TORCH_ELEMENTS),
        str(scripts / "results"),
    ]  # fmt: skip
    argv = open_mpi_argv(net, ["--mca", "plm_rsh_agent", str(net.agent)], program)
    before = net.traffic()
    launch(argv, "torch gloo under Open MPI via agent", env=probe_env())
    check_ranks(net, records(scripts))
    check_crossed(before, net, TORCH_ELEMENTS * 4)


# ---------------------------------------------------------------------------------------------
# (d) the same through real ssh
# ---------------------------------------------------------------------------------------------
def test_sshd_serves_each_host_on_its_address_only(
    make_hosts: Callable[..., NamespaceHosts],
) -> None:
    net = make_hosts(2, sshd=True)
    assert net.ssh is not None
    for h in net.hosts:
        start = time.monotonic()
        out = subprocess.run(
            net.ssh.argv(h, "hostname; echo $SSH_CONNECTION"),
            capture_output=True, text=True, check=True, timeout=30, stdin=subprocess.DEVNULL,
        ).stdout  # fmt: skip
        report(f"ssh {h.address} (one command)", start)
        name, connection = out.splitlines()[:2]
        assert name == h.hostname
        assert connection.split()[0] == net.gateway and connection.split()[2] == h.address
        listening = ip("netns", "exec", h.namespace, "ss", "-Htln", check=True).split()
        assert f"{h.address}:22" in listening and "0.0.0.0:22" not in listening


@pytest.mark.mpi
def test_open_mpi_across_hosts_via_ssh(
    make_hosts: Callable[..., NamespaceHosts], scripts: Path
) -> None:
    needs_open_mpi()
    net = make_hosts(2, sshd=True, resolve_hostnames=False)
    assert net.ssh is not None
    program = mpi_program(scripts)
    rsh = ["--mca", "plm_rsh_agent", "ssh", "--mca", "plm_rsh_args", shlex.join(net.ssh.options)]
    before = net.traffic()
    launch(open_mpi_argv(net, rsh, program), "Open MPI 4 via ssh", env=probe_env())
    found = records(scripts)
    check_ranks(net, found)
    assert {(r["passed"], r["hidden"]) for r in found} == {("yes", None)}
    check_crossed(before, net, MPI_ELEMENTS * 8)


@pytest.mark.mpi
def test_mpich_hydra_across_hosts_via_ssh(
    make_hosts: Callable[..., NamespaceHosts], scripts: Path
) -> None:
    needs_hydra()
    net = make_hosts(2, sshd=True, resolve_hostnames=False)
    assert net.ssh is not None
    program = mpi_program(scripts)
    before = net.traffic()
    argv = hydra_argv(net, str(net.ssh.wrapper), program)
    launch(argv, "MPICH hydra via ssh", env=probe_env())
    check_ranks(net, records(scripts))
    check_crossed(before, net, MPI_ELEMENTS * 8)


# ---------------------------------------------------------------------------------------------
# (e) nothing is left behind
# ---------------------------------------------------------------------------------------------
def test_everything_is_removed_even_on_error() -> None:
    require(sshd_unavailable())
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="boom"), namespace_hosts(2, sshd=True) as net:
        report("namespace setup with sshd (2 hosts)", start)
        assert net.ssh is not None
        # a process still running inside a host when the context ends is killed
        straggler = agent(net, net.hosts[0].address, "exec sleep 300")
        assert set(list_namespaces()) >= {h.namespace for h in net.hosts}
        start = time.monotonic()
        raise RuntimeError("boom")
    report("namespace teardown with sshd (2 hosts)", start)
    assert straggler.wait(timeout=5) != 0
    straggler.communicate()
    assert leftovers(net) == []
    assert not [ns for ns in list_namespaces() if ns.startswith(net.prefix)]
    assert net.uplink not in list_links()
    assert not net.workdir.exists()


def test_stale_namespaces_of_dead_runs_are_removed() -> None:
    require(netns_unavailable())
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"fdk{dead.pid}x0-n1"
    ip("netns", "add", name)
    ip("link", "add", f"fdk{dead.pid}x0u", "type", "bridge")
    try:
        removed = clean_stale()
        assert name in removed and f"fdk{dead.pid}x0u" in removed
        assert name not in list_namespaces()
    finally:
        ip("netns", "del", name, check=False)
        ip("link", "del", f"fdk{dead.pid}x0u", check=False)
