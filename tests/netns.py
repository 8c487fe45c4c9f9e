"""Fake hosts for multi-node tests: Linux network namespaces behind one bridge.

``namespace_hosts(count)`` makes ``count`` "hosts" on this machine and removes them after::

    root namespace (mpirun, fitdock, torchrun's rendezvous client)
        <prefix>u  10.213.k.254/24  --veth-->  switch namespace <prefix>-sw: bridge br0
                                                  |-- h1 --veth-->  <prefix>-n1: eth0 10.213.k.1/24
                                                  |-- h2 --veth-->  <prefix>-n2: eth0 10.213.k.2/24

* Each host is a network namespace with ``lo`` and ``eth0`` up, its own address, and a distinct
  hostname (``<prefix>-h<i>``) that the launch agent sets in a private UTS namespace.
* The bridge lives in its own "switch" namespace, not in the root one: br_netfilter is loaded
  here (bridge-nf-call-iptables=1), so bridged frames go through the iptables FORWARD chain of
  the bridge's namespace, and a Docker engine sets the root namespace's FORWARD policy to DROP.
  A fresh namespace has empty iptables. The root namespace joins the switch through the uplink
  veth ``<prefix>u`` holding ``10.213.k.254``, so its processes reach every host.
* ``agent`` is a per-context wrapper around ``tests/agents/netns-agent``: an ssh stand-in
  called as ``AGENT [ssh options] HOST COMMAND...`` (see that script for the exact contract).
  The wrapper sets ``FDK_NETNS_MAP`` (host -> namespace, hostname) and ``FDK_NETNS_HOSTS_FILE``
  (an /etc/hosts naming every fake host, bound over /etc/hosts inside the hosts).
* ``sshd=True`` also starts a private OpenSSH server in each host, listening only on the host's
  address, running in the host's UTS namespace (so ssh sessions see the host's hostname),
  accepting a generated key for root; ``ssh`` then holds the key and the client options.
* Names start with ``fdk<pid>x<n>`` (``n`` counts contexts in this process), so namespaces and
  links left by a killed test run are recognised and removed by the next one.
* The subnet ``10.213.k.0/24`` is chosen (under a lock file) to overlap no route of this
  machine, so concurrent test runs get different subnets.

Everything needs root, ``ip`` (iproute2), ``unshare``/``mount`` (util-linux); the sshd part
needs ``/usr/sbin/sshd`` and ``ssh-keygen`` (scripts/install-system.sh installs them).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

AGENT_SCRIPT = Path(__file__).parent / "agents" / "netns-agent"
SUBNET_PREFIX = "10.213"
GATEWAY_OCTET = 254
HOST_INTERFACE = "eth0"
SSHD = "/usr/sbin/sshd"
OPEN_MPI = "/usr/bin/mpirun"  # Debian's Open MPI, as the hosts tests run it
LOCK_FILE = Path(tempfile.gettempdir()) / "fitdock-netns.lock"
NAME_RE = re.compile(r"^fdk(\d+)x")
MAX_IFNAME = 15

_contexts = itertools.count()


# ---------------------------------------------------------------------------------------------
# The objects a test gets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Counters:
    """Byte counters of one network interface."""

    rx_bytes: int
    tx_bytes: int

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.rx_bytes - other.rx_bytes, self.tx_bytes - other.tx_bytes)


@dataclass(frozen=True)
class NamespaceHost:
    """One fake host: a network namespace with one address and its own hostname."""

    index: int
    namespace: str
    address: str
    hostname: str
    interface: str = HOST_INTERFACE

    def counters(self) -> Counters:
        """The byte counters of the host's ``eth0`` (everything it sent and received)."""
        return interface_counters(self.interface, self.namespace)


@dataclass(frozen=True)
class SshAccess:
    """How to ssh into the fake hosts' private sshd servers."""

    key: Path
    user: str
    options: tuple[str, ...]
    wrapper: Path  # a script running `ssh OPTIONS "$@"` (for hydra's -launcher-exec)

    def argv(self, host: NamespaceHost, command: str) -> list[str]:
        """``ssh OPTIONS user@address COMMAND``: run ``command`` on ``host`` over ssh."""
        return ["ssh", *self.options, f"{self.user}@{host.address}", command]

    @property
    def agent(self) -> str:
        """The ssh command line as one string (Open MPI's ``plm_rsh_agent`` value)."""
        return shlex.join(["ssh", *self.options])


