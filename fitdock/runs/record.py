"""The run record (``run.json``) as typed models.

``RunRecord`` is what ``submit`` writes first and the supervisor (or, for a Slurm run, the
scheduler's description of the job) brings up to date; every change is an assignment to
a typed field, validated, then written atomically (``RunDir.edit``). Readers get the same
shape as JSON (``Run.record``). Records written by earlier versions load: fields added
since have defaults, and error reasons of old spellings map to today's (``RunError``).

    RunRecord
    ├── source: SourceInfo           the snapshot: folder, git commit, files, bytes, how
    │                                placed (Placement), the store key when shared
    ├── resume: ResumeInfo | None    the checkpoint this run started from
    ├── ranks: {rank: RankExit}      how each rank of the last attempt ended
    ├── attempts: [AttemptRecord]    one per attempt (restarts, Slurm requeues)
    ├── error: RunError | None       why it did not complete; reason: ErrorReason
    ├── slurm: ScheduledJob | None   the batch job (slurm target)
    └── tracking: TrackingInfo | None  the run's MLflow mirror, and what it could not send

``write_record`` writes it, and keeps a little space aside for the write that says why a
run failed when its disk filled up.
"""

from __future__ import annotations

import contextlib
import enum
import os
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from fitdock.jobside.common import Outcome
from fitdock.runs.layout import RESERVE
from fitdock.runs.status import RunStatus
from fitdock.shared import NO_SPACE, storage_error, write_json_atomic

RESERVE_BYTES = 256 * 1024  # some 30 records; one is a few kB


class ErrorReason(str, enum.Enum):
    """Why a run (or an attempt) did not complete."""

    CANCELED = "canceled"
    TIMEOUT = "timeout"
    HUNG = "hung"
    RANK_FAILED = "rank_failed"
    RANK_UNREPORTED = "rank_unreported"
    LAUNCHER_FAILED = "launcher_failed"
    WORLD_SIZE_MISMATCH = "world_size_mismatch"  # a rank joined a smaller MPI world
    MPI_MISMATCH = "mpi_mismatch"  # no launcher of the MPI the job loads
    ENVIRONMENT_BUILD = "environment_build"
    PLAN = "plan"
    STAGING = "staging"
    SUBMIT = "submit"  # the scheduler refused the job
    SCHEDULER = "scheduler"  # the scheduler ended the job itself (node failure, ...)
    SCHEDULER_UNREACHABLE = "slurm"
    PREEMPTED = "preempted"
    LOST_SUPERVISOR = "lost_supervisor"
    SUPERVISOR_ERROR = "supervisor_error"
    NO_SPACE = "no_space"  # the run's file system filled up (a log, metrics, a checkpoint)


# Slurm final states that fitdock 0.1 wrote, lowercased, as an error's reason
_OLD_SLURM_REASONS = {
    "failed", "cancelled", "deadline", "node_fail", "boot_fail", "out_of_memory",
    "special_exit", "revoked", "unknown",
}  # fmt: skip
_LOOSE = ConfigDict(extra="allow")  # sub-records of tools outside fitdock's control
_STRICT = ConfigDict(extra="forbid", validate_assignment=True)


class RunError(BaseModel):
    """Why the run did not complete: ``reason`` and a ``message`` that says what to change;
    a failed rank adds which, where, how and its stderr tail."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    reason: ErrorReason
    message: str = ""
    rank: int | None = None
    host: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    stderr_tail: str | None = None
    ranks: list[int] | None = None  # rank_unreported: which
    last_lines: dict[str, str] | None = None  # hung: each rank's last line
    world_size: int | None = None  # world_size_mismatch: the world the rank joined
    expected: int | None = None
    step: str | None = None  # environment_build: the failing build step, and its log
    log: str | None = None
    scheduler_state: str | None = None  # scheduler: the job's final state (e.g. NODE_FAIL)

    @model_serializer(mode="wrap")
    def _without_empty_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only what applies to this reason: ``{"reason": ..., "message": ...}`` and the
        details that were given, as run.json always held them."""
        given = self.model_fields_set | {"reason", "message"}
        return {key: value for key, value in handler(self).items() if key in given}

    @model_validator(mode="before")
    @classmethod
    def _older_spellings(cls, data: Any) -> Any:
        """Earlier versions wrote a Slurm job's final state as the reason itself."""
        if isinstance(data, dict) and data.get("reason") in _OLD_SLURM_REASONS:
            state = str(data["reason"]).upper()
            data = {**data, "reason": ErrorReason.SCHEDULER, "scheduler_state": state}
        return data


