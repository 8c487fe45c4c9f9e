"""Runs on disk: ``$FITDOCK_HOME/runs/<run id>/`` (its files: ``runs/layout.py``).

``RunDir`` reads and writes a run's typed record (``runs/record.py``); ``edit()`` is the
one way to change it: assign typed fields, and the record is written atomically when the
block ends. ``SupervisorLock`` tells a live run from one whose supervisor died.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from fitdock.errors import RunNotFoundError
from fitdock.runs.layout import RECORD, RunPaths
from fitdock.runs.names import run_id_problem, safe_stem
from fitdock.runs.record import RunRecord, write_record
from fitdock.shared import fitdock_home, write_json_atomic  # noqa: F401 - tests import it here


def runs_root(home: Path | None = None) -> Path:
    return (home or fitdock_home()) / "runs"


def new_run_id(name: str) -> str:
    """``<name>_<time>_<random>``, the name made safe for a folder (``names.safe_stem``)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{safe_stem(name)}_{stamp}_{secrets.token_hex(3)}"


class RunDir(RunPaths):
    """One run's folder and its record."""

    @classmethod
    def find(cls, run_id: str, home: Path | None = None) -> RunDir:
        """The run of that id; an id that is not one folder name (``..``, a path, NUL) is
        refused before any file is read, so a lookup stays under ``runs/``."""
        problem = run_id_problem(run_id)
        if problem is not None:
            raise RunNotFoundError(str(run_id), str(runs_root(home)), reason=problem)
        path = runs_root(home) / run_id
        if not (path / RECORD).is_file():
            raise RunNotFoundError(run_id, str(runs_root(home)))
        return cls(path)

    def read(self) -> RunRecord:
        return RunRecord.model_validate(json.loads(self.record_path.read_text()))

    def write(self, record: RunRecord) -> None:
        write_record(self.record_path, record)  # atomic; keeps room for the last write

    @contextlib.contextmanager
    def edit(self) -> Iterator[RunRecord]:
        """``with run.edit() as record: record.status = ...``: read, change typed fields
        (each assignment validated), write atomically at the end (not on an exception)."""
        record = self.read()
        yield record
        self.write(record)

    def supervisor_alive(self) -> bool:
        with SupervisorLock(self.lock_path, blocking=False) as held:
            return not held


class SupervisorLock:
    """An ``flock`` on ``supervisor.lock``: held while a supervisor lives, released by the
    kernel when it dies, even by SIGKILL. (``filelock`` would do, but this lock must also
    tell "held by a dead process" from "held", which needs the raw non-blocking try.)"""

    def __init__(self, path: Path, blocking: bool = True) -> None:
        self.path = path
        self.blocking = blocking
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def list_runs(home: Path | None = None) -> list[RunDir]:
    root = runs_root(home)
    if not root.is_dir():
        return []
    dirs = [RunDir(p) for p in root.iterdir() if (p / RECORD).is_file()]
    return sorted(dirs, key=_created)


def _created(run: RunDir) -> str:
    try:
        return str(json.loads(run.record_path.read_text()).get("created_at") or "")
    except (OSError, ValueError):
        return ""
