"""``@step``: Python functions as pipeline steps (SageMaker's names and meaning).

Calling a decorated function runs nothing: it returns a ``DelayedReturn`` for a new
``FunctionStep``. At submission the function and its arguments are pickled (cloudpickle),
signed, and stored (``build.py``); the step then runs as an ordinary fitdock run whose
script is the job-side runner ``jobside/stepfn.py``, on any target, with the usual
supervision: ``max_runtime_in_seconds`` is its time limit and ``max_retry_attempts - 1``
its restarts.
"""

from __future__ import annotations

import functools
import inspect
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from fitdock.environments.spec import Environment, check_variables
from fitdock.errors import SpecError
from fitdock.estimators.args import spec_error
from fitdock.estimators.base import Estimator
from fitdock.pipelines.data import InputData, PipelineData, PipelineParameter
from fitdock.pipelines.delayed import DelayedReturn, references
from fitdock.pipelines.steps import Resolver, Step, StepContext
from fitdock.specs.compute import ComputeTarget
from fitdock.specs.job import JobSpec

RUNNER = "fitdock_step.py"  # the job-side runner, copied into each step's build folder
# SageMaker arguments that only mean something on AWS: accepted with one warning.
AWS_ONLY = (
    "instance_type", "keep_alive_period_in_seconds", "use_spot_instances", "role", "subnets",
    "security_group_ids", "tags", "volume_kms_key", "volume_size", "max_wait_time_in_seconds",
    "encrypt_inter_container_traffic", "spark_config", "job_conda_env", "job_name_prefix",
    "retry_policies",
)  # fmt: skip


class CacheConfig:
    """SageMaker's ``CacheConfig``: ``enable_caching`` opts the step into the reuse cache;
    an entry older than ``expire_after`` (an ISO 8601 duration such as ``"P30D"`` or
    ``"PT12H"``) is not reused."""

    def __init__(self, enable_caching: bool = False, expire_after: str | None = None) -> None:
        if not isinstance(enable_caching, bool):
            raise SpecError(
                f"CacheConfig: enable_caching must be True or False, got {enable_caching!r}",
                field="enable_caching",
            )
        self.enable_caching = enable_caching
        self.expire_after = expire_after
        self.max_age: timedelta | None = None
        if expire_after is not None:
            try:
                self.max_age = TypeAdapter(timedelta).validate_python(expire_after)
            except ValidationError:
                raise SpecError(
                    f"CacheConfig: expire_after {expire_after!r} is not an ISO 8601 duration "
                    "(e.g. 'P30D' for 30 days, 'PT1H' for an hour)",
                    field="expire_after",
                ) from None

    def __repr__(self) -> str:
        return (
            f"CacheConfig(enable_caching={self.enable_caching}, expire_after={self.expire_after!r})"
        )


