"""MPI as a distribution: find the launcher, tell Open MPI from MPICH, build its argv."""

from __future__ import annotations

import enum
import functools
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from fitdock.errors import LauncherNotFoundError
from fitdock.estimators.distribution import Mpi
from fitdock.launchers.process import capture

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
    """The launcher named in ``Mpi(mpirun=...)``, else the one beside this interpreter
    (where the ``fitdock[mpi]`` extra puts it), else the first on PATH; with ``flavor``,
    the first of those (then /usr/bin) that is of that MPI family."""
    if flavor is not None and not config.mpirun:
        return _find_flavor(flavor)
    if config.mpirun:
        path = shutil.which(config.mpirun)
        if path is None:
            raise LauncherNotFoundError(
                f"Mpi(mpirun={config.mpirun!r}) is not an executable program"
            )
        return _identify(path)
    beside = Path(sys.executable).parent
    for name in NAMES:
        if (beside / name).is_file() and os.access(beside / name, os.X_OK):
            return _identify(str(beside / name))
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return _identify(path)
    raise LauncherNotFoundError(
        "no mpirun or mpiexec found: install an MPI with `pip install 'fitdock[mpi]'` "
        "(MPICH from PyPI), or `apt-get install openmpi-bin`, or pass Mpi(mpirun='/path/to/mpirun')"
    )


def _find_flavor(flavor: Flavor) -> MpiLauncher:
    folders = [
        str(Path(sys.executable).parent),
        *os.environ.get("PATH", "").split(os.pathsep),
        "/usr/bin",
    ]
    seen = set()
    for folder in folders:
        for name in NAMES:
            path = os.path.join(folder, name)
            if path in seen or not os.access(path, os.X_OK):
                continue
            seen.add(path)
            launcher = _identify(path)
            if launcher.flavor is flavor:
                return launcher
    raise LauncherNotFoundError(f"no {flavor.value} mpirun found (needed by the library in use)")


@functools.lru_cache(maxsize=8)
def _identify(path: str) -> MpiLauncher:
    code, text = capture([path, "--version"], timeout=20)
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


def mpi_argv(launcher: MpiLauncher, config: Mpi, processes: int, command: list[str]) -> list[str]:
    """``mpirun -n N ... command`` for ``processes`` ranks on this machine."""
    argv = [launcher.path, "-n", str(processes)]
    if launcher.flavor is Flavor.OPEN_MPI:
        argv += ["--bind-to", "none"]
        if processes > (os.cpu_count() or 1):
            argv += ["--oversubscribe"]
    elif launcher.flavor is Flavor.MPICH:
        argv += ["-launcher", "fork"]
    return [*argv, *config.extra_args, *command]


def mpi_env(launcher: MpiLauncher) -> dict[str, str]:
    """Variables the launcher needs; as root Open MPI refuses to start without them."""
    env: dict[str, str] = {}
    if launcher.flavor is Flavor.OPEN_MPI:
        # mpi4py's PyPI wheel picks an MPI library at import time; under Open MPI's launcher
        # it must be Open MPI's, else it aborts (a PMIx error) when MPICH is installed too.
        env["MPI4PY_LIBMPI"] = os.environ.get("MPI4PY_LIBMPI", "libmpi.so.40")
        if os.geteuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env
