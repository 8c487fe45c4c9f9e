"""Helpers that environments/, runs/, distributions/ and execution/ share: fitdock's home
folder, the clear error for a write that a full or read-only disk refused
(``storage_error``), and (from ``jobside.common``, which the job side shares too) the
clock and atomic JSON writes. ``pause_at`` is a test hook, inert in use."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from fitdock.errors import StorageError
from fitdock.jobside.common import now_iso, read_json, write_json_atomic

__all__ = [
    "NO_SPACE",
    "fitdock_home",
    "mount_point",
    "now_iso",
    "pause_at",
    "read_json",
    "storage_error",
    "write_json_atomic",
]

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # a full disk, or a full quota


def fitdock_home() -> Path:
    """``$FITDOCK_HOME``, else ``~/.fitdock``: runs, environments, caches."""
    return Path(os.environ.get("FITDOCK_HOME") or Path.home() / ".fitdock").expanduser()


def pause_at(phase: str) -> None:
    """A test hook, inert unless ``FITDOCK_TEST_PAUSE_AT`` names ``phase``: then write this
    process's pid to ``$FITDOCK_TEST_PAUSE_DIR/<phase>`` and wait there until that file is
    removed, so that a test can kill the process at that exact point, or change the world
    (fill the disk) before it goes on (tests/hardening/). Phases: validation, snapshot,
    environment, image, record, launch; pipeline_scheduling, pipeline_between_steps,
    pipeline_reuse."""
    if os.environ.get("FITDOCK_TEST_PAUSE_AT") != phase:
        return
    import time

    marker = Path(os.environ.get("FITDOCK_TEST_PAUSE_DIR") or fitdock_home()) / phase
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"pid": os.getpid(), "phase": phase})
    while marker.exists():
        time.sleep(0.02)


def mount_point(path: str | os.PathLike[str]) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return here


def storage_error(exc: OSError, path: str | os.PathLike[str]) -> StorageError:
    """The clear error for a write to ``path`` that failed with ``exc``: no space left, a
    read-only file system, else the system's words; each says what to do."""
    where = os.fspath(path)
    if exc.errno in NO_SPACE or (exc.errno is None and _full(exc, where)):
        message = (
            f"no space left on {mount_point(where)} (writing {where}): free space there, "
            "or set FITDOCK_HOME to a folder on a larger disk"
        )
    elif exc.errno == errno.EROFS:
        message = (
            f"{where} is on a read-only file system ({mount_point(where)}): set FITDOCK_HOME "
            "to a writable folder"
        )
    else:
        message = f"cannot write {where}: {exc.strerror or exc}"
    return StorageError(message, path=where, errno=exc.errno)


def _full(exc: OSError, where: str) -> bool:
    """An error without an errno (``shutil.Error``: a copy of many files) that a full disk
    caused: its text says so, or the file system has no room left."""
    if f"[Errno {errno.ENOSPC}]" in str(exc):
        return True
    try:
        stats = os.statvfs(mount_point(where))
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 64 * 1024