class StepOptions(BaseModel):
    """The options of ``@step(...)``, validated."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str | None = None
    display_name: str | None = None
    description: str | None = None
    dependencies: Path | None = None
    pre_execution_commands: list[str] = Field(default_factory=list)
    pre_execution_script: Path | None = None
    environment_variables: dict[str, str] = Field(default_factory=dict)
    image_uri: str | None = None
    max_retry_attempts: int = Field(default=1, ge=1)
    max_runtime_in_seconds: float = Field(default=86400, gt=0)
    cache_config: CacheConfig | None = None
    environment: Environment | None = None
    compute_target: ComputeTarget | None = None
    use_gpu: bool = False
    instance_count: int = 1

    @field_validator("dependencies", "pre_execution_script")
    @classmethod
    def _a_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            value = value.expanduser().resolve()
            if not value.is_file():
                raise ValueError(f"{value} is not a file")
        return value

    @field_validator("environment_variables", mode="before")
    @classmethod
    def _variables(cls, value: Any) -> Any:
        return check_variables(value)

    @field_validator("instance_count")
    @classmethod
    def _one(cls, value: int) -> int:
        if value != 1:
            raise ValueError("a @step function runs on one instance (as in SageMaker)")
        return value


def step(_func: Callable[..., Any] | None = None, **options: Any) -> Any:
    """``@step`` or ``@step(name=..., dependencies=..., ...)``: the function's calls return
    ``DelayedReturn`` s for new pipeline steps instead of running."""
    ignored = sorted(name for name in options if name in AWS_ONLY)
    if ignored:
        warnings.warn(
            f"@step: {', '.join(ignored)} only mean something on AWS; fitdock ignores them",
            UserWarning,
            stacklevel=2,
        )
    kept = {k: v for k, v in options.items() if k not in AWS_ONLY}
    try:
        checked = StepOptions(**kept)
    except ValidationError as exc:
        raise spec_error("@step", exc) from None

    def decorate(func: Callable[..., Any]) -> Callable[..., DelayedReturn]:
        if not callable(func):
            raise SpecError(f"@step decorates a function, got {func!r}", field="func")

        @functools.wraps(func)
        def delayed(*args: Any, **kwargs: Any) -> DelayedReturn:
            try:
                inspect.signature(func).bind(*args, **kwargs)
            except TypeError as exc:
                raise SpecError(f"{func.__qualname__}(): {exc}", field="arguments") from None
            return DelayedReturn(FunctionStep(func, args, kwargs, checked))

        delayed.__wrapped__ = func  # type: ignore[attr-defined]
        return delayed

    return decorate(_func) if _func is not None else decorate


class FunctionStep(Step):
    """One call of a ``@step`` function: the function, its arguments and its options."""

    kind: ClassVar[str] = "function"
    reuse_switch: ClassVar[str] = "cache_config=CacheConfig(enable_caching=True)"

    def __init__(
        self,
        func: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: StepOptions,
    ) -> None:
        super().__init__(
            options.name or func.__name__, inputs=None, outputs=None, arguments=None,
            compute_target=options.compute_target, allow_reuse=_caching(options),
            version=None, runconfig_pipeline_params=None,
        )  # fmt: skip
        self.func = func
        self.args = tuple(args)
        self.kwargs = dict(kwargs)
        self.options = options
        self.display_name = options.display_name
        self.description = options.description or inspect.getdoc(func)
        self.returns_sequence = _returns_sequence(func)

    @property
    def function_name(self) -> str:
        return f"{getattr(self.func, '__module__', '?')}.{self.func.__qualname__}"

    def values(self) -> list[Any]:
        return [*self.args, *self.kwargs.values()]

    def references(self) -> list[DelayedReturn]:
        return [*references(self.values()), *super().references()]

    def reads(self) -> list[PipelineData | InputData]:
        found: list[PipelineData | InputData] = []
        for value in _flat(self.values()):
            if isinstance(value, (PipelineData, InputData)) and not any(value is f for f in found):
                found.append(value)
        return found

    def parameters(self) -> list[PipelineParameter]:
        return [value for value in _flat(self.values()) if isinstance(value, PipelineParameter)]

    def job_spec(self, resolve: Resolver, context: StepContext | None = None) -> JobSpec:
        options = self.options
        build = context.build if context is not None else Path(".")
        dependencies = options.dependencies
        conda = dependencies is not None and dependencies.suffix in (".yml", ".yaml")
        estimator = Estimator(
            build,
            entry_script=RUNNER,
            user_managed=options.environment is None and dependencies is None,
            environment_definition=options.environment,
            pip_requirements_file=dependencies if dependencies and not conda else None,
            conda_dependencies_file=dependencies if conda else None,
            custom_docker_image=options.image_uri,
            use_docker=True if options.image_uri else None,
            environment_variables=options.environment_variables,
            use_gpu=options.use_gpu,
            max_run_duration_seconds=options.max_runtime_in_seconds,
            max_restarts=options.max_retry_attempts - 1,
            compute_target=options.compute_target or "local",
        )
        variables = dict(context.variables) if context is not None else {}
        spec = self._finish(estimator.job_spec, resolve, variables)
        if context is not None and context.inputs:
            spec = spec.model_copy(update={"inputs": {**spec.inputs, **context.inputs}})
        return spec


def _caching(options: StepOptions) -> bool:
    return bool(options.cache_config and options.cache_config.enable_caching)


def _flat(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [item for v in value.values() for item in _flat(v)]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [item for v in value for item in _flat(v)]
    return [value]


def _returns_sequence(func: Callable[..., Any]) -> bool:
    """Whether ``func`` is annotated to return a tuple or list (then only int indexes)."""
    try:
        hint = typing.get_type_hints(func).get("return")
    except Exception:  # annotations that do not evaluate here: no constraint
        return False
    origin = typing.get_origin(hint) or hint
    return origin in (tuple, list)
