"""Whether to start a job again: a pure decision, tested without processes.

After an attempt ends, ``decide(outcome, attempts, max_restarts)`` says
``RESTART`` or ``STOP``. Only failures that another attempt can fix restart:
a rank that failed, a launcher that failed, a hang, or a time-out (the limit is
per attempt, as with a scheduler's requeue). A completed or canceled run, or a
lost supervisor, never restarts.
"""

from __future__ import annotations

import enum


class Outcome(str, enum.Enum):
    COMPLETED = "completed"
    RANK_FAILED = "rank_failed"
    LAUNCHER_FAILED = "launcher_failed"
    HUNG = "hung"
    TIMED_OUT = "timeout"
    CANCELED = "canceled"


class Decision(str, enum.Enum):
    RESTART = "restart"
    STOP = "stop"


RESTARTABLE = frozenset(
    {Outcome.RANK_FAILED, Outcome.LAUNCHER_FAILED, Outcome.HUNG, Outcome.TIMED_OUT}
)


def decide(outcome: Outcome, attempts: int, max_restarts: int) -> Decision:
    """``attempts``: how many attempts have run so far, this one included (>= 1)."""
    if attempts < 1 or max_restarts < 0:
        raise ValueError("attempts must be >= 1 and max_restarts >= 0")
    if outcome in RESTARTABLE and attempts <= max_restarts:
        return Decision.RESTART
    return Decision.STOP
