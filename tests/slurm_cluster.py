"""A private one-node Slurm cluster for the ``slurm`` tests and the Slurm benchmark.

``slurm_cluster()`` writes a ``slurm.conf`` into a temporary folder (state, spool, pid and log
files all inside it), starts ``munged`` when none runs, then ``slurmctld`` and ``slurmd``, waits
until the node is idle, and yields a ``Cluster`` whose ``env`` carries ``SLURM_CONF``. On exit it
cancels what is left, stops the daemons it started (``munged`` too, when it started it) and
removes the folder.

* The node is this machine (``hostname -s``), reached at 127.0.0.1; the daemons listen on
  loopback only (``CommunicationParameters=NoCtldInAddrAny,NoInAddrAny``) and on ports picked
  free, so a real Slurm on the standard ports is left alone.
* The settings follow ``shared/RECIPES.md`` (Slurm 22.05 on Debian): root as the Slurm user,
  ``proctrack/linuxproc``, ``task/none``, no accounting, ``select/cons_tres`` by core,
  ``KillWait`` short so that cancelled tests end quickly.
* Tools come from Debian's ``slurm-wlm munge libpmix2`` (``scripts/install-system.sh``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A requeued job waits cred_expire seconds before it may start again (120 by default).
CRED_EXPIRE = 5
PREEMPT_GRACE = 10  # a preempted job has this long between SIGTERM and SIGKILL
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")

# What both clusters set alike: ports, munge, no cgroups, no accounting, quick scheduling.
COMMON_CONF = """\
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire={cred_expire}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
KillWait={kill_wait}
ReturnToService=2
SchedulerParameters=sched_interval=1
MinJobAge=600
StateSaveLocation={root}/state
"""

CONF = (
    """\
ClusterName=fitdock-test
SlurmctldHost={host}(127.0.0.1)
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
"""
    + COMMON_CONF
    + """\
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes={host} Default=YES State=UP PriorityTier=1 GraceTime={grace}
PartitionName=urgent Nodes={host} State=UP PriorityTier=2
"""
)


@dataclass
class Cluster:
    root: Path
    conf: Path
    host: str
    cpus: int
    partition: str = "debug"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def nodes_idle(self) -> bool:
        """Every node takes work (sinfo's state ``idle``)."""
        return self.run("sinfo", "-h", "-n", self.host, "-o", "%t").stdout.strip() == "idle"

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no job is left and every node takes work again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.run("squeue", "-h", "-o", "%i").stdout.strip()
            if not jobs and self.nodes_idle():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.label} not idle after {timeout} s: {self.logs()}")

    @property
    def label(self) -> str:
        """How an error names the cluster's nodes."""
        return f"Slurm node {self.host}"

    def logs(self) -> str:
        """The last 20 lines of each daemon's log."""
        parts = []
        for path in sorted(self.root.glob("slurm*.log")):
            lines = path.read_text(errors="replace").splitlines()[-20:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def missing() -> str | None:
    """Why no private cluster can start here (None when it can)."""
    absent = [path for path in DAEMONS if not os.access(path, os.X_OK)]
    if absent:
        return f"Slurm/munge not installed ({', '.join(absent)}); run scripts/install-system.sh"
    if not shutil.which("sbatch"):
        return "sbatch not on PATH"
    if os.geteuid() != 0:
        return "the private Slurm cluster runs its daemons as root"
    return None


def _this_host() -> str:
    """This machine's short name; a ``RuntimeError`` when no private cluster can start here."""
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    return socket.gethostname().split(".")[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _munge() -> Iterator[None]:
    if MUNGE_SOCKET.exists() and subprocess.run(["pgrep", "-x", "munged"]).returncode == 0:
        yield
        return
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    pid_file = Path("/run/munge/munged.pid")
    try:
        yield
    finally:
        if pid_file.is_file():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _munge_then_teardown(cluster: Cluster, slurmd_pid_files: list[Path]) -> Iterator[None]:
    """munged for the block (started when none runs); on exit every job cancelled, the slurmd
    daemons (their pid files) and slurmctld stopped, the cluster's folder removed."""
    with _munge():
        try:
            yield
        finally:
            cluster.run("scancel", "--user", "root", "--full", "--signal", "KILL")
            for pid_file in slurmd_pid_files:
                _stop(pid_file)
            _stop(cluster.root / "slurmctld.pid")
            shutil.rmtree(cluster.root, ignore_errors=True)


@contextlib.contextmanager
def slurm_cluster(kill_wait: int = 5) -> Iterator[Cluster]:
    host = _this_host()
    cpus = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="fitdock-slurm-"))
    for name in ("state", "spool"):
        (root / name).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(
        CONF.format(
            host=host,
            root=root,
            cpus=cpus,
            kill_wait=kill_wait,
            cred_expire=CRED_EXPIRE,
            grace=PREEMPT_GRACE,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
        )
    )
    cluster = Cluster(root=root, conf=conf, host=host, cpus=cpus)
    with _munge_then_teardown(cluster, [root / "slurmd.pid"]):
        for daemon in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd"):
            subprocess.run([daemon, "-f", str(conf)], env=cluster.env, check=True, timeout=30)
        cluster.wait_idle()
        yield cluster


