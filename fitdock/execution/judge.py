"""What an attempt's processes left behind, turned into a status and an error."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fitdock.execution.policy import Outcome
from fitdock.runs.follow import tail
from fitdock.runs.status import RunStatus

STATUS = {
    Outcome.COMPLETED: RunStatus.COMPLETED,
    Outcome.RANK_FAILED: RunStatus.FAILED,
    Outcome.LAUNCHER_FAILED: RunStatus.FAILED,
    Outcome.HUNG: RunStatus.FAILED,
    Outcome.TIMED_OUT: RunStatus.TIMED_OUT,
    Outcome.CANCELED: RunStatus.CANCELED,
}


@dataclass
class AttemptResult:
    outcome: Outcome
    exit_code: int
    ranks: dict[str, Any]
    error: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> RunStatus:
        return STATUS[self.outcome]


def read_rank_exits(logs: Path) -> dict[int, dict[str, Any]]:
    exits: dict[int, dict[str, Any]] = {}
    for path in logs.glob("rank_*.exit.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        exits[int(record["rank"])] = record
    return exits


def first_failure(exits: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    failed = [r for r in exits.values() if r["exit_code"] != 0]
    return min(failed, key=lambda r: r["ended"]) if failed else None


def last_lines(logs: Path, world_size: int) -> dict[str, str]:
    """Each rank's last line of output (stdout or stderr, whichever was written last)."""
    lines = {}
    for rank in range(world_size):
        streams = [logs / f"rank_{rank}.{s}.log" for s in ("stdout", "stderr")]
        written = [p for p in streams if p.exists() and p.stat().st_size]
        newest = max(written, key=lambda p: p.stat().st_mtime, default=None)
        lines[str(rank)] = tail(newest, 1) if newest else ""
    return lines


def judge(
    logs: Path, world_size: int, code: int, stopped: Outcome | None, detail: str = ""
) -> AttemptResult:
    """The result of an attempt whose launcher exited with ``code``; ``stopped`` is why
    fitdock stopped it (None when it ended by itself)."""
    exits = read_rank_exits(logs)
    ranks = {str(rank): exits.get(rank) for rank in range(world_size)}
    if stopped is Outcome.CANCELED:
        return AttemptResult(
            stopped, code, ranks, {"reason": "canceled", "message": "canceled by request"}
        )
    if stopped is Outcome.TIMED_OUT:
        return AttemptResult(stopped, code, ranks, {"reason": "timeout", "message": detail})
    if stopped is Outcome.HUNG:
        last = last_lines(logs, world_size)
        error = {"reason": "hung", "message": detail, "last_lines": last}
        return AttemptResult(stopped, code, ranks, error)
    failure = first_failure(exits)
    if failure is not None:
        return AttemptResult(Outcome.RANK_FAILED, code, ranks, rank_error(logs, failure))
    missing = [rank for rank in range(world_size) if rank not in exits]
    if code == 0 and not missing:
        return AttemptResult(Outcome.COMPLETED, code, ranks, None)
    if code == 0:
        message = f"rank(s) {missing} ended without reporting an exit status"
        return AttemptResult(
            Outcome.LAUNCHER_FAILED,
            code,
            ranks,
            {"reason": "rank_unreported", "ranks": missing, "message": message},
        )
    launcher_tail = tail(logs / "launcher.log")
    message = f"the launcher exited with code {code}"
    if launcher_tail:
        message += f": {launcher_tail.splitlines()[-1]}"
    failed: dict[str, Any] = {
        "reason": "launcher_failed",
        "exit_code": code,
        "stderr_tail": launcher_tail,
        "message": message,
    }
    return AttemptResult(Outcome.LAUNCHER_FAILED, code, ranks, failed)


def rank_error(logs: Path, failure: dict[str, Any]) -> dict[str, Any]:
    rank = failure["rank"]
    stderr_tail = tail(logs / f"rank_{rank}.stderr.log")
    how = (
        f"signal {failure['signal']}" if failure["signal"] else f"exit code {failure['exit_code']}"
    )
    last = stderr_tail.splitlines()[-1] if stderr_tail else "(no stderr)"
    world = _world_mismatch(logs, rank)
    if world is not None:
        return {
            "reason": "world_size_mismatch",
            "rank": rank,
            "host": failure["host"],
            "exit_code": failure["exit_code"],
            "signal": failure["signal"],
            "world_size": world.get("size"),
            "expected": world.get("expected"),
            "stderr_tail": stderr_tail,
            "message": f"rank {rank} on {failure['host']}: {world.get('message', '')}",
        }
    return {
        "reason": "rank_failed",
        "rank": rank,
        "host": failure["host"],
        "exit_code": failure["exit_code"],
        "signal": failure["signal"],
        "stderr_tail": stderr_tail,
        "message": f"rank {rank} on {failure['host']} failed with {how}: {last}",
    }


def _world_mismatch(logs: Path, rank: int) -> dict[str, Any] | None:
    """What the world-size guard (``jobside/worldguard.py``) wrote for ``rank``, if it
    stopped that rank."""
    try:
        found: dict[str, Any] = json.loads((logs / f"rank_{rank}.world.json").read_text())
    except (OSError, ValueError):
        return None
    return found
