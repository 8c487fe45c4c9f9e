"""Pipeline steps with Azure ML SDK v1's names and arguments: ``PythonScriptStep``,
``EstimatorStep``, ``RunConfiguration`` and ``StepSequence``.

A step is a description. ``Step.job_spec(resolve)`` turns it into an ordinary
``JobSpec`` once the pipeline knows the values of its parameters and where its data
lives: the step then runs through the same submit path as any ``fit()``, on any target.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fitdock.environments.spec import Environment
from fitdock.errors import SpecError
from fitdock.estimators.base import Estimator
from fitdock.pipelines.data import InputData, PipelineData, PipelineParameter, as_input
from fitdock.pipelines.delayed import DelayedReturn, references
from fitdock.specs.job import JobSpec

PIPELINE_PARAMS = {"NodeCount": "node_count", "MpiProcessCountPerNode": "process_count_per_node"}
Resolver = Callable[[Any], Any]  # a PipelineParameter -> its value, data -> its path


@dataclass
class StepContext:
    """What the scheduler prepared for one step of one execution: a function step's build
    folder (its payloads and runner), variables and extra read-only inputs."""

    build: Path
    variables: dict[str, str] = dataclasses.field(default_factory=dict)
    inputs: dict[str, Path] = dataclasses.field(default_factory=dict)


class RunConfiguration:
    """The settings of a script step (Azure's ``RunConfiguration``, the part fitdock runs):
    its environment (None: the interpreter running fitdock, as it is), ranks, time limit,
    variables, Docker and its compute target."""

    def __init__(
        self,
        environment: Environment | None = None,
        node_count: int = 1,
        process_count_per_node: int = 1,
        distributed_training: Any = None,
        max_run_duration_seconds: float | None = None,
        environment_variables: Mapping[str, Any] | None = None,
        use_docker: bool | None = None,
        shm_size: str | None = None,
        target: Any = None,
    ) -> None:
        self.environment = environment
        self.node_count = node_count
        self.process_count_per_node = process_count_per_node
        self.distributed_training = distributed_training
        self.max_run_duration_seconds = max_run_duration_seconds
        self.environment_variables = dict(environment_variables or {})
        self.use_docker = use_docker
        self.shm_size = shm_size
        self.target = target


class Step:
    """What every step has: a name, the data it reads and writes, the steps it runs after,
    whether it may be reused, and a version that is part of its reuse key."""

    kind: ClassVar[str]
    runs_job: ClassVar[bool] = True  # False: decided by the scheduler itself (conditions, fail)
    reuse_switch: ClassVar[str] = "allow_reuse=True"

    def __init__(
        self,
        name: str,
        *,
        inputs: Sequence[Any] | None,
        outputs: Sequence[PipelineData] | None,
        arguments: Sequence[Any] | None,
        compute_target: Any,
        allow_reuse: bool,
        version: str | None,
        runconfig_pipeline_params: Mapping[str, PipelineParameter] | None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise SpecError(f"a step needs a name, got {name!r}", field="name")
        self.name = name
        self.inputs = [as_input(item) for item in inputs or ()]
        self.outputs = list(outputs or ())
        for data in self.outputs:
            if not isinstance(data, PipelineData):
                raise SpecError(
                    f"step {name!r}: output {data!r} is not a PipelineData", field="outputs"
                )
            data.producers.append(self)  # more than one is an error (Pipeline.validate)
        self.arguments = list(arguments or ())
        for value in self.arguments:  # literal text reaches argv as it is: no NUL there
            if isinstance(value, (str, Path)) and "\0" in str(value):
                raise SpecError(
                    f"step {name!r}: arguments: {str(value)!r} holds a NUL character, which "
                    "no command line can carry",
                    field="arguments",
                )
        self.compute_target = compute_target
        self.allow_reuse = allow_reuse
        self.version = version
        unknown = set(runconfig_pipeline_params or {}) - set(PIPELINE_PARAMS)
        if unknown:
            raise SpecError(
                f"step {name!r}: runconfig_pipeline_params {sorted(unknown)} are not among "
                f"{sorted(PIPELINE_PARAMS)}",
                field="runconfig_pipeline_params",
            )
        self.runconfig_pipeline_params = dict(runconfig_pipeline_params or {})
        self.after: list[Step] = []

    def run_after(self, step: Step) -> None:
        """Run this step only once ``step`` has completed (an order without data)."""
        self.after.append(step)

    def add_depends_on(self, steps: Iterable[Step | DelayedReturn | str]) -> None:
        """SageMaker's order-only dependencies: steps (or their ``DelayedReturn``s) this
        step runs after."""
        if isinstance(steps, (Step, DelayedReturn, str)):
            steps = [steps]
        for item in steps:
            other = item.step if isinstance(item, DelayedReturn) else item
            if not isinstance(other, Step):
                raise SpecError(
                    f"step {self.name!r}: add_depends_on takes steps or DelayedReturns, got "
                    f"{item!r}",
                    field="depends_on",
                )
            self.after.append(other)

    @property
    def depends_on(self) -> list[Step]:
        return list(self.after)

    @depends_on.setter
    def depends_on(self, value: Any) -> None:
        raise AttributeError("use add_depends_on([...]) to add dependencies to a step")

    def references(self) -> list[DelayedReturn]:
        """The ``DelayedReturn``s this step receives (data dependencies on their steps)."""
        return references([*self.arguments, *self._param_values()])

    def branches(self) -> list[Step]:
        """Steps that run after this one and belong to its pipeline (a condition's)."""
        return []

    def branch_names(self) -> dict[str, list[str]]:
        return {}

    def reads(self) -> list[PipelineData | InputData]:
        """The data this step reads: its inputs, and data in its arguments that it does not
        write."""
        found = list(self.inputs)
        for value in self.arguments:
            if isinstance(value, InputData) or (
                isinstance(value, PipelineData) and value not in self.outputs
            ):
                found.append(value)
        unique: list[PipelineData | InputData] = []
        for data in found:
            if not any(data is seen for seen in unique):
                unique.append(data)
        return unique

    def parameters(self) -> list[PipelineParameter]:
        values = [*self.arguments, *self.runconfig_pipeline_params.values(), *self._param_values()]
        return [value for value in values if isinstance(value, PipelineParameter)]

    def _param_values(self) -> list[Any]:
        return []

    def job_spec(self, resolve: Resolver, context: StepContext | None = None) -> JobSpec:
        raise NotImplementedError

    def _finish(self, spec: JobSpec, resolve: Resolver, variables: dict[str, str]) -> JobSpec:
        """The step's own name, counts, target, inputs (mounted read-only in containers)
        and variables on top of ``spec``."""
        update: dict[str, Any] = {"name": _run_name(self.name), "variables": variables}
        for key, field in PIPELINE_PARAMS.items():
            if key in self.runconfig_pipeline_params:
                update[field] = int(resolve(self.runconfig_pipeline_params[key]))
        if self.compute_target is not None:
            update["compute_target"] = self.compute_target
        inputs = dict(spec.inputs)
        inputs.update({data.name: Path(resolve(data)) for data in self.reads()})
        update["inputs"] = inputs
        return spec.model_copy(update=update)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class PythonScriptStep(Step):
    """Run ``script_name`` from ``source_directory`` (Azure's ``PythonScriptStep``).
    ``params`` reach the script as ``AML_PARAMETER_<name>`` variables; ``hash_paths`` is
    deprecated and ignored: the whole source directory, minus ignored files, is hashed."""

    kind = "python_script"

    def __init__(
        self,
        script_name: str,
        name: str | None = None,
        arguments: Sequence[Any] | None = None,
        compute_target: Any = None,
        runconfig: RunConfiguration | None = None,
        runconfig_pipeline_params: Mapping[str, PipelineParameter] | None = None,
        inputs: Sequence[Any] | None = None,
        outputs: Sequence[PipelineData] | None = None,
        params: Mapping[str, Any] | None = None,
        source_directory: str | Path | None = None,
        allow_reuse: bool = True,
        version: str | None = None,
        hash_paths: Sequence[str] | None = None,
    ) -> None:
        if hash_paths is not None:
            warnings.warn(
                "hash_paths is deprecated (as in Azure ML) and ignored: the whole "
                "source_directory, minus ignored files, is part of the reuse key",
                DeprecationWarning,
                stacklevel=2,
            )
        if not isinstance(script_name, str) or not script_name:
            raise SpecError("PythonScriptStep needs script_name", field="script_name")
        super().__init__(
            name or script_name, inputs=inputs, outputs=outputs, arguments=arguments,
            compute_target=compute_target, allow_reuse=allow_reuse, version=version,
            runconfig_pipeline_params=runconfig_pipeline_params,
        )  # fmt: skip
        self.script_name = script_name
        self.runconfig = runconfig or RunConfiguration()
        self.params = dict(params or {})
        self.source_directory = Path(source_directory or ".").expanduser().resolve()

    def _param_values(self) -> list[Any]:
        return list(self.params.values())

    def job_spec(self, resolve: Resolver, context: StepContext | None = None) -> JobSpec:
        config = self.runconfig
        environment = config.environment
        estimator = Estimator(
            self.source_directory,
            entry_script=self.script_name,
            script_params=[str(resolve(value)) for value in self.arguments],
            node_count=config.node_count,
            process_count_per_node=config.process_count_per_node,
            distributed_training=config.distributed_training,
            environment_definition=environment,
            user_managed=environment is None,
            environment_variables=config.environment_variables,
            max_run_duration_seconds=config.max_run_duration_seconds,
            use_docker=config.use_docker,
            shm_size=config.shm_size,
            compute_target=config.target or "local",
        )
        variables = {
            f"AML_PARAMETER_{key}": str(resolve(value)) for key, value in self.params.items()
        }
        return self._finish(estimator.job_spec, resolve, variables)


class EstimatorStep(Step):
    """Any fitdock estimator as a step (Azure's ``EstimatorStep``), with all of its
    supervision; ``estimator_entry_script_arguments`` follow the estimator's own
    ``script_params``."""

    kind = "estimator"

    def __init__(
        self,
        name: str | None = None,
        estimator: Estimator | None = None,
        estimator_entry_script_arguments: Sequence[Any] | None = None,
        runconfig_pipeline_params: Mapping[str, PipelineParameter] | None = None,
        inputs: Sequence[Any] | None = None,
        outputs: Sequence[PipelineData] | None = None,
        compute_target: Any = None,
        allow_reuse: bool = True,
        version: str | None = None,
    ) -> None:
        if not isinstance(estimator, Estimator):
            raise SpecError(
                "EstimatorStep needs estimator=<a fitdock estimator>", field="estimator"
            )
        super().__init__(
            name or Path(estimator.job_spec.entry_script).name, inputs=inputs, outputs=outputs,
            arguments=estimator_entry_script_arguments, compute_target=compute_target,
            allow_reuse=allow_reuse, version=version,
            runconfig_pipeline_params=runconfig_pipeline_params,
        )  # fmt: skip
        self.estimator = estimator

    def job_spec(self, resolve: Resolver, context: StepContext | None = None) -> JobSpec:
        spec = self.estimator.job_spec
        arguments = (*spec.arguments, *(str(resolve(value)) for value in self.arguments))
        return self._finish(spec.model_copy(update={"arguments": arguments}), resolve, {})


class StepSequence:
    """Steps that run one after the other, in the order given (``run_after`` between each
    pair); usable where a pipeline takes steps."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)
        for before, after in zip(self.steps, self.steps[1:], strict=False):
            after.run_after(before)


def _run_name(name: str) -> str:
    """A step name as the name part of a run id (letters, digits, '-', '_', '.')."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return cleaned.strip("._") or "step"
