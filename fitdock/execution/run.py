"""``Run``: a handle on one run's record, logs, metrics and files.

``Run(run_id)`` opens a run of this machine's ``$FITDOCK_HOME``; ``fit()``
returns one. Inside a training script, ``Run.get_context()`` gives the
script's own view (``RunContext``).
"""

from __future__ import annotations

import builtins
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitdock._units import human_size
from fitdock.errors import RunFailedError
from fitdock.runs.context import RunContext
from fitdock.runs.follow import LogFollower
from fitdock.runs.status import RunStatus

if TYPE_CHECKING:
    from fitdock.execution.supervisor import Supervisor

POLL_SECONDS = 0.1


class Run:
    """A run on this machine."""

    def __init__(
        self, run_id: str, *, home: Path | None = None, supervisor: Supervisor | None = None
    ) -> None:
        from fitdock.runs.store import RunDir  # not at import: every rank imports Run

        self._dir = RunDir.find(run_id, home)
        self._supervisor = supervisor

    # ------------------------------------------------------------------ class API
    @classmethod
    def get_context(cls) -> RunContext:
        """The current run, seen from inside a training script (offline outside fitdock)."""
        return RunContext()

    @classmethod
    def list(cls, home: Path | None = None) -> list[Run]:
        from fitdock.runs.store import list_runs

        return [cls(d.id, home=home) for d in list_runs(home)]

    # ------------------------------------------------------------------ record
    @property
    def id(self) -> str:
        return self._dir.id

    @property
    def record(self) -> dict[str, Any]:
        """The run record (``run.json``, see ``runs/record.py``) as JSON, checked for a lost
        supervisor (a scheduled run's is asked of its scheduler instead)."""
        from fitdock.execution.current import checked_record

        return checked_record(self._dir).as_json()

    def get_status(self) -> str:
        """Azure's status string (``"Completed"``, ``"Failed"``, ``"Running"``, ...)."""
        return self.status.value

    @property
    def status(self) -> RunStatus:
        return RunStatus(self.record["status"])

    @property
    def error(self) -> dict[str, Any] | None:
        """Why the run did not complete: reason, message, and for a failed rank its
        rank, host, exit code or signal and stderr tail."""
        return self.record.get("error")

    def get_details(self) -> dict[str, Any]:
        return self.record

    run_dir = property(lambda self: self._dir.path)
    output_dir = property(lambda self: self._dir.outputs)
    log_dir = property(lambda self: self._dir.logs)
    checkpoint_dir = property(lambda self: self._dir.checkpoints)
    snapshot_dir = property(lambda self: self._dir.snapshot)

    # ------------------------------------------------------------------ waiting
    def wait_for_completion(
        self, show_output: bool = False, raise_on_error: bool = True
    ) -> dict[str, Any]:
        """Block until the run ends; with ``show_output`` print its logs, tagged by rank.
        Like Azure, raises ``RunFailedError`` for a run that did not complete unless
        ``raise_on_error=False``. Ctrl-C cancels a run this process supervises."""
        follower = LogFollower(self._dir.logs) if show_output else None
        try:
            while not self._ended():
                if follower is not None:
                    follower.pump()
        except KeyboardInterrupt:
            if self._supervisor is not None:
                self._supervisor.cancel()
                self._supervisor.done.wait()
            raise
        finally:
            if follower is not None:
                follower.pump(final=True)
        record = self.record
        if raise_on_error and record["status"] != RunStatus.COMPLETED.value:
            raise RunFailedError(self.id, RunStatus(record["status"]), record.get("error"))
        return record

    def _ended(self) -> bool:
        if self._supervisor is not None:
            return self._supervisor.done.wait(POLL_SECONDS)
        if self.status.is_terminal:
            return True
        time.sleep(POLL_SECONDS)
        return False

    def cancel(self) -> None:
        """Stop the run: SIGTERM to its processes, the grace period, then SIGKILL (on the
        slurm target, ``scancel``)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            return
        from fitdock.execution.current import checked_record
        from fitdock.targets.registry import get_target

        record = checked_record(self._dir)
        if record.status.is_terminal:
            return
        self._dir.cancel_path.touch()  # a live supervisor elsewhere takes it from here
        if not self._dir.supervisor_alive():
            with self._dir.edit() as record:
                record.cancel_requested = True
            get_target(record.target).cancel(self._dir, record)

    # ------------------------------------------------------------------ results
    def get_metrics(
        self, name: str | None = None, rank: int | None = None
    ) -> dict[str, builtins.list[Any]]:
        """Metric name -> values in logging order (all ranks, or one ``rank``)."""
        metrics: dict[str, builtins.list[Any]] = {}
        if not self._dir.metrics.is_file():
            return metrics
        for line in self._dir.metrics.read_text().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if (name is None or item["name"] == name) and (
                rank is None or item.get("rank") == rank
            ):
                metrics.setdefault(item["name"], []).append(item["value"])
        return metrics

    def get_file_names(self) -> builtins.list[str]:
        """Files of the run, relative to the run folder: outputs/, logs/, checkpoints/."""
        names = []
        for folder in (self._dir.outputs, self._dir.logs, self._dir.checkpoints):
            names += [
                p.relative_to(self._dir.path).as_posix() for p in folder.rglob("*") if p.is_file()
            ]
        return sorted(names)

    def download_file(self, name: str, output_file_path: str | Path | None = None) -> Path:
        """Copy one of ``get_file_names()`` to ``output_file_path`` (default: its name here)."""
        if name not in self.get_file_names():
            raise FileNotFoundError(f"run {self.id} has no file {name!r}; see get_file_names()")
        target = Path(output_file_path or Path(name).name)
        if target.is_dir():
            target = target / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(self._dir.path / name, target))

    def summary(self) -> str:
        record = self.record
        lines = [
            f"run {self.id}: {record['status']}",
            f"  ranks: {record.get('world_size')}  target: {record.get('target')}",
            f"  snapshot: {_snapshot_text(record.get('source') or {})}",
            f"  started: {record.get('started_at')}  ended: {record.get('ended_at')}",
        ]
        for metric, values in self.get_metrics().items():
            lines.append(f"  {metric}: {values[-1]} (last of {len(values)})")
        error = record.get("error")
        if error:
            lines.append(f"  error: {error.get('message')}")
        for tag, value in sorted((record.get("tags") or {}).items()):
            lines.append(f"  {tag}: {value}")
        lines.append(f"  outputs: {self._dir.outputs}")
        images = self._dir.outputs / "images"  # what a script saved as PNG
        if images.is_dir():
            lines += [f"  image: {path}" for path in sorted(images.glob("*.png"))]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, status={self.status.value})"


def _snapshot_text(source: dict[str, Any]) -> str:
    files, size = source.get("files"), source.get("bytes")
    if files is None or size is None:
        return "-"
    commit = source.get("git_commit")
    return f"{files} files, {human_size(size)}" + (f", git {commit[:12]}" if commit else "")
