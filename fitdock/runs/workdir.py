"""The job's working directory: ``outputs/`` and ``logs/`` in it are the run's own.

As on Azure ML, a script saves to ``./outputs/model.npz`` and ``./logs/...`` relative to
its working directory, the run's ``snapshot/``. There ``outputs`` and ``logs`` are
relative links to the run's folders (``snapshot/outputs -> ../outputs``), so they resolve
wherever the run folder sits at its own path: here, in a container that mounts it, on a
host that shares it or receives it through staging (``tarfile`` keeps links).

A source directory that ships its own ``outputs/`` or ``logs/`` folder has its files moved
into the run's folder before the link replaces it, and the move is reported
(``ShippedFolder``). A *file* named ``outputs`` or ``logs`` is a ``SpecError``: it cannot
become the run's folder, and dropping it would lose it silently.

``make_run_folder`` creates the run's folder itself, with a clear error where fitdock's
home cannot be written (a read-only file system, a full disk).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fitdock._units import human_size
from fitdock.errors import SpecError
from fitdock.runs.layout import WORKDIR_LINKS
from fitdock.runs.store import RunDir
from fitdock.shared import storage_error

LINKED = WORKDIR_LINKS  # outputs, logs


def make_run_folder(run: RunDir) -> None:
    """Create the run's folder (and ``$FITDOCK_HOME/runs`` above it); ``StorageError``
    when the home folder cannot be written, with nothing created."""
    try:
        run.path.mkdir(parents=True)
    except FileExistsError:
        raise
    except OSError as exc:
        raise storage_error(exc, run.path) from exc


@dataclass(frozen=True)
class ShippedFolder:
    """A folder of the source directory whose files went to the run's folder of that name."""

    name: str
    files: int
    bytes: int

    def __str__(self) -> str:
        return (
            f"{self.name}/ shipped with the source ({self.files} files, "
            f"{human_size(self.bytes)}) moved to the run's {self.name}/, where ./{self.name} links"
        )


def check_names(snapshot: Path) -> None:
    """Refuse a snapshot holding a file (not a folder) named ``outputs`` or ``logs``."""
    for name in LINKED:
        path = snapshot / name
        if path.exists() and not path.is_dir():
            raise SpecError(
                f"source_directory holds a file named {name!r}, but {name}/ in the job's "
                f"working directory is the run's {name} folder (as on Azure ML): rename the "
                "file, or list it in .fitdockignore",
                field="source_directory",
            )


def link_run_folders(run: RunDir) -> list[ShippedFolder]:
    """Make ``snapshot/outputs`` and ``snapshot/logs`` links to the run's folders (which
    must exist); the files of a shipped folder move into the run's folder first."""
    check_names(run.snapshot)
    shipped = []
    for name in LINKED:
        folder = run.path / name
        link = run.snapshot / name
        if link.is_dir():
            shipped.append(_move_files(link, folder, name))
            shutil.rmtree(link)
        link.symlink_to(Path("..") / name, target_is_directory=True)
    return [item for item in shipped if item.files]


def _move_files(source: Path, target: Path, name: str) -> ShippedFolder:
    files = sorted(p for p in source.rglob("*") if p.is_file())
    for path in files:  # check every file first: a clash moves nothing
        rel = path.relative_to(source)
        if (target / rel).exists():  # only folders fitdock makes are there, e.g. outputs/model
            raise SpecError(
                f"source_directory ships a file {name}/{rel.as_posix()}, but the run's "
                f"{name}/{rel.as_posix()} is a folder fitdock makes: rename the file, or list "
                "it in .fitdockignore",
                field="source_directory",
            )
    size = 0
    for path in files:
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        size += path.stat().st_size
        shutil.move(path, dest)  # a rename; a copy out of a shared snapshot's overlay
    return ShippedFolder(name=name, files=len(files), bytes=size)
