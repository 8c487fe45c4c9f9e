"""What the job side and the supervising side share: one vocabulary of attempt outcomes,
the restart and requeue decisions, and the run folder's job-side files.

Stdlib only, and importable two ways: as ``fitdock.jobside.common`` by the supervisor,
and as ``common`` by ``slurmjob.py``, which runs as a copied script (``<run>/slurm/``)
under an interpreter that may hold no fitdock. So nothing here imports fitdock.

* ``Outcome``: how an attempt ended, in both places (values are what run.json and the
  Slurm attempt records hold on disk).
* ``decide`` (the supervisor's restarts) and ``decide_requeue`` (the Slurm job's
  requeues): pure decisions, tested without processes.
* The job-side files: rank exit records, archiving an attempt's logs, the read-only
  copy of the latest checkpoint, the clock and atomic JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import json
import os
import shutil
import stat
import sys
import tempfile

# Names in the run folder that the job side writes or reads (runs/layout.py names the rest)
LOGS, CHECKPOINTS, RESUME, SLURM = "logs", "checkpoints", "resume", "slurm"
LAUNCHER_LOG = "launcher.log"
ATTEMPT_LOGS = "attempt-{n}"  # logs/attempt-<n>/: an earlier attempt's logs
RANK_EXIT = "rank_{rank}.exit.json"  # written by the rank wrapper (jobtree.py) as it ends
RANK_WORLD = "rank_{rank}.world.json"  # written by the world-size guard (worldguard.py)


class Outcome(str, enum.Enum):
    """How an attempt ended. ``FAILED`` is the job side's word for a non-zero exit, before
    the judge says whether a rank or the launcher failed; ``TERMINATED`` is a SIGTERM from
    the scheduler (``scancel``), ``PREEMPTED`` one that made room for another job."""

    COMPLETED = "completed"
    RANK_FAILED = "rank_failed"
    LAUNCHER_FAILED = "launcher_failed"
    FAILED = "failed"
    HUNG = "hung"
    TIMED_OUT = "timeout"
    CANCELED = "canceled"
    TERMINATED = "terminated"
    PREEMPTED = "preempted"


class Decision(str, enum.Enum):
    RESTART = "restart"
    STOP = "stop"


RESTARTABLE = frozenset(
    {Outcome.RANK_FAILED, Outcome.LAUNCHER_FAILED, Outcome.FAILED, Outcome.HUNG, Outcome.TIMED_OUT}
)


def decide(outcome: Outcome, attempts: int, max_restarts: int) -> Decision:
    """Whether the supervisor starts another attempt. ``attempts``: how many have run so
    far, this one included (>= 1). Only failures that another attempt can fix restart: a
    failed rank or launcher, a hang, a time-out (the limit is per attempt, as with a
    scheduler's requeue). A completed or canceled run never restarts."""
    if attempts < 1 or max_restarts < 0:
        raise ValueError("attempts must be >= 1 and max_restarts >= 0")
    if outcome in RESTARTABLE and attempts <= max_restarts:
        return Decision.RESTART
    return Decision.STOP


def decide_requeue(
    outcome: Outcome, attempt: int, requeues: int, max_requeues: int, max_restarts: int
) -> bool:
    """Whether a Slurm job requeues itself after an attempt. ``requeues``: how often Slurm
    has started the job again already (preemptions included). A time-out or a preemption
    requeues while ``requeues < max_requeues``; a failure also needs ``decide`` to restart
    (``attempt <= max_restarts``). A terminated job ends."""
    if requeues >= max_requeues:
        return False
    if outcome in (Outcome.TIMED_OUT, Outcome.PREEMPTED):
        return True
    return outcome is Outcome.FAILED and decide(outcome, attempt, max_restarts) is Decision.RESTART


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def now_iso() -> str:
    """The time now, UTC, ISO 8601 to the millisecond (every timestamp in a run record)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def write_json_atomic(path: str | os.PathLike[str], data: object, fsync: bool = True) -> None:
    """Write to a temporary file in the same folder, then rename it over ``path``: a reader
    (or a crash) never sees half a file. ``fsync`` first, unless the caller does not need
    the file to survive a power loss."""
    folder, name = os.path.split(os.fspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder or ".", prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike[str]) -> dict:  # type: ignore[type-arg]
    """A JSON object from ``path``; {} when it is missing or unreadable (written by a
    process that died, say)."""
    try:
        with open(path) as handle:
            found = json.load(handle)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def read_rank_exits(logs: str | os.PathLike[str]) -> dict[int, dict]:  # type: ignore[type-arg]
    """The exit records the rank wrappers wrote (``rank_<r>.exit.json``), by rank."""
    exits = {}
    for name in os.listdir(logs):
        if name.startswith("rank_") and name.endswith(".exit.json"):
            record = read_json(os.path.join(logs, name))
            if "rank" in record:
                exits[int(record["rank"])] = record
    return exits


def archive_logs(logs: str | os.PathLike[str], attempt: int) -> None:
    """Move the files of ``logs/`` (attempt ``attempt``'s) to ``logs/attempt-<attempt>/``."""
    names = [n for n in os.listdir(logs) if os.path.isfile(os.path.join(logs, n))]
    if not names:
        return
    target = os.path.join(logs, ATTEMPT_LOGS.format(n=attempt))
    os.makedirs(target, exist_ok=True)
    for name in names:
        os.replace(os.path.join(logs, name), os.path.join(target, name))


def copy_read_only(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``target`` becomes a copy of ``source`` that the job cannot spoil: files 0444,
    folders 0555. An earlier copy at ``target`` is replaced."""
    if os.path.lexists(target):
        remove_tree(target)
    shutil.copytree(source, target, symlinks=False)
    for folder, _dirs, files in os.walk(target):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


def copy_checkpoint(checkpoints: str | os.PathLike[str], resume: str | os.PathLike[str]) -> bool:
    """``resume/`` becomes a read-only copy of ``checkpoints/``; False when there is none."""
    if not os.path.isdir(checkpoints) or not os.listdir(checkpoints):
        return False
    copy_read_only(checkpoints, resume)
    return True


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a folder, read-only parts (a resume copy) included."""

    def make_writable(func, failed, *_):  # type: ignore[no-untyped-def]
        os.chmod(os.path.dirname(failed), stat.S_IRWXU)
        func(failed)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)
