"""Run records on disk: ``$FITDOCK_HOME/runs/<run id>/``.

run.json        the record (written atomically: a crash never leaves half a file)
snapshot/       the source directory as it was submitted: the job's working directory
  outputs       link to ../outputs (runs/workdir.py), so ./outputs is the run's outputs/
  logs          link to ../logs; a source's own outputs/ or logs/ files are moved there
logs/           rank_<r>.stdout.log, rank_<r>.stderr.log, rank_<r>.exit.json, launcher.log,
                and what the script writes to FITDOCK_LOG_DIR (= ./logs)
outputs/        what the script writes to FITDOCK_OUTPUT_DIR (= ./outputs)
checkpoints/    what the script writes to FITDOCK_CHECKPOINT_DIR
resume/         a read-only copy of the checkpoint this run resumes from
inputs/         links to the named inputs
metrics.jsonl   one JSON line per logged value
supervisor.lock held by the supervising process while the run is live
cancel          present when a cancel was requested
slurm/          slurm target: job.sbatch, the job-side programs, batch.log, and
                attempt-<n>.json / attempt-<n>.exit.json written by each attempt
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from fitdock.errors import RunNotFoundError
from fitdock.runs.status import RunStatus

RECORD = "run.json"
LOCK = "supervisor.lock"
CANCEL = "cancel"
LOST_SUPERVISOR = "lost supervisor: the process supervising this run died before it ended"


def fitdock_home() -> Path:
    return Path(os.environ.get("FITDOCK_HOME") or Path.home() / ".fitdock").expanduser()


def runs_root(home: Path | None = None) -> Path:
    return (home or fitdock_home()) / "runs"


def new_run_id(name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{name}_{stamp}_{secrets.token_hex(3)}"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """The paths of one run and its record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.name

    @classmethod
    def find(cls, run_id: str, home: Path | None = None) -> RunDir:
        path = runs_root(home) / run_id
        if not (path / RECORD).is_file():
            raise RunNotFoundError(run_id, str(runs_root(home)))
        return cls(path)

    snapshot = property(lambda self: self.path / "snapshot")
    logs = property(lambda self: self.path / "logs")
    outputs = property(lambda self: self.path / "outputs")
    checkpoints = property(lambda self: self.path / "checkpoints")
    resume = property(lambda self: self.path / "resume")
    inputs = property(lambda self: self.path / "inputs")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    record_path = property(lambda self: self.path / RECORD)
    cancel_path = property(lambda self: self.path / CANCEL)
    lock_path = property(lambda self: self.path / LOCK)

    def read(self) -> dict[str, Any]:
        return json.loads(self.record_path.read_text())

    def write(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.record_path, record)

    def update(self, **changes: Any) -> dict[str, Any]:
        record = self.read()
        record.update(changes)
        self.write(record)
        return record

    def read_checked(self) -> dict[str, Any]:
        """The record; a live-looking run whose supervisor is gone is marked Failed."""
        record = self.read()
        if RunStatus(record["status"]).is_terminal or self.supervisor_alive():
            return record
        with SupervisorLock(self.lock_path, blocking=False) as held:
            if not held:
                return self.read()
            record = self.read()  # re-read under the lock: it may have ended meanwhile
            if record.get("slurm"):  # a Slurm job outlives its submitter: ask Slurm
                from fitdock.targets.slurm.record import refresh

                return refresh(self)
            if not RunStatus(record["status"]).is_terminal:
                record.update(
                    status=RunStatus.FAILED.value,
                    ended_at=record.get("ended_at") or now_iso(),
                    error={"reason": "lost_supervisor", "message": LOST_SUPERVISOR},
                )
                self.write(record)
        return record

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
        return str(run.read().get("created_at") or "")
    except (OSError, ValueError):
        return ""


def copy_read_only(source: Path, target: Path) -> Path:
    """A copy of the checkpoint folder, made read-only, so the new run cannot spoil it."""
    shutil.copytree(source, target, symlinks=False)
    for folder, _dirs, files in os.walk(target):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)
    return target


def remove_tree(path: Path) -> None:
    """Remove a half-made run folder, read-only resume copy included."""

    def make_writable(func, failed, *_):  # type: ignore[no-untyped-def]
        os.chmod(os.path.dirname(failed), stat.S_IRWXU)
        func(failed)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)
