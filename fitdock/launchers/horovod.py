"""Horovod as a distribution: ``mpirun`` (the MPI controller, like ``Mpi``) or
``horovodrun`` (MPI or Gloo controller)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from fitdock.errors import LauncherNotFoundError
from fitdock.estimators.distribution import Horovod, Mpi
from fitdock.launchers import mpi
from fitdock.launchers.mpi import Flavor, MpiLauncher
from fitdock.launchers.process import capture


def find_horovodrun(config: Horovod) -> str:
    if config.horovodrun:
        found = shutil.which(config.horovodrun)
        if found is None:
            raise LauncherNotFoundError(
                f"Horovod(horovodrun={config.horovodrun!r}) is not a program"
            )
        return found
    beside = Path(sys.executable).parent / "horovodrun"
    found = str(beside) if beside.is_file() else shutil.which("horovodrun")
    if found is None:
        raise LauncherNotFoundError(
            "no horovodrun found: install Horovod (`pip install 'fitdock[horovod]'`, see "
            "scripts/build-horovod.sh) or pass Horovod(launcher='mpirun')"
        )
    return found


def horovodrun_argv(
    path: str, config: Horovod, processes: int, hosts: list[str] | None, command: list[str]
) -> list[str]:
    """``horovodrun -np N [-H host:slots,...] --gloo|--mpi ... command``."""
    argv = [path, "-np", str(processes)]
    if hosts:
        argv += ["-H", ",".join(hosts)]
    argv.append("--gloo" if config.controller == "gloo" else "--mpi")
    return [*argv, *config.extra_args, *command]


def built_flavor() -> Flavor | None:
    """The MPI family Horovod's PyTorch library links to (read with ``ldd``, without
    importing Horovod), or None when it was built without MPI or is not installed."""
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return None
    libraries = sorted(Path(next(iter(spec.submodule_search_locations))).glob("torch/mpi_lib*.so"))
    if not libraries:
        return None
    code, text = capture(["ldd", str(libraries[0])])
    if code != 0:
        return None
    if "libmpi.so.40" in text:
        return Flavor.OPEN_MPI
    if "libmpi.so.12" in text:
        return Flavor.MPICH
    return None


def mpi_job(config: Mpi | Horovod) -> tuple[MpiLauncher, Mpi]:
    """The mpirun and the MPI settings of a job started by mpirun: Horovod's MPI controller
    is an MPI job whose mpirun is the one of the MPI Horovod was built with."""
    if isinstance(config, Horovod):
        return mpi_for(config), config.as_mpi()
    return mpi.find_launcher(config), config


def mpi_for(config: Horovod) -> MpiLauncher:
    """The mpirun for a Horovod job: the one named, else one of the MPI Horovod was built with."""
    return mpi.find_launcher(config.as_mpi(), None if config.mpirun else built_flavor())
