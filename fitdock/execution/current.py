"""A run's record as it is now, for readers: a run whose supervisor died is marked Failed
("lost supervisor"), unless a scheduler runs its job, which is then asked."""

from __future__ import annotations

from fitdock.execution import scheduled
from fitdock.runs.record import ErrorReason, RunError, RunRecord
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir, SupervisorLock
from fitdock.shared import now_iso
from fitdock.targets.registry import get_target

LOST_SUPERVISOR = "lost supervisor: the process supervising this run died before it ended"


def checked_record(run: RunDir) -> RunRecord:
    """The record; a live-looking run whose supervisor is gone is marked Failed, unless a
    scheduler runs its job, which is then asked where the job is (a job the supervisor
    died before submitting is lost like any other)."""
    record = run.read()
    if record.status.is_terminal or run.supervisor_alive():
        return record
    with SupervisorLock(run.lock_path, blocking=False) as held:
        if not held:
            return run.read()
        record = run.read()  # re-read under the lock: it may have ended meanwhile
        target = get_target(record.target)
        if target.schedules_attempts and record.slurm is not None:
            return scheduled.refresh(run, target)  # the job outlives its submitter: ask
        if not record.status.is_terminal:
            record.status = RunStatus.FAILED
            record.ended_at = record.ended_at or now_iso()
            record.error = RunError(reason=ErrorReason.LOST_SUPERVISOR, message=LOST_SUPERVISOR)
            run.write(record)
    return record
