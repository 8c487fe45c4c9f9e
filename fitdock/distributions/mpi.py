"""MPI as a distribution: find the launcher, tell Open MPI from MPICH, build its argv."""

from __future__ import annotations

import enum
import functools
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from fitdock.errors import LauncherNotFoundError, NotAvailableError, SpecError
from fitdock.process import capture
from fitdock.specs.distribution import Mpi

NAMES = ("mpirun", "mpiexec")


class Flavor(str, enum.Enum):
    OPEN_MPI = "Open MPI"
    MPICH = "MPICH"
    INTEL_MPI = "Intel MPI"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class MpiLauncher:
    path: str
    flavor: Flavor
    version: str


def find_launcher(config: Mpi, flavor: Flavor | None = None) -> MpiLauncher:
    """The launcher named in ``Mpi(mpirun=...)``, else the first of ``search_paths()``;
    with ``flavor``, the first of that MPI family. (Jobs pick theirs through
    ``distributions.mpimatch``, which also asks the job's own libraries.)"""
    for path in search_paths(config):
        launcher = identify(path)
        if flavor is None or launcher.flavor is flavor:
            return launcher
    if flavor is not None:
        raise LauncherNotFoundError(f"no {flavor.value} mpirun found")
    raise LauncherNotFoundError(
        "no mpirun or mpiexec found: install an MPI with `pip install 'fitdock[mpi]'` "
        "(MPICH from PyPI), or `apt-get install openmpi-bin`, or pass Mpi(mpirun='/path/to/mpirun')"
    )


def search_paths(config: Mpi, python: str | None = None) -> list[str]:
    """Where a launcher is looked for, in order: ``Mpi(mpirun=...)`` alone when given; else
    beside the job's interpreter (a virtualenv's own MPI), beside this interpreter (where
    the ``fitdock[mpi]`` extra puts one), on PATH, and in /usr/bin. Cheap: no program runs."""
    if config.mpirun:
        path = shutil.which(config.mpirun)
        if path is None:
            raise LauncherNotFoundError(
                f"Mpi(mpirun={config.mpirun!r}) is not an executable program"
            )
        return [path]
    folders = [str(Path(python).parent)] if python and os.sep in python else []
    folders += [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]
    folders.append("/usr/bin")
    found: list[str] = []
    seen: set[str] = set()
    for folder in folders:
        for name in NAMES:
            path = os.path.join(folder, name)
            if not folder or not os.access(path, os.X_OK) or os.path.isdir(path):
                continue
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                found.append(path)
    return found


@functools.lru_cache(maxsize=32)
def identify(path: str) -> MpiLauncher:
    """Which MPI a launcher belongs to, from its ``--version``."""
    code, text = capture([path, "--version"], timeout=20)
    return parse_version(path, code, text)


def parse_version(path: str, code: int, text: str) -> MpiLauncher:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if "Open MPI" in text or "OpenRTE" in text:
        return MpiLauncher(path, Flavor.OPEN_MPI, first.split()[-1])
    if "HYDRA" in text or "MPICH" in text:
        version = next(
            (ln.split(":", 1)[1].strip() for ln in text.splitlines() if "Version:" in ln), ""
        )
        return MpiLauncher(path, Flavor.MPICH, version)
    if "Intel" in text:
        return MpiLauncher(path, Flavor.INTEL_MPI, first)
    if code == 127:
        raise LauncherNotFoundError(f"{path} cannot be run: {text.strip()}")
    return MpiLauncher(path, Flavor.UNKNOWN, first)


@dataclass(frozen=True)
class HostPlacement:
    """Ranks on other machines: ``host_list`` (``"n1:2,n2:2"``), reached through ``agent``
    (an ssh-like program), working in ``wdir``, with the variables named in ``exported``;
    MPI traffic on ``network`` (a CIDR) when given."""

    host_list: str
    agent: tuple[str, ...]
    wdir: str
    exported: tuple[str, ...]
    network: str | None = None
    local_address: str | None = None


ALLOCATION = "allocation"  # a scheduler's allocation (Slurm) says where the ranks go


def mpi_argv(
    launcher: MpiLauncher,
    config: Mpi,
    processes: int,
    command: list[str],
    where: HostPlacement | str | None = None,
) -> list[str]:
    """``mpirun -n N ... command``, the one MPI command line of every target: ranks on this
    machine (``where`` None), in a scheduler's allocation (``ALLOCATION``), or on hosts."""
    argv = [launcher.path, "-n", str(processes)]
    if isinstance(where, HostPlacement):
        argv += _host_options(launcher, where)
    elif where is None and launcher.flavor is Flavor.OPEN_MPI:
        argv += ["--bind-to", "none"]
        if processes > (os.cpu_count() or 1):
            argv += ["--oversubscribe"]
    elif where is None and launcher.flavor is Flavor.MPICH:
        argv += ["-launcher", "fork"]
    return [*argv, *config.extra_args, *command]


def _host_options(launcher: MpiLauncher, hosts: HostPlacement) -> list[str]:
    if launcher.flavor is Flavor.OPEN_MPI:
        argv = ["--host", hosts.host_list, "--mca", "plm_rsh_agent", shlex.join(hosts.agent)]
        argv += ["--bind-to", "none", "--wdir", hosts.wdir]
        if hosts.network:
            argv += ["--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", hosts.network]
            argv += ["--mca", "oob_tcp_if_include", hosts.network]
        for name in hosts.exported:
            argv += ["-x", name]
        return argv
    if launcher.flavor is Flavor.MPICH:
        if len(hosts.agent) != 1:
            raise SpecError(
                "MPICH's launcher takes the agent as one program: give Hosts(agent=[path]) "
                "with the options inside that program, or use Open MPI",
                field="compute_target",
            )
        argv = ["-hosts", hosts.host_list, "-launcher", "ssh", "-launcher-exec", hosts.agent[0]]
        if hosts.local_address:
            argv += ["-localhost", hosts.local_address]
        return [*argv, "-wdir", hosts.wdir, "-genvlist", ",".join(hosts.exported)]
    raise NotAvailableError(
        f"{launcher.flavor.value} at {launcher.path}: use Open MPI or MPICH on hosts"
    )


def mpi_env(launcher: MpiLauncher) -> dict[str, str]:
    """Variables the launcher needs; as root Open MPI refuses to start without them."""
    env: dict[str, str] = {}
    if launcher.flavor is Flavor.OPEN_MPI and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env
