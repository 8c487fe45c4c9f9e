"""Framework estimators: the generic one plus the curated framework packages."""

from __future__ import annotations

from typing import ClassVar

from fitdock.environments.catalogue import Framework
from fitdock.estimators.base import Estimator


class Chainer(Estimator):
    """Azure ML SDK v1's ``Chainer`` estimator: Chainer (and ChainerMN over MPI).

    Chainer 7.8.1 is the current version; 5.1.0 and 7.0.0 (Azure's curated
    images) are accepted and mapped to it with a warning.
    """

    FRAMEWORK_NAME: ClassVar[str] = "Chainer"
    DEFAULT_VERSION: ClassVar[str] = "7.8.1"
    _FRAMEWORK: ClassVar[Framework] = "chainer"


class PyTorch(Estimator):
    """Azure ML SDK v1's ``PyTorch`` estimator: PyTorch on CPU or CUDA."""

    FRAMEWORK_NAME: ClassVar[str] = "PyTorch"
    DEFAULT_VERSION: ClassVar[str] = "2.13.0"
    _FRAMEWORK: ClassVar[Framework] = "pytorch"
