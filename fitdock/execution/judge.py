"""What an attempt's processes left behind, turned into an outcome, a status and an error.

``judge`` reads the rank wrappers' exit records (and the world-size guard's markers)
after an attempt whose launcher exited; ``settle`` does the same for a job a scheduler
ran (``JobDescription``). Both give every rank a ``RankExit``: one whose wrapper was
killed before it could write one says so instead of being left out. A failed attempt
whose file system filled up says so (``no_space``): the rank's own words are often lost
with its stderr and exit record on the full disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitdock.jobside.common import Outcome, read_json, read_rank_exits
from fitdock.runs.follow import tail
from fitdock.runs.layout import LAUNCHER_LOG, RANK_STDERR, RANK_STDOUT, RANK_WORLD
from fitdock.runs.record import ErrorReason, RankExit, RunError
from fitdock.runs.status import RunStatus
from fitdock.shared import mount_point

STATUS = {
    Outcome.COMPLETED: RunStatus.COMPLETED,
    Outcome.RANK_FAILED: RunStatus.FAILED,
    Outcome.LAUNCHER_FAILED: RunStatus.FAILED,
    Outcome.FAILED: RunStatus.FAILED,
    Outcome.HUNG: RunStatus.FAILED,
    Outcome.TIMED_OUT: RunStatus.TIMED_OUT,
    Outcome.CANCELED: RunStatus.CANCELED,
    Outcome.TERMINATED: RunStatus.CANCELED,
    Outcome.PREEMPTED: RunStatus.FAILED,
}
FULL_BELOW = 64 * 1024  # bytes free under which a failed attempt's disk counts as full
NO_SPACE_WORDS = "No space left on device"  # strerror(ENOSPC), as a traceback says it
STOPPED_NOTE = "no exit status: stopped with the job (SIGKILL after the grace period)"


@dataclass
class AttemptResult:
    outcome: Outcome
    exit_code: int
    ranks: dict[str, RankExit]
    error: RunError | None

    @property
    def status(self) -> RunStatus:
        return STATUS[self.outcome]


def rank_exits(logs: Path, world_size: int, stopped: bool) -> dict[str, RankExit]:
    """Every rank's exit; one with no record was killed with the job (``stopped``) or
    never reported."""
    exits = read_rank_exits(logs)
    note = STOPPED_NOTE if stopped else "no exit status: the rank never reported one"
    return {
        str(rank): RankExit.model_validate(exits[rank])
        if rank in exits
        else RankExit.unrecorded(rank, note)
        for rank in range(world_size)
    }


def first_failure(logs: Path) -> dict[str, Any] | None:
    failed = [r for r in read_rank_exits(logs).values() if r["exit_code"] != 0]
    return min(failed, key=lambda r: r["ended"]) if failed else None


def last_lines(logs: Path, world_size: int) -> dict[str, str]:
    """Each rank's last line of output (stdout or stderr, whichever was written last)."""
    lines = {}
    for rank in range(world_size):
        streams = [logs / name.format(rank=rank) for name in (RANK_STDOUT, RANK_STDERR)]
        written = [p for p in streams if p.exists() and p.stat().st_size]
        newest = max(written, key=lambda p: p.stat().st_mtime, default=None)
        lines[str(rank)] = tail(newest, 1) if newest else ""
    return lines


