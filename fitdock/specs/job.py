"""``JobSpec``: everything a launcher needs, validated and frozen. Pure data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fitdock.environments.spec import Environment
from fitdock.specs.compute import ComputeTarget
from fitdock.specs.distribution import Distribution


def script_params_to_argv(params: Mapping[str, Any] | Sequence[Any] | None) -> list[str]:
    """Azure's ``script_params`` as argv, never through a shell.

    ``{"--lr": 0.1, "--epochs": 3}`` -> ``["--lr", "0.1", "--epochs", "3"]``;
    ``True`` -> the bare flag; ``False``/``None`` -> left out; a list repeats the
    flag for each item. A list or tuple is taken as argv already.
    """
    if params is None:
        return []
    if isinstance(params, str):
        raise TypeError("script_params must be a dict such as {'--lr': 0.1} or a list of arguments")
    if not isinstance(params, Mapping):
        return [_text(value) for value in params]
    argv: list[str] = []
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"script_params keys must be non-empty strings, got {key!r}")
        if value is True:
            argv.append(key)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [key, _text(item)]
        else:
            argv += [key, _text(value)]
    return argv


def _text(value: Any) -> str:
    if isinstance(value, (dict, set)):
        raise TypeError(f"script_params values must be scalars or lists, got {value!r}")
    return str(value)


class SnapshotLimits(BaseModel):
    """Azure's limits by default: 300 MB and 2,000 files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_size_mb: float = Field(default=300, gt=0)
    max_files: int = Field(default=2000, ge=1)


class JobSpec(BaseModel):
    """A job as the targets see it (the job's variables are the environment's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    framework: str
    framework_version: str
    source_directory: Path
    entry_script: str
    arguments: tuple[str, ...] = ()
    node_count: int = Field(default=1, ge=1)
    process_count_per_node: int = Field(default=1, ge=1)
    distribution: Distribution | None = None
    compute_target: ComputeTarget = "local"
    use_docker: bool | None = None
    use_gpu: bool = False
    environment: Environment
    # Variables of this job alone, not of its environment (no rebuild when they change):
    # a pipeline step's AML_PARAMETER_* values
    variables: dict[str, str] = Field(default_factory=dict)
    inputs: dict[str, Path] = Field(default_factory=dict)
    resume_from: str | None = None
    max_run_duration_seconds: float | None = Field(default=None, gt=0)
    termination_grace_seconds: float = Field(default=30.0, ge=0)
    hang_timeout_seconds: float | None = Field(default=None, gt=0)
    max_restarts: int = Field(default=0, ge=0)
    snapshot: SnapshotLimits = Field(default_factory=SnapshotLimits)

    @property
    def world_size(self) -> int:
        return self.node_count * self.process_count_per_node
