"""``JobSpec``: everything a launcher needs, validated and frozen. Pure data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from fitdock.environments.spec import Environment
from fitdock.errors import SpecError
from fitdock.specs.base import SpecModel
from fitdock.specs.compute import ComputeTarget
from fitdock.specs.distribution import MAX_NODES, MAX_PROCESSES_PER_NODE, Distribution

# MLflow mirroring: "mlflow" on (to ``tracking_uri``, MLFLOW_TRACKING_URI or the home
# folder's mlflow.db), "off", or None: on when MLFLOW_TRACKING_URI is set
Tracking = Literal["mlflow", "off"]


def script_params_to_argv(params: Mapping[str, Any] | Sequence[Any] | None) -> list[str]:
    """Azure's ``script_params`` as argv, never through a shell.

    ``{"--lr": 0.1, "--epochs": 3}`` -> ``["--lr", "0.1", "--epochs", "3"]``;
    ``True`` -> the bare flag; ``False``/``None`` -> left out; a list repeats the
    flag for each item. A list or tuple is taken as argv already.
    """
    if params is None:
        return []
    if isinstance(params, (str, bytes)) or not isinstance(params, (Mapping, Sequence)):
        raise SpecError(
            "script_params must be a dict such as {'--lr': 0.1} or a list of arguments, "
            f"got {params!r}",
            field="script_params",
        )
    if not isinstance(params, Mapping):
        return [_text(value) for value in params]
    argv: list[str] = []
    for key, value in params.items():
        if not isinstance(key, str) or not key or "\0" in key:
            raise SpecError(
                f"script_params keys must be non-empty strings, got {key!r}", field="script_params"
            )
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
    """One argument, passed as it is (never through a shell); a NUL cannot be passed."""
    if isinstance(value, (dict, set, frozenset, bytes)):
        raise SpecError(
            f"script_params values must be scalars or lists, got {value!r}", field="script_params"
        )
    text = str(value)
    if "\0" in text:
        raise SpecError(
            f"script_params value {text!r} holds a NUL byte, which no program can receive",
            field="script_params",
        )
    return text


class SnapshotLimits(SpecModel):
    """Azure's limits by default: 300 MB and 2,000 files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_size_mb: float = Field(default=300, gt=0)
    max_files: int = Field(default=2000, ge=1)


class JobSpec(SpecModel):
    """A job as the targets see it (the job's variables are the environment's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    framework: str
    framework_version: str
    source_directory: Path
    entry_script: str
    arguments: tuple[str, ...] = ()
    node_count: int = Field(default=1, ge=1, le=MAX_NODES)
    process_count_per_node: int = Field(default=1, ge=1, le=MAX_PROCESSES_PER_NODE)
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
    tracking: Tracking | None = None
    tracking_uri: str | None = None

    @property
    def world_size(self) -> int:
        return self.node_count * self.process_count_per_node
