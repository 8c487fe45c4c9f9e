"""``Experiment``: how Azure's samples submit work (``Experiment(ws, name).submit(...)``).
The workspace is accepted and ignored, so ported code keeps working."""

from __future__ import annotations

from typing import Any

from fitdock.errors import SpecError
from fitdock.estimators.base import Estimator
from fitdock.pipelines.pipeline import Pipeline


class Experiment:
    def __init__(self, *args: Any, name: str | None = None, workspace: Any = None) -> None:
        if args and isinstance(args[0], str):
            name = args[0]
        elif args:  # Experiment(ws, name)
            workspace = args[0]
            name = args[1] if len(args) > 1 else name
        if not name:
            raise SpecError("an Experiment needs a name: Experiment(name='...')", field="name")
        self.name = name
        self.workspace = workspace

    def submit(
        self,
        config: Pipeline | Estimator,
        pipeline_parameters: dict[str, Any] | None = None,
        continue_on_step_failure: bool = False,
        regenerate_outputs: bool = False,
        **kwargs: Any,
    ) -> Any:
        """A pipeline's ``PipelineRun``, or an estimator's running ``Run`` (its
        ``fit(wait=False)``)."""
        if isinstance(config, Pipeline):
            return config.submit(
                experiment_name=self.name, pipeline_parameters=pipeline_parameters,
                continue_on_step_failure=continue_on_step_failure,
                regenerate_outputs=regenerate_outputs, **kwargs,
            )  # fmt: skip
        if isinstance(config, Estimator):
            return config.fit(wait=False)
        raise SpecError(
            f"Experiment.submit takes a Pipeline or an estimator, not {type(config).__name__}",
            field="config",
        )

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r})"
