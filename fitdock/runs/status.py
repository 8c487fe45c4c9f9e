"""Run states (an enum, never bare strings)."""

from __future__ import annotations

import enum


class RunStatus(str, enum.Enum):
    """Where a run is in its life. Terminal states never change again."""

    QUEUED = "Queued"
    PREPARING = "Preparing"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"
    TIMED_OUT = "TimedOut"
    # Pipeline steps only: not started yet; never run because a step it needs failed
    NOT_STARTED = "NotStarted"
    SKIPPED = "Skipped"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELED,
        RunStatus.TIMED_OUT,
        RunStatus.SKIPPED,
    }
)
