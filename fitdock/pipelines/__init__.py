"""Pipelines of steps, in Azure ML SDK v1's names (``Pipeline``, ``PythonScriptStep``,
``EstimatorStep``, ``PipelineData``, ``PipelineParameter``, ``RunConfiguration``,
``StepSequence``, ``PipelineRun``, ``Experiment``) and SageMaker's (``@step`` functions
returning ``DelayedReturn``s, ``ConditionStep``, ``FailStep``, ``Join``, ``CacheConfig``,
typed ``Parameter*``; conditions in ``fitdock.pipelines.conditions``). Each step becomes
an ordinary fitdock run; a step whose content-addressed key matches an earlier completed
step is reused (``reuse.py`` says why it ran). Imported lazily: ``import fitdock`` stays
light."""

from __future__ import annotations

from fitdock.pipelines.conditions import Join
from fitdock.pipelines.control import ConditionStep, FailStep
from fitdock.pipelines.data import InputData, PipelineData, PipelineParameter
from fitdock.pipelines.delayed import DelayedReturn, get_step
from fitdock.pipelines.experiment import Experiment
from fitdock.pipelines.function import CacheConfig, FunctionStep, step
from fitdock.pipelines.parameters import (
    ParameterBoolean,
    ParameterFloat,
    ParameterInteger,
    ParameterString,
)
from fitdock.pipelines.pipeline import Pipeline
from fitdock.pipelines.preview import preview
from fitdock.pipelines.run import PipelineRun, StepRun
from fitdock.pipelines.script_step import ExecutePythonScriptStep
from fitdock.pipelines.steps import EstimatorStep, PythonScriptStep, RunConfiguration, StepSequence

__all__ = [
    "CacheConfig",
    "ConditionStep",
    "DelayedReturn",
    "EstimatorStep",
    "ExecutePythonScriptStep",
    "Experiment",
    "FailStep",
    "FunctionStep",
    "InputData",
    "Join",
    "ParameterBoolean",
    "ParameterFloat",
    "ParameterInteger",
    "ParameterString",
    "Pipeline",
    "PipelineData",
    "PipelineParameter",
    "PipelineRun",
    "PythonScriptStep",
    "RunConfiguration",
    "StepRun",
    "StepSequence",
    "get_step",
    "preview",
    "step",
]
