"""Horovod as a distribution: ``mpirun`` (the MPI controller, like ``Mpi``) or
``horovodrun`` (MPI or Gloo controller). Which mpirun (the one of the MPI Horovod links
to) is ``distributions.mpimatch``'s choice, as for every MPI job."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from fitdock.errors import LauncherNotFoundError
from fitdock.specs.distribution import Horovod


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
