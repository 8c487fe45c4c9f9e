"""A Slurm run's record, from what Slurm says of the job and what each attempt wrote.

The job script (``slurmjob.py``) writes ``slurm/attempt-<n>.json`` when an attempt starts
and ``slurm/attempt-<n>.exit.json`` when it ends; ``scontrol show job`` gives the job's
state. ``observe`` turns both into the changes to ``run.json``. It serves the process
that submitted the job while it watches, and any later reader once that process is gone
(the job does not need it: a Slurm run outlives ``fit()``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fitdock.execution.judge import judge, read_rank_exits
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir, now_iso
from fitdock.targets.slurm import ctl as slurmctl

OUTCOME_STATUS = {
    "completed": RunStatus.COMPLETED,
    "failed": RunStatus.FAILED,
    "timeout": RunStatus.TIMED_OUT,
    "terminated": RunStatus.CANCELED,
    "preempted": RunStatus.FAILED,
}


def read_attempts(run: RunDir) -> list[dict[str, Any]]:
    """One entry per attempt that started: its start record merged with its end record."""
    folder = run.path / "slurm"
    attempts = []
    for start in sorted(folder.glob("attempt-*.json"), key=_number):
        if start.name.endswith(".exit.json"):
            continue
        entry = _load(start)
        ended = _load(start.with_name(start.stem + ".exit.json"))
        if ended:
            entry.update(ended)
            entry["status"] = OUTCOME_STATUS[ended["outcome"]].value
        attempts.append(entry)
    return attempts


def _number(path: Path) -> int:
    digits = path.name.split("-", 1)[1].split(".")[0]
    return int(digits) if digits.isdigit() else 0


def _load(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def observe(run: RunDir, record: dict[str, Any]) -> dict[str, Any]:
    """The changes to ``record`` (a Slurm run's) as of now; a final status when it ended."""
    job_id = record["slurm"]["job_id"]
    info = slurmctl.show_job(job_id)
    attempts = read_attempts(run)
    changes: dict[str, Any] = {"attempts": attempts, "attempt": len(attempts) or None}
    if info is not None:
        changes["slurm"] = {**record["slurm"], "state": info.state, "reason": info.reason}
        if not info.is_final:
            status = info.status
            if status is RunStatus.RUNNING and attempts:
                changes["started_at"] = record.get("started_at") or attempts[0]["started_at"]
            changes["status"] = status.value
            return changes
    changes.update(final(run, record, info, attempts))
    return changes


def final(
    run: RunDir,
    record: dict[str, Any],
    info: slurmctl.JobInfo | None,
    attempts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The ending of a job that Slurm reports as ended (or no longer knows)."""
    last = attempts[-1] if attempts else {}
    world_size = int(record.get("world_size") or 1)
    exits = read_rank_exits(run.logs)
    ended = {
        "ended_at": last.get("ended_at") or now_iso(),
        "exit_code": last.get("exit_code"),
        "ranks": {str(rank): exits.get(rank) for rank in range(world_size)},
    }
    if attempts:
        ended["started_at"] = record.get("started_at") or attempts[0]["started_at"]
    outcome = last.get("outcome")
    state = info.state if info is not None else None
    if state == "CANCELLED" or (outcome == "terminated" and state != "PREEMPTED"):
        message = "canceled by request" if record.get("cancel_requested") else "canceled"
        error = {
            "reason": "canceled",
            "message": f"{message} (Slurm job {record['slurm']['job_id']})",
        }
        return {**ended, "status": RunStatus.CANCELED.value, "error": error}
    if outcome == "completed":
        return {**ended, "status": RunStatus.COMPLETED.value, "error": None}
    if outcome == "timeout":
        message = f"{last.get('detail') or 'time limit'}; requeued {len(attempts) - 1} time(s)"
        error = {"reason": "timeout", "message": message}
        return {**ended, "status": RunStatus.TIMED_OUT.value, "error": error}
    if outcome == "preempted":
        message = f"preempted by Slurm; requeued {len(attempts) - 1} time(s)"
        return {
            **ended,
            "status": RunStatus.FAILED.value,
            "error": {"reason": "preempted", "message": message},
        }
    if outcome == "failed":
        result = judge(run.logs, world_size, int(last.get("exit_code") or 1), None)
        return {
            **ended,
            "status": result.status.value,
            "ranks": result.ranks,
            "error": result.error,
        }
    # No end record: Slurm stopped the job script itself (time limit, node failure, ...).
    status = slurmctl.FINAL_STATES.get(state or "", RunStatus.FAILED)
    reason = (state or "unknown").lower()
    message = (
        f"Slurm ended job {record['slurm']['job_id']} as {state}"
        if state
        else f"Slurm no longer knows job {record['slurm']['job_id']} and it left no end record"
    )
    return {**ended, "status": status.value, "error": {"reason": reason, "message": message}}


def refresh(run: RunDir) -> dict[str, Any]:
    """Bring a Slurm run's record up to date (for readers when no watcher is left)."""
    record = run.read()
    if RunStatus(record["status"]).is_terminal or "job_id" not in (record.get("slurm") or {}):
        return record
    try:
        changes = observe(run, record)
    except slurmctl.SlurmError:
        return record  # Slurm is not reachable now: show the record as it stands
    return run.update(**changes)