@dataclass
class NamespaceHosts:
    """What ``namespace_hosts`` yields: the hosts and how to reach them."""

    prefix: str
    hosts: list[NamespaceHost]
    subnet: str
    gateway: str
    uplink: str
    switch_namespace: str
    bridge: str
    workdir: Path
    agent: Path
    map_file: Path
    hosts_file: Path
    resolve_hostnames: bool = True
    ssh: SshAccess | None = None
    sshd_pids: list[int] = field(default_factory=list)

    def agent_argv(self, host: NamespaceHost, command: str) -> list[str]:
        """``AGENT address COMMAND``: run the shell command ``command`` on ``host``."""
        return [str(self.agent), host.address, command]

    def host_list(self, slots: int) -> str:
        """``addr1:slots,addr2:slots,...`` (Open MPI ``--host``, hydra ``-hosts``)."""
        return ",".join(f"{h.address}:{slots}" for h in self.hosts)

    def uplink_counters(self) -> Counters:
        """Byte counters of the root namespace's side of the uplink veth."""
        return interface_counters(self.uplink)

    def traffic(self) -> dict[str, Counters]:
        """Counters of every host's ``eth0``, by hostname."""
        return {h.hostname: h.counters() for h in self.hosts}


# ---------------------------------------------------------------------------------------------
# Small wrappers around `ip`
# ---------------------------------------------------------------------------------------------
class NetnsError(RuntimeError):
    """A command that sets up or removes the fake hosts failed."""


