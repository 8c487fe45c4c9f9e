"""fitdock: estimator-style training jobs on your own machines and clusters.

    from fitdock import Chainer, Mpi

    run = Chainer(source_directory="examples/chainer_mnist", entry_script="train.py",
                  process_count_per_node=2, distributed_training=Mpi(),
                  user_managed=True).fit()

The names below are imported lazily so that ``import fitdock`` (done by every
rank of every job) stays fast and pulls in no heavy framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fitdock._version import __version__

if TYPE_CHECKING:
    from fitdock.environments.azure import CondaDependencies, Environment
    from fitdock.errors import FitdockError
    from fitdock.estimators.azure import DockerConfiguration, MpiConfiguration
    from fitdock.estimators.base import Estimator
    from fitdock.estimators.frameworks import Chainer, PyTorch
    from fitdock.estimators.scriptrun import ScriptRunConfig
    from fitdock.execution.run import Run
    from fitdock.pipelines import (
        EstimatorStep,
        Experiment,
        Pipeline,
        PipelineData,
        PipelineParameter,
        PipelineRun,
        PythonScriptStep,
        RunConfiguration,
        StepSequence,
    )
    from fitdock.runs.models import Model
    from fitdock.runs.status import RunStatus
    from fitdock.specs.compute import Hosts, Slurm
    from fitdock.specs.distribution import Horovod, Mpi, PyTorchConfiguration

_EXPORTS = {
    "EstimatorStep": "fitdock.pipelines",
    "Experiment": "fitdock.pipelines",
    "Pipeline": "fitdock.pipelines",
    "PipelineData": "fitdock.pipelines",
    "PipelineParameter": "fitdock.pipelines",
    "PipelineRun": "fitdock.pipelines",
    "PythonScriptStep": "fitdock.pipelines",
    "RunConfiguration": "fitdock.pipelines",
    "StepSequence": "fitdock.pipelines",
    "Chainer": "fitdock.estimators.frameworks",
    # From the module that attaches Azure's Environment.get, from_* and clone to it.
    "Environment": "fitdock.environments.azure",
    "CondaDependencies": "fitdock.environments.azure",
    "DockerConfiguration": "fitdock.estimators.azure",
    "MpiConfiguration": "fitdock.estimators.azure",
    "ScriptRunConfig": "fitdock.estimators.scriptrun",
    "Estimator": "fitdock.estimators.base",
    "FitdockError": "fitdock.errors",
    "Horovod": "fitdock.specs.distribution",
    "Hosts": "fitdock.specs.compute",
    "Mpi": "fitdock.specs.distribution",
    "PyTorchConfiguration": "fitdock.specs.distribution",
    "PyTorch": "fitdock.estimators.frameworks",
    "Model": "fitdock.runs.models",
    "Run": "fitdock.execution.run",
    "RunStatus": "fitdock.runs.status",
    "Slurm": "fitdock.specs.compute",
}

__all__ = [
    "Chainer",
    "CondaDependencies",
    "DockerConfiguration",
    "Environment",
    "Estimator",
    "EstimatorStep",
    "Experiment",
    "FitdockError",
    "Horovod",
    "Hosts",
    "Model",
    "Mpi",
    "MpiConfiguration",
    "Pipeline",
    "PipelineData",
    "PipelineParameter",
    "PipelineRun",
    "PyTorch",
    "PyTorchConfiguration",
    "PythonScriptStep",
    "Run",
    "RunConfiguration",
    "RunStatus",
    "ScriptRunConfig",
    "Slurm",
    "StepSequence",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fitdock' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
