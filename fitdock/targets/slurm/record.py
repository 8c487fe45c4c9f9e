"""What Slurm says of a run's job, from ``scontrol`` and what each attempt wrote.

The job script (``slurmjob.py``) writes ``slurm/attempt-<n>.json`` when an attempt starts
and ``slurm/attempt-<n>.exit.json`` when it ends; ``scontrol show job`` gives the job's
state. ``describe`` turns both into a ``JobDescription``: Queued or Running, or the end
with how the last attempt ended (judged by ``execution``, as fitdock's own attempts are).
It serves the process that submitted the job while it watches, and any later reader once
that process is gone (a Slurm run outlives ``fit()``).
"""

from __future__ import annotations

from pathlib import Path

from fitdock.jobside.common import Outcome, read_json
from fitdock.runs.record import AttemptRecord, RunRecord
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir
from fitdock.targets.base import JobDescription
from fitdock.targets.slurm import ctl as slurmctl

OUTCOME_STATUS = {
    Outcome.COMPLETED: RunStatus.COMPLETED,
    Outcome.FAILED: RunStatus.FAILED,
    Outcome.TIMED_OUT: RunStatus.TIMED_OUT,
    Outcome.TERMINATED: RunStatus.CANCELED,
    Outcome.PREEMPTED: RunStatus.FAILED,
}


def read_attempts(run: RunDir) -> list[AttemptRecord]:
    """One entry per attempt that started: its start record merged with its end record."""
    attempts = []
    for start in sorted(run.slurm.glob("attempt-*.json"), key=_number):
        if start.name.endswith(".exit.json"):
            continue
        entry = read_json(start)
        ended = read_json(start.with_name(start.stem + ".exit.json"))
        if ended:
            entry.update(ended)
            entry["status"] = OUTCOME_STATUS[Outcome(ended["outcome"])].value
        if entry:
            attempts.append(AttemptRecord.model_validate(entry))
    return attempts


def _number(path: Path) -> int:
    digits = path.name.split("-", 1)[1].split(".")[0]
    return int(digits) if digits.isdigit() else 0


def describe(run: RunDir, record: RunRecord) -> JobDescription:
    """Where the job is now (``SlurmError`` when Slurm does not answer)."""
    assert record.slurm is not None  # only a submitted job is described
    info = slurmctl.show_job(record.slurm.job_id)
    attempts = read_attempts(run)
    first_start = attempts[0].started_at if attempts else None
    if info is not None and not info.is_final:
        running = info.status is RunStatus.RUNNING and bool(attempts)
        return JobDescription(
            status=info.status,
            attempts=attempts,
            started_at=first_start if running else None,
            scheduler_state=info.state,
            scheduler_reason=info.reason,
        )
    return _ended(record, info, attempts)


def _ended(
    record: RunRecord, info: slurmctl.JobInfo | None, attempts: list[AttemptRecord]
) -> JobDescription:
    """A job that Slurm reports as ended (or no longer knows)."""
    assert record.slurm is not None
    job_id = record.slurm.job_id
    last = attempts[-1] if attempts else AttemptRecord(attempt=0)
    extra = last.model_extra or {}
    state = info.state if info is not None else None
    ended = JobDescription(
        status=RunStatus.FAILED,
        attempts=attempts,
        started_at=attempts[0].started_at if attempts else None,
        scheduler_state=state,
        scheduler_reason=info.reason if info is not None else None,
        exit_code=last.exit_code,
        ended_at=last.ended_at,
    )
    outcome = last.outcome
    requeued = f"requeued {len(attempts) - 1} time(s)"
    if state == "CANCELLED" or (outcome is Outcome.TERMINATED and state != "PREEMPTED"):
        asked = "canceled by request" if record.cancel_requested else "canceled"
        ended.outcome, ended.detail = Outcome.CANCELED, f"{asked} (Slurm job {job_id})"
    elif outcome is Outcome.TIMED_OUT:
        ended.outcome = outcome
        ended.detail = f"{extra.get('detail') or 'time limit'}; {requeued}"
    elif outcome is Outcome.PREEMPTED:
        ended.outcome, ended.detail = outcome, f"preempted by Slurm; {requeued}"
    elif outcome in (Outcome.COMPLETED, Outcome.FAILED):
        ended.outcome = outcome
    else:  # no end record: Slurm stopped the job script itself (time limit, node failure)
        ended.status = slurmctl.FINAL_STATES.get(state or "", RunStatus.FAILED)
        ended.detail = (
            f"Slurm ended job {job_id} as {state}"
            if state
            else f"Slurm no longer knows job {job_id} and it left no end record"
        )
    if ended.outcome is not None:
        ended.status = OUTCOME_STATUS.get(ended.outcome, RunStatus.CANCELED)
    return ended