def _run(argv: list[str], check: bool = True, timeout: float = 30) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise NetnsError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n NETNS] ARGS...``; return its stdout."""
    where = ["-n", netns] if netns else []
    return _run(["ip", *where, *args], check=check)


def interface_counters(name: str, netns: str | None = None) -> Counters:
    """rx/tx byte counters of interface ``name`` (in ``netns``, or the root namespace)."""
    info = json.loads(ip("-j", "-s", "link", "show", "dev", name, netns=netns))
    stats = info[0]["stats64"]
    return Counters(int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"]))


def list_namespaces() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def list_links(netns: str | None = None) -> list[str]:
    """Interface names in ``netns`` (or the root namespace), without ``@peer`` suffixes."""
    return [item["ifname"] for item in json.loads(ip("-j", "link", "show", netns=netns) or "[]")]


# ---------------------------------------------------------------------------------------------
# Availability (skip, or fail with CI=true)
# ---------------------------------------------------------------------------------------------
@functools.cache
def netns_unavailable() -> str | None:
    """Why fake hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "mount", "hostname"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"fdk{os.getpid()}x-probe"
    try:
        ip("netns", "add", probe)
        ip("netns", "del", probe)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` does not work here: {exc}"
    return None


@functools.cache
def sshd_unavailable() -> str | None:
    """Why private sshd servers cannot run here, or None when they can."""
    for tool in (SSHD, "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (scripts/install-system.sh installs openssh-server)"
    return netns_unavailable()


def require(reason: str | None) -> None:
    """Skip the calling test when ``reason`` is set; fail instead when ``CI=true``."""
    if reason is None:
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"[netns] {reason}; CI=true, so this fails instead of skipping")
    pytest.skip(f"[netns] {reason}")


def needs_open_mpi() -> None:
    """Skip the calling test (fail with ``CI=true``) unless ``OPEN_MPI`` is installed."""
    if not os.access(OPEN_MPI, os.X_OK):
        require(f"{OPEN_MPI} is not installed (scripts/install-system.sh installs it)")


# ---------------------------------------------------------------------------------------------
# Clean-up of what a killed run left behind
# ---------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_dead(name: str) -> bool:
    match = NAME_RE.match(name)
    return match is not None and not _pid_alive(int(match.group(1)))


def _kill_namespace_processes(namespace: str, grace: float = 3.0) -> None:
    """SIGTERM every process in ``namespace``, then SIGKILL what is left after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in ip("netns", "pids", namespace, check=False).split()]
        pids = [p for p in pids if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if not ip("netns", "pids", namespace, check=False).split():
                return
            time.sleep(0.05)


def clean_stale() -> list[str]:
    """Remove ``fdk<pid>x*`` namespaces, links and work folders whose pid is dead."""
    removed: list[str] = []
    for namespace in list_namespaces():
        if _owner_dead(namespace):
            _kill_namespace_processes(namespace)
            ip("netns", "del", namespace, check=False)
            removed.append(namespace)
    for link in list_links():
        if _owner_dead(link):
            ip("link", "del", link, check=False)
            removed.append(link)
    for folder in Path(tempfile.gettempdir()).glob("fdk*x*-*"):
        if folder.is_dir() and _owner_dead(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
    return removed


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------
def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination this machine routes (its own addresses included)."""
    networks = []
    for route in json.loads(ip("-4", "-j", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            networks.append(ipaddress.IPv4Network(dst, strict=False))
    return networks


def _free_subnet() -> int:
    """A third octet ``k`` such that ``10.213.k.0/24`` overlaps no route of this machine."""
    used = _used_networks()
    start = os.getpid() % 250
    for step in range(250):
        k = (start + step) % 250 + 1
        candidate = ipaddress.ip_network(f"{SUBNET_PREFIX}.{k}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return k
    raise NetnsError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")


def _make_switch(net: NamespaceHosts) -> None:
    """The switch namespace with its bridge, and the root namespace's uplink into it."""
    sw = net.switch_namespace
    ip("netns", "add", sw)
    ip("link", "add", net.bridge, "type", "bridge", netns=sw)
    ip("link", "set", net.bridge, "up", netns=sw)
    ip("link", "add", net.uplink, "type", "veth", "peer", "name", "root", "netns", sw)
    ip("link", "set", "dev", "root", "master", net.bridge, "up", netns=sw)
    ip("addr", "add", f"{net.gateway}/24", "dev", net.uplink)
    ip("link", "set", net.uplink, "up")


def _make_host(net: NamespaceHosts, host: NamespaceHost) -> None:
    """The host's namespace, its veth to the bridge, its address."""
    port = f"h{host.index}"
    ip("netns", "add", host.namespace)
    ip(
        "link", "add", port, "netns", net.switch_namespace, "type", "veth",
        "peer", "name", host.interface, "netns", host.namespace,
    )  # fmt: skip
    ip("link", "set", port, "master", net.bridge, "up", netns=net.switch_namespace)
    ip("addr", "add", f"{host.address}/24", "dev", host.interface, netns=host.namespace)
    ip("link", "set", host.interface, "up", netns=host.namespace)
    ip("link", "set", "lo", "up", netns=host.namespace)


def _write_files(net: NamespaceHosts) -> None:
    """The agent's map file, the hosts' /etc/hosts and the agent wrapper."""
    lines = []
    for h in net.hosts:
        for key in (h.address, h.hostname, h.namespace):
            lines.append(f"{key} {h.namespace} {h.hostname}\n")
    net.map_file.write_text("".join(lines))
    etc_hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    etc_hosts.append(f"{net.gateway} {net.prefix}-gw")
    etc_hosts += [f"{h.address} {h.hostname}" for h in net.hosts]
    net.hosts_file.write_text("\n".join(etc_hosts) + "\n")
    hosts_file = str(net.hosts_file) if net.resolve_hostnames else ""
    net.agent.write_text(
        "#!/bin/sh\n"
        f"# Launch agent for the fake hosts {net.prefix}-h*: see {AGENT_SCRIPT}\n"
        f"FDK_NETNS_MAP={shlex.quote(str(net.map_file))}\n"
        f"FDK_NETNS_HOSTS_FILE={shlex.quote(hosts_file)}\n"
        "export FDK_NETNS_MAP FDK_NETNS_HOSTS_FILE\n"
        f'exec /bin/sh {shlex.quote(str(AGENT_SCRIPT))} "$@"\n'
    )
    net.agent.chmod(0o755)


def _plan(count: int, workdir: Path | None, resolve_hostnames: bool) -> NamespaceHosts:
    prefix = f"fdk{os.getpid()}x{next(_contexts)}"
    if len(prefix) + 1 > MAX_IFNAME:
        raise NetnsError(f"prefix {prefix} is too long for an interface name")
    if not 1 <= count < GATEWAY_OCTET:
        raise ValueError(f"count must be between 1 and {GATEWAY_OCTET - 1}, not {count}")
    folder = workdir or Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    folder.mkdir(parents=True, exist_ok=True)
    return NamespaceHosts(
        prefix=prefix,
        hosts=[],
        subnet="",
        gateway="",
        uplink=f"{prefix}u",
        switch_namespace=f"{prefix}-sw",
        bridge="br0",
        workdir=folder,
        agent=folder / "agent",
        map_file=folder / "hosts.map",
        hosts_file=folder / "hosts",
        resolve_hostnames=resolve_hostnames,
    )


def _build(net: NamespaceHosts, count: int) -> None:
    with LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        k = _free_subnet()
        net.subnet = f"{SUBNET_PREFIX}.{k}.0/24"
        net.gateway = f"{SUBNET_PREFIX}.{k}.{GATEWAY_OCTET}"
        _make_switch(net)  # the uplink's route now reserves the subnet
    for i in range(1, count + 1):
        host = NamespaceHost(
            index=i,
            namespace=f"{net.prefix}-n{i}",
            address=f"{SUBNET_PREFIX}.{k}.{i}",
            hostname=f"{net.prefix}-h{i}",
        )
        net.hosts.append(host)
        _make_host(net, host)
    _write_files(net)


# ---------------------------------------------------------------------------------------------
# sshd per host
# ---------------------------------------------------------------------------------------------
SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
LogLevel ERROR
"""

# Run sshd the way the agent runs a command: the host's hostname, its /etc/hosts.
SSHD_WRAPPER = (
    'hostname "$1" || exit 255; '
    'if [ -n "$2" ]; then mount --bind "$2" /etc/hosts || exit 255; fi; '
    f'exec {SSHD} -D -e -f "$3"'
)


def _keygen(path: Path) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fitdock-netns", "-f", str(path)])


def _wait_port(address: str, port: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection((address, port), 0.5):
            return True
        time.sleep(0.05)
    return False


def _start_sshd(net: NamespaceHosts, processes: list[subprocess.Popen[bytes]]) -> None:
    """A private sshd in every host; fills ``net.ssh`` and ``net.sshd_pids``."""
    folder = net.workdir / "ssh"
    folder.mkdir(mode=0o700)
    _keygen(folder / "host_key")
    _keygen(folder / "id_ed25519")
    shutil.copy(folder / "id_ed25519.pub", folder / "authorized_keys")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    for h in net.hosts:
        config = folder / f"sshd-{h.hostname}.conf"
        config.write_text(
            SSHD_CONFIG.format(
                address=h.address,
                host_key=folder / "host_key",
                authorized_keys=folder / "authorized_keys",
            )
        )
        argv = ["ip", "netns", "exec", h.namespace, "unshare", "--uts", "--mount", "--",
                "/bin/sh", "-c", SSHD_WRAPPER, "sshd", h.hostname,
                str(net.hosts_file) if net.resolve_hostnames else "", str(config)]  # fmt: skip
        with (folder / f"sshd-{h.hostname}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        processes.append(proc)
        net.sshd_pids.append(proc.pid)
    for h in net.hosts:
        if not _wait_port(h.address, 22, timeout=10):
            text = (folder / f"sshd-{h.hostname}.log").read_text()
            raise NetnsError(f"sshd on {h.address} did not start: {text}")
    options = (
        "-F", "/dev/null", "-i", str(folder / "id_ed25519"),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
    )  # fmt: skip
    wrapper = folder / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(["ssh", *options])} "$@"\n')
    wrapper.chmod(0o755)
    net.ssh = SshAccess(key=folder / "id_ed25519", user="root", options=options, wrapper=wrapper)


# ---------------------------------------------------------------------------------------------
# Teardown
# ---------------------------------------------------------------------------------------------
def _stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    for proc in processes:
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)


def _wait_gone(link: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while link in list_links():
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)
    return True


def leftovers(net: NamespaceHosts) -> list[str]:
    """What of ``net`` still exists: namespaces, the uplink, sshd processes, the work folder."""
    mine = [ns for ns in list_namespaces() if ns.startswith(f"{net.prefix}-")]
    links = [link for link in list_links() if link == net.uplink]
    sshd = [f"sshd pid {pid}" for pid in net.sshd_pids if _pid_alive(pid)]
    folder = [str(net.workdir)] if net.workdir.exists() else []
    return mine + links + sshd + folder


def _teardown(net: NamespaceHosts, processes: list[subprocess.Popen[bytes]], keep: bool) -> None:
    _stop_processes(processes)
    namespaces = [h.namespace for h in net.hosts] + [net.switch_namespace]
    for namespace in namespaces:
        _kill_namespace_processes(namespace)
    for namespace in namespaces:
        ip("netns", "del", namespace, check=False)
    if not _wait_gone(net.uplink, timeout=5):  # goes with its peer, asynchronously
        ip("link", "del", net.uplink, check=False)
    if not keep:
        shutil.rmtree(net.workdir, ignore_errors=True)


@contextlib.contextmanager
def namespace_hosts(
    count: int,
    *,
    sshd: bool = False,
    resolve_hostnames: bool = True,
    workdir: Path | None = None,
) -> Iterator[NamespaceHosts]:
    """Make ``count`` fake hosts (see the module docstring); remove them all on exit.

    ``sshd``: also start a private sshd in every host (``NamespaceHosts.ssh``).
    ``resolve_hostnames``: inside the hosts, bind ``hosts_file`` over /etc/hosts so that every
    fake hostname resolves to its address (and ``<prefix>-gw`` to the gateway). With False
    they resolve to nothing (no DNS is reachable from the hosts): proves that command lines
    rely on addresses only.

    ``workdir`` holds the agent, its map, the hosts file and the ssh keys; by default a new
    temporary folder, removed on exit (a given ``workdir`` is kept). Removal happens even when
    the body raises or is interrupted; what a killed process left behind is removed by the
    next call (``clean_stale``).
    """
    clean_stale()
    net = _plan(count, workdir, resolve_hostnames)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        _build(net, count)
        if sshd:
            _start_sshd(net, processes)
        yield net
    finally:
        _teardown(net, processes, keep=workdir is not None)
        remaining = [item for item in leftovers(net) if item != str(workdir)]
        if remaining:
            raise NetnsError(f"fake hosts not fully removed: {remaining}")


# ---------------------------------------------------------------------------------------------
# A private file system per host (no shared filesystem, for real)
# ---------------------------------------------------------------------------------------------
# Called like the agent; the remote command first binds the host's own folder over PATH (in the
# private mount namespace the agent gives every command), so what a host writes under PATH stays
# on that host and what this machine writes there is not seen by the hosts. Leading ssh-style
# options are dropped (the agent ignores them anyway).
PRIVATE_AGENT = """\
#!/bin/sh
# Agent for the fake hosts {prefix}-h* with a private {path} per host: see tests/netns.py
set -eu
while [ $# -gt 0 ]; do
    case $1 in
    --) shift; break ;;
    -[BbcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;
    -*) shift ;;
    *) break ;;
    esac
done
host=${{1#*@}}
shift
name=$(awk -v key="$host" '$1 == key {{ print $3; exit }}' {map})
[ -n "$name" ] || {{ echo "private agent: unknown host '$host'" >&2; exit 255; }}
exec {agent} "$host" "mount --bind {root}/$name {path} || exit 255; $*"
"""


def private_filesystem(net: NamespaceHosts, path: Path) -> Path:
    """An agent for ``net`` under which each host has a folder of its own at ``path`` (an
    existing folder here): ``net.workdir/private/<hostname>``, empty at first. Returns the
    agent's path; the hosts' folders are ``private_folder(net, host)``."""
    root = net.workdir / "private"
    for h in net.hosts:
        (root / h.hostname).mkdir(parents=True, exist_ok=True)
    agent = net.workdir / "private-agent"
    agent.write_text(
        PRIVATE_AGENT.format(
            prefix=net.prefix,
            path=shlex.quote(str(path)),
            map=shlex.quote(str(net.map_file)),
            agent=shlex.quote(str(net.agent)),
            root=shlex.quote(str(root)),
        )
    )
    agent.chmod(0o755)
    return agent


def private_folder(net: NamespaceHosts, host: NamespaceHost) -> Path:
    """What ``host`` sees at the path given to ``private_filesystem``."""
    return net.workdir / "private" / host.hostname


def namespace_pids(host: NamespaceHost) -> set[int]:
    """Every process running in ``host``'s network namespace (``ip netns pids``)."""
    return {int(p) for p in ip("netns", "pids", host.namespace, check=False).split()}
