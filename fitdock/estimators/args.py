"""Validation of estimator arguments (Azure ML SDK v1 names) into one pydantic model."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fitdock.environments.spec import (
    Environment,
    check_conda_spec,
    check_image,
    check_pip_spec,
    check_variables,
)
from fitdock.errors import SpecError
from fitdock.runs.names import MAX_NAME, is_folder_name, is_word
from fitdock.specs.compute import ComputeTarget
from fitdock.specs.distribution import (
    MAX_NODES,
    MAX_PROCESSES_PER_NODE,
    Distribution,
    Horovod,
    Mpi,
    PyTorchConfiguration,
)
from fitdock.specs.job import Tracking

# Deprecated Azure names -> their replacements.
DEPRECATED = {
    "custom_docker_base_image": "custom_docker_image",
    "conda_dependencies_file_path": "conda_dependencies_file",
    "pip_requirements_file_path": "pip_requirements_file",
}
# Accepted for Azure compatibility; they describe cloud resources a local target has none of.
CLOUD_ONLY = ("vm_size", "vm_priority", "source_directory_data_store", "image_registry_details")
# Arguments that environment_definition replaces (Azure: "invalid combinations are errors").
ENV_DEFINITION_CONFLICTS = (
    "conda_packages",
    "pip_packages",
    "custom_docker_image",
    "conda_dependencies_file",
    "pip_requirements_file",
    "user_managed",
    "use_gpu",
)


class EstimatorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    source_directory: Path
    entry_script: str
    compute_target: ComputeTarget = "local"
    script_params: dict[str, Any] | list[Any] | None = None
    node_count: int = Field(default=1, ge=1, le=MAX_NODES)
    process_count_per_node: int = Field(default=1, ge=1, le=MAX_PROCESSES_PER_NODE)
    distributed_training: Distribution | None = None
    use_gpu: bool = False
    use_docker: bool | None = None
    custom_docker_image: str | None = None
    user_managed: bool = False
    conda_packages: list[str] | None = None
    pip_packages: list[str] | None = None
    conda_dependencies_file: Path | None = None
    pip_requirements_file: Path | None = None
    environment_variables: dict[str, str] | None = None
    environment_definition: Environment | None = None
    inputs: dict[str, Path] | None = None
    shm_size: str | None = Field(default=None, pattern=r"^[1-9][0-9]*[bkmgBKMG]?$")
    resume_from: str | None = None
    max_run_duration_seconds: float | None = Field(default=None, gt=0)
    termination_grace_seconds: float = Field(default=30.0, ge=0)
    hang_timeout_seconds: float | None = Field(default=None, gt=0)
    max_restarts: int = Field(default=0, ge=0)
    framework_version: str | None = None
    max_snapshot_size_mb: float = Field(default=300, gt=0)
    max_snapshot_files: int = Field(default=2000, ge=1)
    experiment_name: str | None = None
    tracking: Tracking | None = None
    tracking_uri: str | None = Field(default=None, min_length=1, pattern=r"^[^\s]+$")

    @field_validator("experiment_name")
    @classmethod
    def _experiment_name(cls, value: str | None) -> str | None:
        if value is not None and not is_folder_name(value):
            raise ValueError(
                f"use 1 to {MAX_NAME} letters, digits, '_', '-' and '.', starting with a "
                "letter or digit (it names run folders)"
            )
        return value

    @field_validator("custom_docker_image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return None if value is None else check_image(value)

    @field_validator("pip_packages")
    @classmethod
    def _pip_specs(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [check_pip_spec(spec) for spec in value]

    @field_validator("conda_packages")
    @classmethod
    def _conda_specs(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [check_conda_spec(spec) for spec in value]

    @field_validator("source_directory")
    @classmethod
    def _source_exists(cls, value: Path) -> Path:
        path = value.expanduser().resolve()
        if not path.is_dir():
            raise ValueError(f"{value} is not a directory; pass the folder that holds your script")
        return path

    @field_validator("entry_script")
    @classmethod
    def _entry_relative(cls, value: str) -> str:
        if not value.strip() or "\0" in value:
            raise ValueError("must name the script to run, e.g. entry_script='train.py'")
        return value

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs_named(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            value = {Path(str(p)).name.replace("-", "_").replace(".", "_"): p for p in value}
        if isinstance(value, dict):
            for name, path in value.items():
                if not is_word(name):
                    raise ValueError(
                        f"input name {name!r} must be a valid identifier such as 'train' "
                        f"(up to {MAX_NAME} letters, digits and '_': it names a folder)"
                    )
                if not Path(str(path)).expanduser().exists():
                    raise ValueError(f"input {name!r}: {path} does not exist")
            return {name: Path(str(path)).expanduser().resolve() for name, path in value.items()}
        return value

    @field_validator("environment_variables", mode="before")
    @classmethod
    def _vars_text(cls, value: Any) -> Any:
        return check_variables(value)


def validate_args(owner: str, raw: dict[str, Any]) -> EstimatorArgs:
    """Map deprecated names, warn about cloud-only ones, validate, check combinations."""
    raw = _map_deprecated(owner, raw)
    for name in CLOUD_ONLY:
        if raw.pop(name, None) is not None:
            warnings.warn(
                f"{owner}: {name} describes a cloud resource and is ignored",
                UserWarning,
                stacklevel=3,
            )
    raw = _map_distributed_backend(owner, raw)
    resume = raw.get("resume_from")
    if resume is not None and not isinstance(resume, (str, Path)):
        raw["resume_from"] = getattr(resume, "id", resume)  # a Run
    if isinstance(raw.get("resume_from"), Path):
        raw["resume_from"] = str(raw["resume_from"])
    try:
        args = EstimatorArgs(**{k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        raise spec_error(owner, exc) from None
    _check_combinations(owner, raw, args)
    return args


def _map_deprecated(owner: str, raw: dict[str, Any]) -> dict[str, Any]:
    raw = dict(raw)
    for old, new in DEPRECATED.items():
        value = raw.pop(old, None)
        if value is None:
            continue
        warnings.warn(f"{owner}: {old} is deprecated; use {new}", DeprecationWarning, stacklevel=4)
        if raw.get(new) is not None:
            raise SpecError(f"{owner}: give {new} or the deprecated {old}, not both", field=old)
        raw[new] = value
    return raw


def _map_distributed_backend(owner: str, raw: dict[str, Any]) -> dict[str, Any]:
    backend = raw.pop("distributed_backend", None)
    if backend is None:
        return raw
    warnings.warn(
        f"{owner}: distributed_backend is deprecated; use distributed_training=Mpi()",
        DeprecationWarning,
        stacklevel=4,
    )
    if str(backend).lower() != "mpi":
        raise SpecError(
            f"{owner}: distributed_backend={backend!r} is not supported; the only value is 'mpi' "
            "(or pass distributed_training=Mpi())",
            field="distributed_backend",
        )
    if raw.get("distributed_training") is not None:
        raise SpecError(
            f"{owner}: give distributed_training or the deprecated distributed_backend, not both",
            field="distributed_backend",
        )
    raw["distributed_training"] = Mpi()
    return raw


def _check_combinations(owner: str, raw: dict[str, Any], args: EstimatorArgs) -> None:
    script = (args.source_directory / args.entry_script).resolve()
    if not script.is_file():
        raise SpecError(
            f"{owner}: entry_script {args.entry_script!r} is not a file in {args.source_directory}",
            field="entry_script",
        )
    if not script.is_relative_to(args.source_directory):
        raise SpecError(
            f"{owner}: entry_script must be inside source_directory", field="entry_script"
        )
    if args.environment_definition is not None:
        clashes = [
            name for name in ENV_DEFINITION_CONFLICTS if raw.get(name) not in (None, False, [])
        ]
        if clashes:
            raise SpecError(
                f"{owner}: environment_definition already defines the environment; drop "
                + ", ".join(clashes)
                + " or put them into the Environment",
                field=clashes[0],
            )
    _check_counts(owner, raw, args)
    processes = node_count(args) * per_node(args)
    if processes > 1 and args.distributed_training is None:
        raise SpecError(
            f"{owner}: node_count={node_count(args)} x process_count_per_node={per_node(args)} "
            "is a distributed job; pass distributed_training=Mpi() or PyTorchConfiguration()",
            field="distributed_training",
        )


def _check_counts(owner: str, raw: dict[str, Any], args: EstimatorArgs) -> None:
    """Counts given both on the estimator and in the distribution must agree."""
    config = args.distributed_training
    given_ppn = raw.get("process_count_per_node")
    given_nodes = raw.get("node_count")
    mpi_ppn = config.process_count_per_node if isinstance(config, (Mpi, Horovod)) else None
    if mpi_ppn not in (None, given_ppn) and given_ppn not in (None, 1):
        raise SpecError(
            f"{owner}: process_count_per_node={given_ppn} disagrees with "
            f"{type(config).__name__}(process_count_per_node={mpi_ppn}); give it once",
            field="process_count_per_node",
        )
    if isinstance(config, PyTorchConfiguration):
        nodes = node_count(args)
        if config.node_count not in (None, given_nodes) and given_nodes not in (None, 1):
            raise SpecError(
                f"{owner}: node_count={given_nodes} disagrees with "
                f"PyTorchConfiguration(node_count={config.node_count}); give it once",
                field="node_count",
            )
        if config.process_count is not None and config.process_count % nodes:
            raise SpecError(
                f"{owner}: PyTorchConfiguration(process_count={config.process_count}) does not "
                f"split evenly over {nodes} nodes; use a multiple of {nodes}",
                field="distributed_training",
            )


def node_count(args: EstimatorArgs) -> int:
    config = args.distributed_training
    if isinstance(config, PyTorchConfiguration) and config.node_count is not None:
        return config.node_count
    return args.node_count


def per_node(args: EstimatorArgs) -> int:
    config = args.distributed_training
    if isinstance(config, (Mpi, Horovod)) and config.process_count_per_node is not None:
        return config.process_count_per_node
    if isinstance(config, PyTorchConfiguration) and config.process_count is not None:
        return config.process_count // node_count(args)
    return args.process_count_per_node


def spec_error(owner: str, exc: ValidationError) -> SpecError:
    """A pydantic error as a ``SpecError`` naming every wrong field and what it got."""
    return SpecError.from_pydantic(owner, exc)