def judge(
    logs: Path, world_size: int, code: int, stopped: Outcome | None, detail: str = ""
) -> AttemptResult:
    """The result of an attempt whose launcher exited with ``code``; ``stopped`` is why
    fitdock stopped it (None when it ended by itself)."""
    ranks = rank_exits(logs, world_size, stopped is not None)
    if stopped is Outcome.CANCELED:
        error = RunError(reason=ErrorReason.CANCELED, message="canceled by request")
        return AttemptResult(stopped, code, ranks, error)
    if stopped is Outcome.TIMED_OUT:
        error = RunError(reason=ErrorReason.TIMEOUT, message=detail)
        return AttemptResult(stopped, code, ranks, error)
    if stopped is Outcome.HUNG:
        last = last_lines(logs, world_size)
        error = RunError(reason=ErrorReason.HUNG, message=detail, last_lines=last)
        return AttemptResult(stopped, code, ranks, error)
    failure = first_failure(logs)
    missing = [int(rank) for rank, exit in ranks.items() if not exit.recorded]
    if failure is None and code == 0 and not missing:
        return AttemptResult(Outcome.COMPLETED, code, ranks, None)
    full = no_space(logs, world_size)
    if failure is not None:
        error = rank_error(logs, failure)
        if full is not None:
            error = error.model_copy(update={"reason": full.reason, "message": full.message})
        return AttemptResult(Outcome.RANK_FAILED, code, ranks, error)
    if full is not None:
        return AttemptResult(Outcome.LAUNCHER_FAILED, code, ranks, full)
    if code == 0:
        message = f"rank(s) {missing} ended without reporting an exit status"
        error = RunError(reason=ErrorReason.RANK_UNREPORTED, ranks=missing, message=message)
        return AttemptResult(Outcome.LAUNCHER_FAILED, code, ranks, error)
    launcher_tail = tail(logs / LAUNCHER_LOG)
    message = f"the launcher exited with code {code}"
    if launcher_tail:
        message += f": {launcher_tail.splitlines()[-1]}"
    error = RunError(
        reason=ErrorReason.LAUNCHER_FAILED,
        exit_code=code,
        stderr_tail=launcher_tail,
        message=message,
    )
    return AttemptResult(Outcome.LAUNCHER_FAILED, code, ranks, error)


def no_space(logs: Path, world_size: int) -> RunError | None:
    """A failed attempt whose file system filled up: the run's folder has (almost) no room
    left, or a rank's stderr says a write found none. Its rank's own words may be lost
    (stderr is on the full disk too, and so is the exit record), so this is said plainly."""
    try:
        stats = os.statvfs(logs)
        full = stats.f_bavail * stats.f_frsize < FULL_BELOW
    except OSError:
        full = False
    said = any(
        NO_SPACE_WORDS in tail(logs / RANK_STDERR.format(rank=rank)) for rank in range(world_size)
    )
    if not (full or said):
        return None
    where = mount_point(logs)
    message = (
        f"no space left on {where}: a write of the job (its logs, metrics, outputs or "
        f"checkpoints under {logs.parent}) found the disk full; free space there, or set "
        "FITDOCK_HOME to a folder on a larger disk, and run again"
    )
    return RunError(reason=ErrorReason.NO_SPACE, message=message)


def rank_error(logs: Path, failure: dict[str, Any]) -> RunError:
    """A failed rank: which, where, how and the tail of its stderr; a rank stopped by the
    world-size guard says that its MPI world was too small."""
    rank = failure["rank"]
    stderr_tail = tail(logs / RANK_STDERR.format(rank=rank))
    where = {
        "rank": rank,
        "host": failure["host"],
        "exit_code": failure["exit_code"],
        "signal": failure["signal"],
        "stderr_tail": stderr_tail,
    }
    world = read_json(logs / RANK_WORLD.format(rank=rank))
    if world:
        return RunError(
            reason=ErrorReason.WORLD_SIZE_MISMATCH,
            world_size=world.get("size"),
            expected=world.get("expected"),
            message=f"rank {rank} on {failure['host']}: {world.get('message', '')}",
            **where,
        )
    signum, code = failure["signal"], failure["exit_code"]
    how = f"signal {signum}" if signum else f"exit code {code}"
    last = stderr_tail.splitlines()[-1] if stderr_tail else "(no stderr)"
    message = f"rank {rank} on {failure['host']} failed with {how}: {last}"
    return RunError(reason=ErrorReason.RANK_FAILED, message=message, **where)