# ---------------------------------------------------------------------------------------------
# Several nodes: one slurmd per fake host of tests/netns.py
# ---------------------------------------------------------------------------------------------
# slurmctld runs here (on the fake hosts' gateway address); each fake host runs a slurmd in its
# own network and UTS namespace (the host's name, its /etc/hosts), as the netns agent runs a
# command there. The nodes share this machine's file system (the run folder, the interpreter),
# as cluster nodes share NFS.
NODES_CONF = (
    """\
ClusterName=fitdock-nodes
SlurmctldHost={host}({gateway})
"""
    + COMMON_CONF
    + """\
SlurmdSpoolDir={root}/spool-%n
TmpFS={root}/tmp-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
{nodes}
PartitionName=debug Nodes={names} Default=YES State=UP
"""
)

# Start slurmd the way the netns agent runs a command: the host's name and /etc/hosts. It enters
# the network namespace with nsenter, not `ip netns exec`, which mounts a /sys of its own
# without the cgroup folder that slurmd needs.
SLURMD_IN_HOST = (
    'hostname "$1" || exit 255; mount --bind "$2" /etc/hosts || exit 255; '
    'exec /usr/sbin/slurmd -N "$1" -f "$3"'
)


@dataclass
class NodesCluster(Cluster):
    """A cluster whose nodes are fake hosts (``nodes``: their names, in order)."""

    nodes: tuple[str, ...] = ()

    def nodes_idle(self) -> bool:
        states = self.run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
        return states == ["idle"] * len(self.nodes)

    @property
    def label(self) -> str:
        return f"Slurm nodes {self.nodes}"


@contextlib.contextmanager
def slurm_cluster_on_hosts(net: Any, cpus: int = 2, kill_wait: int = 5) -> Iterator[NodesCluster]:
    """A Slurm cluster with one node per fake host of ``net`` (a ``netns.NamespaceHosts``
    made with ``resolve_hostnames=True``), ``cpus`` CPUs each; removed on exit."""
    host = _this_host()
    root = Path(tempfile.mkdtemp(prefix="fitdock-slurm-nodes-"))
    (root / "state").mkdir()
    names = tuple(h.hostname for h in net.hosts)
    for name in names:
        (root / f"spool-{name}").mkdir()
        (root / f"tmp-{name}").mkdir()  # PMIx makes its folders there: one per node
    nodes = "\n".join(
        f"NodeName={h.hostname} NodeAddr={h.address} CPUs={cpus} RealMemory=1000 State=UNKNOWN"
        for h in net.hosts
    )
    conf = root / "slurm.conf"
    conf.write_text(
        NODES_CONF.format(
            host=host,
            gateway=net.gateway,
            root=root,
            kill_wait=kill_wait,
            cred_expire=CRED_EXPIRE,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            nodes=nodes,
            names=",".join(names),
        )
    )
    cluster = NodesCluster(root=root, conf=conf, host=host, cpus=cpus, nodes=names)
    with Path(net.hosts_file).open("a") as hosts_file:  # the nodes reach this machine by name
        hosts_file.write(f"{net.gateway} {host}\n")
    with _munge_then_teardown(cluster, [root / f"slurmd-{name}.pid" for name in names]):
        subprocess.run(
            ["/usr/sbin/slurmctld", "-f", str(conf)], env=cluster.env, check=True, timeout=30
        )
        for h in net.hosts:
            argv = ["nsenter", f"--net=/run/netns/{h.namespace}", "unshare", "--uts",
                    "--mount", "--", "/bin/sh", "-c", SLURMD_IN_HOST, "slurmd", h.hostname,
                    str(net.hosts_file), str(conf)]  # fmt: skip
            done = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                raise RuntimeError(f"slurmd on {h.hostname}: {done.stderr} {cluster.logs()}")
        cluster.wait_idle()
        yield cluster