class RankExit(BaseModel):
    """How one rank ended, from its wrapper's exit record; a rank whose wrapper was killed
    (after the grace period, or with its container) has none, and says so."""

    model_config = ConfigDict(extra="forbid")

    rank: int
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    host: str | None = None
    started: float | None = None
    ended: float | None = None
    signals_received: list[int] = Field(default_factory=list)
    recorded: bool = True
    note: str | None = None

    @classmethod
    def unrecorded(cls, rank: int, note: str) -> RankExit:
        return cls(rank=rank, recorded=False, note=note)


class AttemptRecord(BaseModel):
    """One attempt: fitdock's own (restarts) or a Slurm job's (requeues)."""

    model_config = _LOOSE  # Slurm attempts add job_id, nodes, batch_host, detail, requeued ...

    attempt: int
    status: RunStatus | None = None
    outcome: Outcome | None = None
    started_at: str | None = None
    ended_at: str | None = None
    exit_code: int | None = None
    error: RunError | None = None


class Placement(str, enum.Enum):
    """How a snapshot's files were placed (``runs/snapshot.py``, ``runs/shared_snapshot.py``)."""

    COPY = "copy"  # copied
    CLONE = "clone"  # reflinked: copy-on-write clones of the source's blocks
    SHARED = "shared"  # an overlay on the store's tree of that content, flattened at the end


class SourceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directory: str
    git_commit: str | None = None
    files: int | None = None
    bytes: int | None = None
    shipped: dict[str, dict[str, int]] = Field(default_factory=dict)
    placement: Placement | None = None  # None: written before fitdock said
    shared: str | None = None  # the store key (cache/snapshots/<key>) of a shared snapshot
    share_error: str | None = None  # why a snapshot meant to be shared was copied instead

    @model_serializer(mode="wrap")
    def _without_unset_placement(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The placement fields only where they say something: a record of an earlier
        version keeps the ``source`` it held."""
        return {
            key: value
            for key, value in handler(self).items()
            if value is not None or key not in _PLACEMENT_FIELDS
        }


_PLACEMENT_FIELDS = frozenset({"placement", "shared", "share_error"})


class ResumeInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str | None = Field(default=None, alias="from")
    source_dir: str | None = None
    dir: str | None = None


class SupervisorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pid: int
    host: str


class ScheduledJob(BaseModel):
    """A job that a scheduler runs (held as `slurm` in run.json: Slurm is the one there is)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    job_id: str
    script: str | None = None
    submit_host: str | None = None
    state: str | None = None
    reason: str | None = None


class MirrorPart(str, enum.Enum):
    """A part of a run that its tracking mirror sends (``execution/tracking.py``)."""

    RUN = "run"  # the MLflow run itself
    PARAMS = "params"
    TAGS = "tags"
    METRICS = "metrics"
    ARTIFACTS = "artifacts"  # outputs/, tables, images
    STATUS = "status"  # the final status and end time


class TrackingInfo(BaseModel):
    """Where a run is mirrored (MLflow), and what the mirror could not send: ``missing``
    names the parts MLflow lacks, ``error`` the last failure; ``fitdock runs sync-mlflow``
    sends them."""

    model_config = _STRICT

    uri: str
    experiment_id: str | None = None
    run_id: str | None = None  # the MLflow run's id
    metrics_logged: int = 0  # numbers in metrics.jsonl (text is not a metric: see skipped)
    metrics_mirrored: int = 0  # of them, taken by the server (or refused: then in skipped)
    metrics_offset: int = 0  # bytes of metrics.jsonl mirrored (a sync starts there)
    skipped: dict[str, int] = Field(default_factory=dict)  # values MLflow cannot hold, by name
    missing: list[MirrorPart] = Field(default_factory=list)
    error: str | None = None
    synced_at: str | None = None

    def describe(self) -> str:
        """One line: where the run is, and what MLflow lacks."""
        where = f"MLflow run {self.run_id or '-'} at {self.uri}"
        if not self.missing:
            return f"{where}: complete ({self.metrics_mirrored} metric values)"
        parts = []
        for part in self.missing:
            if part is MirrorPart.METRICS:
                gap = self.metrics_logged - self.metrics_mirrored
                first = self.metrics_mirrored + 1
                parts.append(f"metrics ({gap} of {self.metrics_logged} values, from #{first})")
            else:
                parts.append(part.value)
        return f"{where}: not mirrored: {', '.join(parts)} ({self.error or 'no error'})"


class RunRecord(BaseModel):
    """``run.json``."""

    model_config = _STRICT

    id: str
    name: str
    status: RunStatus
    parent_id: str | None = None  # the run this one is a step of (a pipeline's)
    created_at: str
    started_at: str | None = None
    ended_at: str | None = None
    fitdock_version: str
    target: str
    spec: dict[str, Any]
    environment_hash: str
    argv: list[str]
    commands: list[list[str]]
    env: dict[str, str]
    cwd: str
    world_size: int
    source: SourceInfo
    resume: ResumeInfo | None = None
    checkpoint_dir: str
    ranks: dict[str, RankExit | None] = Field(default_factory=dict)
    exit_code: int | None = None
    error: RunError | None = None
    supervisor: SupervisorInfo | None = None
    environment_build: dict[str, Any] | None = None  # what the target's prepare() said
    attempts: list[AttemptRecord] = Field(default_factory=list)
    attempt: int | None = None
    reaper_pid: int | None = None
    slurm: ScheduledJob | None = None
    cancel_requested: bool = False
    tags: dict[str, str] = Field(default_factory=dict)  # e.g. the sandbox a script had
    tracking: TrackingInfo | None = None  # the MLflow mirror (execution/tracking.py)

    def as_json(self) -> dict[str, Any]:
        """The record as ``run.json`` holds it (and ``Run.record`` returns it)."""
        return self.model_dump(mode="json", by_alias=True)


def write_record(path: Path, record: RunRecord) -> None:
    """Write ``run.json`` atomically (a reader, or a crash, never sees half of it).

    While the run lives, ``RESERVE_BYTES`` are set aside beside it (``.space-reserve``):
    a write that meets a full disk gives half of what is left back and tries again, so
    the records that say why the run failed (its disk filled up, most often) are still
    written while a job goes on filling the disk. The end state gives it all back. A
    write that fails even so raises ``StorageError``."""
    reserve = path.with_name(RESERVE)
    data = record.as_json()
    while True:
        try:
            write_json_atomic(path, data)
            break
        except OSError as exc:
            if exc.errno not in NO_SPACE or not _give_back(reserve):
                raise storage_error(exc, path) from exc
    if record.status.is_terminal:
        reserve.unlink(missing_ok=True)
    elif not reserve.exists():
        _set_aside(reserve)


def _give_back(reserve: Path) -> bool:
    """Free half of the reserve (all of its last 4 KiB); False when none is left."""
    try:
        size = reserve.stat().st_size
        if size <= 4096:
            reserve.unlink()
        else:
            os.truncate(reserve, size // 2)
    except OSError:
        return False
    return True


def _set_aside(reserve: Path) -> None:
    """Allocate the reserve's blocks (not a sparse file); nothing when there is no room."""
    try:
        fd = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, RESERVE_BYTES)
    except OSError:
        with contextlib.suppress(OSError):
            reserve.unlink()
    finally:
        os.close(fd)
