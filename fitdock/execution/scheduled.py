"""Jobs whose attempts a scheduler runs (the slurm target): submit once, then follow.

The supervisor submits the job (``Target.submit``) and polls ``Target.describe`` until the
job ends, mirroring it in the record: Queued, Running, then the end, which ``settle``
judges as fitdock's own attempts are judged. The job does not need this process: if it
dies, any later reader of the run asks the scheduler the same way (``refresh``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fitdock.errors import FitdockError
from fitdock.execution.judge import STATUS, judge, rank_exits
from fitdock.jobside.common import Outcome
from fitdock.runs.record import ErrorReason, RunError, RunRecord
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir
from fitdock.shared import now_iso
from fitdock.targets.base import JobDescription, Target

if TYPE_CHECKING:
    from fitdock.execution.supervisor import Supervisor

POLL_SECONDS = 0.25
SILENCE_SECONDS = 300  # how long the scheduler may not answer before the run is Failed
REASON = {
    Outcome.CANCELED: ErrorReason.CANCELED,
    Outcome.TERMINATED: ErrorReason.CANCELED,
    Outcome.TIMED_OUT: ErrorReason.TIMEOUT,
    Outcome.PREEMPTED: ErrorReason.PREEMPTED,
}


def follow(supervisor: Supervisor) -> None:
    """Submit the job and mirror its state in the run record until it ends."""
    run, target = supervisor.run_dir, supervisor.target
    if supervisor.canceled():
        with run.edit() as record:
            supervisor.record_start(record)
            record.status = RunStatus.CANCELED
            record.ended_at = now_iso()
            record.error = RunError(
                reason=ErrorReason.CANCELED, message="canceled by request before submission"
            )
        return
    try:
        job = target.submit(supervisor.plan, run)
    except FitdockError as exc:
        supervisor.fail(ErrorReason.SUBMIT, str(exc))
        return
    with run.edit() as record:
        supervisor.record_start(record)
        record.status = RunStatus.QUEUED
        record.slurm = job
    stopped = False
    answered = time.monotonic()
    while True:
        if not stopped and supervisor.canceled():
            with run.edit() as record:
                record.cancel_requested = True
            target.stop(run, record)
            stopped = True
        record = run.read()
        described = target.describe(run, record)
        if described is None:  # the scheduler is busy or restarting: ask again
            if time.monotonic() - answered > SILENCE_SECONDS:
                supervisor.fail(
                    ErrorReason.SCHEDULER_UNREACHABLE,
                    f"the scheduler did not answer for {SILENCE_SECONDS} s",
                )
                return
            time.sleep(POLL_SECONDS)
            continue
        answered = time.monotonic()
        if settle(run, record, described):
            return
        if stopped:
            time.sleep(POLL_SECONDS)
        else:
            supervisor.cancel_requested.wait(POLL_SECONDS)


def settle(run: RunDir, record: RunRecord, described: JobDescription) -> bool:
    """Bring ``record`` up to what the scheduler says; True when the job has ended."""
    before = record.as_json()
    record.attempts = described.attempts
    record.attempt = len(described.attempts) or None
    if record.slurm is not None:
        record.slurm.state = described.scheduler_state
        record.slurm.reason = described.scheduler_reason
    if described.started_at and not record.started_at:
        record.started_at = described.started_at
    if described.status.is_terminal:
        _end(run, record, described)
    else:
        record.status = described.status
    if record.as_json() != before:
        run.write(record)
    return record.status.is_terminal


def _end(run: RunDir, record: RunRecord, described: JobDescription) -> None:
    outcome = described.outcome
    record.ended_at = described.ended_at or now_iso()
    record.exit_code = described.exit_code
    record.ranks = dict(rank_exits(run.logs, record.world_size, stopped=outcome is not None))
    if outcome is Outcome.FAILED:
        result = judge(run.logs, record.world_size, described.exit_code or 1, None)
        record.status, record.ranks, record.error = result.status, dict(result.ranks), result.error
    elif outcome is None:  # the scheduler ended the job itself (node failure, its limit ...)
        record.status = described.status
        record.error = RunError(
            reason=ErrorReason.SCHEDULER,
            message=described.detail,
            scheduler_state=described.scheduler_state,
        )
    else:
        record.status = STATUS[outcome]
        reason = REASON.get(outcome)
        record.error = None if reason is None else RunError(reason=reason, message=described.detail)


def refresh(run: RunDir, target: Target) -> RunRecord:
    """Bring a scheduled run's record up to date for a reader (no supervisor is left)."""
    record = run.read()
    if record.status.is_terminal or record.slurm is None:
        return record
    described = target.describe(run, record)
    if described is not None:  # else the scheduler is not reachable now: as it stands
        settle(run, record, described)
    return record
