"""The in-script view of a run: ``Run.get_context()`` inside a training script.

Stdlib only, because every rank imports it. Inside a fitdock run the launcher
sets ``FITDOCK_*`` variables; outside one the context is *offline*: metrics go
to stdout and the directories default to ``./outputs`` and ``./checkpoints``,
so the same script runs under plain ``python`` too (Azure's ``allow_offline``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


class RunContext:
    """What a training script sees of its run."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.id: str | None = env.get("FITDOCK_RUN_ID") or None
        self.offline = self.id is None
        self.rank = _env_int(("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"), 0)
        self.world_size = _env_int(("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"), 1)
        self.local_rank = _env_int(("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"), 0)
        self.output_dir = Path(env.get("FITDOCK_OUTPUT_DIR") or "outputs")
        self.log_dir = Path(env.get("FITDOCK_LOG_DIR") or "logs")
        self.checkpoint_dir = Path(env.get("FITDOCK_CHECKPOINT_DIR") or "checkpoints")
        resume = env.get("FITDOCK_RESUME_DIR")
        self.resume_dir: Path | None = Path(resume) if resume else None
        run_dir = env.get("FITDOCK_RUN_DIR")
        self._metrics_path = Path(run_dir) / METRICS_FILE if run_dir else None
        if self.offline:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Record one value of metric ``name``; values keep their logging order."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric name must be a non-empty string, got {name!r}")
        record = {
            "name": name,
            "value": value,
            "step": step,
            "rank": self.rank,
            "time": time.time(),
        }
        line = json.dumps(record, default=float) + "\n"
        if self._metrics_path is None:
            sys.stdout.write(
                f"[metric] {name}={value}" + (f" step={step}" if step is not None else "") + "\n"
            )
            return
        # One write of one short line with O_APPEND: lines from several ranks never interleave.
        fd = os.open(self._metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def log_list(self, name: str, values: list[Any]) -> None:
        """Record several values of one metric at once."""
        for value in values:
            self.log(name, value)

    def heartbeat(self) -> None:
        """Say "still alive" without logging a metric (read by hang detection)."""
        if self._metrics_path is not None:
            (self._metrics_path.parent / "heartbeat").touch()

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        where = "offline" if self.offline else self.id
        return f"RunContext({where}, rank={self.rank}/{self.world_size})"
