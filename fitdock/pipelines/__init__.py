"""Pipelines of steps (Azure ML SDK v1's names): ``Pipeline``, ``PythonScriptStep``,
``EstimatorStep``, ``PipelineData``, ``PipelineParameter``, ``RunConfiguration``,
``StepSequence``; ``PipelineRun`` and ``Experiment``. Each step becomes an ordinary
fitdock run; a step whose content-addressed key matches an earlier completed step is
reused (``reuse.py`` says why it ran). Imported lazily: ``import fitdock`` stays light."""

from __future__ import annotations

from fitdock.pipelines.data import InputData, PipelineData, PipelineParameter
from fitdock.pipelines.experiment import Experiment
from fitdock.pipelines.pipeline import Pipeline
from fitdock.pipelines.preview import preview
from fitdock.pipelines.run import PipelineRun, StepRun
from fitdock.pipelines.steps import EstimatorStep, PythonScriptStep, RunConfiguration, StepSequence

__all__ = [
    "EstimatorStep",
    "Experiment",
    "InputData",
    "Pipeline",
    "PipelineData",
    "PipelineParameter",
    "PipelineRun",
    "PythonScriptStep",
    "RunConfiguration",
    "StepRun",
    "StepSequence",
    "preview",
]
