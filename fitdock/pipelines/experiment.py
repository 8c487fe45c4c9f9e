"""``Experiment``: how Azure's samples submit work (``Experiment(ws, name).submit(...)``):
a pipeline, a ``ScriptRunConfig`` or an estimator. The workspace is accepted and ignored,
so ported code keeps working."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from fitdock.errors import SpecError
from fitdock.estimators.base import Estimator
from fitdock.estimators.scriptrun import ScriptRunConfig
from fitdock.execution.submit import submit
from fitdock.pipelines.pipeline import Pipeline
from fitdock.runs.names import folder_name


class Experiment:
    def __init__(self, *args: Any, name: str | None = None, workspace: Any = None) -> None:
        if args and isinstance(args[0], str):
            name = args[0]
        elif args:  # Experiment(ws, name)
            workspace = args[0]
            name = args[1] if len(args) > 1 else name
        if not name:
            raise SpecError("an Experiment needs a name: Experiment(name='...')", field="name")
        self.name = folder_name(name, "Experiment name")  # it names run folders
        self.workspace = workspace

    def submit(
        self,
        config: Pipeline | ScriptRunConfig | Estimator,
        tags: Mapping[str, Any] | None = None,
        pipeline_parameters: dict[str, Any] | None = None,
        continue_on_step_failure: bool = False,
        regenerate_outputs: bool = False,
        **kwargs: Any,
    ) -> Any:
        """A pipeline's ``PipelineRun``; a ``ScriptRunConfig``'s or an estimator's running
        ``Run`` (``fit(wait=False)``; a ``ScriptRunConfig``'s runs are named after this
        experiment). ``tags`` (values as text) go into the run record's ``tags``."""
        tagged = _tags(tags)
        if isinstance(config, Pipeline):
            if tagged:
                warnings.warn(
                    "Experiment.submit: tags are not recorded for pipeline runs yet; tag the "
                    "step runs from their scripts instead",
                    UserWarning,
                    stacklevel=2,
                )
            return config.submit(
                experiment_name=self.name, pipeline_parameters=pipeline_parameters,
                continue_on_step_failure=continue_on_step_failure,
                regenerate_outputs=regenerate_outputs, **kwargs,
            )  # fmt: skip
        if not isinstance(config, (ScriptRunConfig, Estimator)):
            raise SpecError(
                "Experiment.submit takes a Pipeline, a ScriptRunConfig or an estimator, not "
                f"{type(config).__name__}",
                field="config",
            )
        given = {
            **kwargs,
            "pipeline_parameters": pipeline_parameters,
            "continue_on_step_failure": continue_on_step_failure or None,
            "regenerate_outputs": regenerate_outputs or None,
        }
        pipeline_only = sorted(name for name, value in given.items() if value is not None)
        if pipeline_only:
            raise SpecError(
                f"Experiment.submit: {', '.join(pipeline_only)} apply to pipelines, not to a "
                f"{type(config).__name__}",
                field=pipeline_only[0],
            )
        estimator = (
            config.estimator(experiment_name=self.name)
            if isinstance(config, ScriptRunConfig)
            else config
        )
        # What estimator.fit(wait=False) does (a detached supervisor: the run outlives this
        # process, as an Azure run outlives its notebook), with the tags in the first write.
        return submit(estimator.job_spec, wait=False, detach=True, tags=tagged)

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r})"


def _tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """Azure's run tags: names to values, kept as text (``None`` as an empty value)."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping) or not all(isinstance(key, str) and key for key in tags):
        raise SpecError(
            f"Experiment.submit: tags must map names to values, e.g. {{'team': 'vision'}}, "
            f"got {tags!r}",
            field="tags",
        )
    return {key: "" if value is None else str(value) for key, value in tags.items()}
