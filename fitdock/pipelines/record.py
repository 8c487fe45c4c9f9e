"""A pipeline run's record: ``$FITDOCK_HOME/pipelines/<pipeline run id>/pipeline.json``.

The definition (steps, what each depends on), the parameters, and each step's state,
run id, reuse key, what it reused and why it ran; written atomically at every change.
Step runs are ordinary runs under ``runs/`` whose record names this one (``parent_id``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fitdock.runs.status import RunStatus
from fitdock.shared import fitdock_home, read_json, write_json_atomic

RECORD = "pipeline.json"
LOCK = "scheduler.lock"  # held by the scheduler while it lives
CANCEL = "cancel"  # present when a cancel was asked from another process


class StepState(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    kind: str
    status: RunStatus = RunStatus.NOT_STARTED
    depends_on: list[str] = Field(default_factory=list)
    run_id: str | None = None  # the run that ran it, or the one it reused
    reused: bool = False
    key: str | None = None
    explain: str | None = None  # why it ran, or what it reused
    started_at: str | None = None
    ended_at: str | None = None
    error: dict[str, Any] | None = None
    outputs: dict[str, str] = Field(default_factory=dict)  # PipelineData name -> path
    output_hashes: dict[str, str] = Field(default_factory=dict)  # name -> content hash
    outcome: bool | None = None  # a condition step's value
    branches: dict[str, list[str]] = Field(default_factory=dict)  # a condition's if/else steps


class PipelineRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str
    name: str
    experiment_name: str | None = None
    description: str | None = None
    status: RunStatus = RunStatus.RUNNING
    created_at: str
    ended_at: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    steps: dict[str, StepState] = Field(default_factory=dict)
    order: list[str] = Field(default_factory=list)  # the steps, each after what it needs
    error: dict[str, Any] | None = None

    def ordered(self) -> list[StepState]:
        """The steps' states, each after the steps it depends on."""
        return [self.steps[name] for name in self.order]


def pipelines_root() -> Path:
    return fitdock_home() / "pipelines"


def folder(run_id: str) -> Path:
    """``pipelines/<id>``; an id that is not one folder name (``..``, a path) is refused."""
    from fitdock.runs.names import run_id_problem

    problem = run_id_problem(run_id)
    if problem is not None:
        from fitdock.errors import RunNotFoundError

        raise RunNotFoundError(str(run_id), str(pipelines_root()), reason=problem)
    return pipelines_root() / run_id


def read(run_id: str) -> PipelineRecord:
    data = read_json(folder(run_id) / RECORD)
    if not data:
        from fitdock.errors import RunNotFoundError

        raise RunNotFoundError(run_id, str(pipelines_root()))
    return PipelineRecord.model_validate(data)


def write(record: PipelineRecord, fsync: bool = True) -> None:
    """Atomically (a reader never sees half a file); ``fsync`` for the states that must
    survive a power loss (the first and the last)."""
    path = folder(record.id)
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / RECORD, record.model_dump(mode="json"), fsync=fsync)


def list_ids() -> list[str]:
    root = pipelines_root()
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / RECORD).is_file()]
    return [
        p.name for p in sorted(found, key=lambda p: read_json(p / RECORD).get("created_at", ""))
    ]
