"""``Pipeline``: a DAG of steps, validated as a whole before anything runs.

Two call shapes, told apart by type: Azure's ``Pipeline(workspace, steps,
description=None, ...)`` (the workspace is accepted and ignored, so ported code keeps
working) and SageMaker's ``Pipeline(name, parameters=None, steps=None, ...)``. ``steps``
may list only the last steps (or their ``DelayedReturn``s): every step they depend on,
through data, results or ``run_after``, and a condition's branches, are included.
SageMaker's ``definition``/``create``/``upsert``/``start``/``list_executions`` work too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fitdock.errors import PipelineValidationError, SpecError
from fitdock.pipelines.data import PipelineData, PipelineParameter
from fitdock.pipelines.delayed import DelayedReturn
from fitdock.pipelines.graph import closure, find_cycle
from fitdock.pipelines.steps import Step, StepSequence

if TYPE_CHECKING:
    from fitdock.pipelines.run import PipelineRun


class Pipeline:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        steps = kwargs.pop("steps", None)
        name = kwargs.pop("name", None)
        parameters = kwargs.pop("parameters", None)
        self.description: str | None = kwargs.pop("description", None)
        if args and isinstance(args[0], str):  # SageMaker: Pipeline(name, parameters, ..., steps)
            name = args[0]
            rest = list(args[1:])
            parameters = rest[0] if rest else parameters
            steps = rest[2] if len(rest) > 2 else steps
        elif args:  # Azure: Pipeline(workspace, steps, description, ...)
            steps = args[1] if len(args) > 1 else steps
            self.description = args[2] if len(args) > 2 else self.description
        self.workspace = (
            None
            if args and isinstance(args[0], str)
            else (args[0] if args else kwargs.pop("workspace", None))
        )
        self.extra = kwargs  # Azure's default_datastore, resolve_closure, ...: accepted, unused
        if steps is None:
            raise PipelineValidationError(["a pipeline needs steps=[...]"])
        self.steps = closure(_flatten(steps))
        self.name = name or (self.steps[-1].name if self.steps else "pipeline")
        self.parameters = list(parameters or [])

    # ------------------------------------------------------------------ checks
    def problems(
        self, values: Mapping[str, Any] | None = None, *, need_values: bool = True
    ) -> list[str]:
        """Every problem of the graph at once (empty when it can run); ``need_values=False``
        for a definition, which runs later with values given then."""
        found: list[str] = []
        names: dict[str, list[Step]] = {}
        for step in self.steps:
            names.setdefault(step.name, []).append(step)
        found += [_clash(name, steps) for name, steps in names.items() if len(steps) > 1]
        for data in self._data():
            producers = data.producers
            if not producers:
                readers = ", ".join(s.name for s in self.steps if any(d is data for d in s.reads()))
                found.append(f"no step produces {data.name!r} (read by {readers})")
            elif len(producers) > 1:
                who = ", ".join(repr(p.name) for p in producers)
                found.append(f"output {data.name!r} is produced by more than one step: {who}")
        cycle = find_cycle(self.steps)
        if cycle:
            found.append("a cycle: " + " -> ".join(step.name for step in cycle))
        given = dict(values or {})
        known = {p.name for p in self.all_parameters()}
        found += [
            f"pipeline parameter {n!r} is not used by any step" for n in given if n not in known
        ]
        for parameter in self.all_parameters():
            if need_values and parameter.default_value is None and parameter.name not in given:
                found.append(f"pipeline parameter {parameter.name!r} has no value: give one")
            elif parameter.name in given and hasattr(parameter, "check"):
                try:
                    parameter.check(given[parameter.name])
                except SpecError as exc:
                    found.append(str(exc))
        return found

    def parameter_values(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every parameter's value for a submission: given (checked against its type) or
        its default."""
        given = dict(given or {})
        values = {}
        for parameter in self.all_parameters():
            value = given.get(parameter.name, parameter.default_value)
            if parameter.name in given and hasattr(parameter, "check"):
                value = parameter.check(value)
            values[parameter.name] = value
        return values

    def validate(self, values: Mapping[str, Any] | None = None) -> None:
        """Raise ``PipelineValidationError`` listing every problem; nothing runs."""
        problems = self.problems(values)
        if problems:
            raise PipelineValidationError(problems)

    def all_parameters(self) -> list[PipelineParameter]:
        found: dict[str, PipelineParameter] = {p.name: p for p in self.parameters}
        for step in self.steps:
            for parameter in step.parameters():
                found.setdefault(parameter.name, parameter)
        return list(found.values())

    def _data(self) -> list[PipelineData]:
        seen: list[PipelineData] = []
        for step in self.steps:
            for data in [*step.reads(), *step.outputs]:
                if isinstance(data, PipelineData) and not any(data is d for d in seen):
                    seen.append(data)
        return seen

    # ------------------------------------------------------------------ running
    def submit(
        self,
        experiment_name: str | None = None,
        pipeline_parameters: Mapping[str, Any] | None = None,
        continue_on_step_failure: bool = False,
        regenerate_outputs: bool = False,
        max_concurrency: int | None = None,
        wait: bool = False,
        force: Sequence[str] = (),
        show_output: bool = False,
    ) -> PipelineRun:
        """Run the pipeline; returns its ``PipelineRun`` at once (``wait=True``: when it
        has ended). Steps whose reuse key matches an earlier completed step are reused."""
        from fitdock.pipelines.scheduler import start

        self.validate(pipeline_parameters)
        unknown = set(force) - {step.name for step in self.steps}
        if unknown:
            raise PipelineValidationError([f"force names no step: {sorted(unknown)}"])
        run = start(
            self, experiment_name=experiment_name,
            parameters=self.parameter_values(pipeline_parameters),
            continue_on_step_failure=continue_on_step_failure,
            regenerate_outputs=regenerate_outputs, max_concurrency=max_concurrency,
            force=list(force),
        )  # fmt: skip
        if wait:
            run.wait_for_completion(show_output=show_output, raise_on_error=False)
        return run

    # ------------------------------------------------------------------ SageMaker's verbs
    def definition(self) -> str:
        """The pipeline as JSON (SageMaker's shape: parameters, steps, what each needs)."""
        from fitdock.pipelines.definition import definition

        return definition(self)

    def create(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Store the definition under the pipeline's name; an error if one is stored."""
        from fitdock.pipelines.definition import store

        return store(self, replace=False)

    def upsert(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Store the definition under the pipeline's name, replacing an earlier one."""
        from fitdock.pipelines.definition import store

        return store(self, replace=True)

    update = upsert

    def start(
        self, parameters: Mapping[str, Any] | None = None, *args: Any, **kwargs: Any
    ) -> PipelineRun:
        """Run it (SageMaker's name for ``submit``); returns the ``PipelineRun`` at once."""
        return self.submit(pipeline_parameters=parameters)

    def list_executions(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The runs of this pipeline's name, newest first (SageMaker's shape)."""
        from fitdock.pipelines.run import PipelineRun

        runs = [run for run in PipelineRun.list() if run.record.name == self.name]
        summaries = [
            {
                "PipelineExecutionArn": run.id,
                "PipelineExecutionStatus": run.status.value,
                "StartTime": run.record.created_at,
            }
            for run in reversed(runs)
        ]
        return {"PipelineExecutionSummaries": summaries}


def _clash(name: str, steps: list[Step]) -> str:
    functions = [getattr(step, "function_name", None) for step in steps]
    if any(functions):
        shown = " and ".join(
            f"{f or type(s).__name__}" for f, s in zip(functions, steps, strict=True)
        )
        return f"{len(steps)} steps are named {name!r}: {shown}; give each its own @step(name=...)"
    return f"{len(steps)} steps are named {name!r}"


def _flatten(steps: Iterable[Any]) -> list[Step]:
    found: list[Step] = []
    for item in steps:
        if isinstance(item, StepSequence):
            found += item.steps
        elif isinstance(item, DelayedReturn):
            found.append(item.step)
        elif isinstance(item, Step):
            found.append(item)
        else:
            raise PipelineValidationError([f"{item!r} is not a step"])
    return found
