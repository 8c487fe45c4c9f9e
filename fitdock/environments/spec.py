"""The ``Environment`` spec: what a job needs to run, as hashable data.

An environment has a Python section (interpreter, conda and pip packages), a
Docker section (base image, shm size, GPU support, extra run arguments) and
environment variables. ``Environment.hash()`` is a content hash: the same
packages in another order, or spelled ``NumPy >= 1.2`` instead of
``numpy>=1.2``, give the same hash on every machine and process. Names and
descriptions do not count; contents do.

``Environment.with_packages`` adds a user's packages to a curated environment:
how user pip requirements merge with the curated pins is in ``pins``, and every
curated pin a user replaced is listed in ``Environment.pin_overrides`` (a record,
not part of the hash).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fitdock.environments.pins import PinOverride, UserRequirement, merge_pip
from fitdock.errors import NotAvailableError

if TYPE_CHECKING:
    from fitdock.environments.azure import CondaDependencies

_SHM_SIZE = re.compile(r"^[1-9][0-9]*[bkmgBKMG]?$")
_CONDA_SPEC = re.compile(r"^[A-Za-z0-9_.\-]+(::[A-Za-z0-9_.\-]+)?\s*([=<>!~].*)?$")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def normalize_pip(spec: str) -> str:
    """``NumPy >= 1.2`` -> ``numpy>=1.2``; URLs and paths are kept as written."""
    text = spec.strip()
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return text
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    url = f" @ {req.url}" if req.url else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}{extras}{req.specifier}{url}{marker}"


def normalize_conda(spec: str) -> str:
    return re.sub(r"\s+", "", spec.strip()).lower()


def pip_name(spec: str) -> str:
    try:
        return canonicalize_name(Requirement(spec).name)
    except InvalidRequirement:
        return spec


class PythonSection(BaseModel):
    """Interpreter and packages. ``user_managed_dependencies`` means: use
    ``interpreter_path`` as it is and install nothing."""

    model_config = ConfigDict(extra="forbid")

    user_managed_dependencies: bool = False
    interpreter_path: str = "python"
    python_version: str | None = None
    conda_packages: list[str] = Field(default_factory=list)
    pip_packages: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    pip_extra_index_urls: list[str] = Field(default_factory=list)
    # Pins for the isolated environments in which sdists are built (uv --build-constraint,
    # or PIP_CONSTRAINT for pip), e.g. setuptools<82 for Chainer 7.8.1. Not installed.
    build_constraints: list[str] = Field(default_factory=list)

    @field_validator("pip_packages", "build_constraints")
    @classmethod
    def _pip_ok(cls, value: list[str]) -> list[str]:
        for spec in value:
            if not spec.strip():
                raise ValueError("pip package specs must not be empty")
            if spec.strip().startswith("-"):
                raise ValueError(f"{spec!r} is a pip option, not a package; pass packages only")
        return value

    @field_validator("conda_packages")
    @classmethod
    def _conda_ok(cls, value: list[str]) -> list[str]:
        for spec in value:
            if not _CONDA_SPEC.match(spec.strip()):
                raise ValueError(f"{spec!r} is not a conda package spec such as 'numpy=1.26'")
        return value

    @field_validator("python_version")
    @classmethod
    def _version_ok(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^3\.[0-9]+(\.[0-9]+)?$", value):
            raise ValueError(f"python_version must look like '3.11' or '3.11.7', got {value!r}")
        return value

    if TYPE_CHECKING:  # Azure's; defined in and attached by fitdock.environments.azure

        @property
        def conda_dependencies(self) -> CondaDependencies: ...
        @conda_dependencies.setter
        def conda_dependencies(self, value: CondaDependencies) -> None: ...


class DockerSection(BaseModel):
    """How the environment runs in Docker (built by the environment builders)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None  # run in Docker (Azure's ``environment.docker.enabled``)
    base_image: str | None = None
    shm_size: str | None = None
    gpu_support: bool = False
    arguments: list[str] = Field(default_factory=list)

    @field_validator("shm_size")
    @classmethod
    def _shm_ok(cls, value: str | None) -> str | None:
        if value is not None and not _SHM_SIZE.match(value):
            raise ValueError(f"shm_size must be a size such as '2g' or '512m', got {value!r}")
        return value


class Platform(BaseModel):
    """What a curated image carries besides packages (informational, hashed)."""

    model_config = ConfigDict(extra="forbid")

    os: str | None = None
    cuda: str | None = None
    cudnn: str | None = None
    nccl: str | None = None
    mpi: str | None = None
    extras: dict[str, str] = Field(default_factory=dict)


class Environment(BaseModel):
    """A named, hashable description of where a job runs."""

    model_config = ConfigDict(extra="forbid")

    name: str = "fitdock-user-env"
    version: str | None = None
    python: PythonSection = Field(default_factory=PythonSection)
    docker: DockerSection = Field(default_factory=DockerSection)
    platform: Platform = Field(default_factory=Platform)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    # Curated pins the user's versioned requirements replaced: a record, not hashed.
    pin_overrides: list[PinOverride] = Field(default_factory=list)

    def __init__(self, name: str | None = None, **data: Any) -> None:
        """``Environment("name")`` as in Azure, or keywords only."""
        super().__init__(**data, **({} if name is None else {"name": name}))

    if TYPE_CHECKING:  # Azure's; they read the catalogue (which imports this module), so
        # fitdock.environments.azure defines them and attaches them (fitdock.Environment).

        @classmethod
        def get(
            cls, workspace: Any = None, name: str | None = None, version: str | None = None
        ) -> Environment: ...
        @classmethod
        def from_pip_requirements(
            cls, name: str, file_path: str | Path, pip_version: str | None = None
        ) -> Environment: ...
        @classmethod
        def from_conda_specification(cls, name: str, file_path: str | Path) -> Environment: ...
        def clone(self, new_name: str) -> Environment: ...

    @field_validator("environment_variables", mode="before")
    @classmethod
    def _vars_ok(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str) or not _VAR_NAME.match(key):
                    raise ValueError(f"{key!r} is not a valid environment variable name")
            return {key: str(val) for key, val in value.items()}
        return value

    def canonical(self) -> dict[str, Any]:
        """The contents that define the environment, normalized and ordered."""
        py = self.python
        return {
            "python": {
                "user_managed_dependencies": py.user_managed_dependencies,
                "interpreter_path": py.interpreter_path,
                "python_version": py.python_version,
                "conda_packages": sorted({normalize_conda(s) for s in py.conda_packages}),
                "pip_packages": sorted({normalize_pip(s) for s in py.pip_packages}),
                "channels": list(py.channels),  # channel order is priority: it matters
                "pip_extra_index_urls": sorted(set(py.pip_extra_index_urls)),
                # Only when set, so that adding the field kept every other hash as it was.
                **(
                    {"build_constraints": sorted({normalize_pip(s) for s in py.build_constraints})}
                    if py.build_constraints
                    else {}
                ),
            },
            "docker": {
                "base_image": self.docker.base_image,
                "shm_size": self.docker.shm_size,
                "gpu_support": self.docker.gpu_support,
                "arguments": list(self.docker.arguments),
            },
            "platform": self.platform.model_dump(),
            "environment_variables": dict(sorted(self.environment_variables.items())),
        }

    def hash(self) -> str:
        """A sha256 of the canonical contents, the same on every machine."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def with_packages(
        self, *, conda: Sequence[str] = (), pip: Sequence[str | UserRequirement] = ()
    ) -> Environment:
        """A copy with more packages. The pip packages already here are the curated pins:
        ``pins.merge_pip`` merges the user's ``pip`` into them (a plain string came from
        ``pip_packages``) and raises ``SpecError`` when they cannot hold together. A user's
        conda spec replaces a curated one of the same name."""
        requested = [UserRequirement(s) if isinstance(s, str) else s for s in pip]
        merged = merge_pip(self.python.pip_packages, requested, owner=self.name)
        conda_names = {re.split(r"[=<>!~ ]", s, maxsplit=1)[0].lower() for s in conda}
        kept_conda = [
            s
            for s in self.python.conda_packages
            if re.split(r"[=<>!~ ]", s, maxsplit=1)[0].lower() not in conda_names
        ]
        section = self.python.model_copy(
            update={"pip_packages": merged.packages, "conda_packages": kept_conda + list(conda)}
        )
        overrides = self.pin_overrides + merged.overrides
        return self.model_copy(update={"python": section, "pin_overrides": overrides})


LOCAL_CONDA_ADVICE = (
    "run in Docker (use_docker=True), or activate a conda environment yourself and pass "
    "user_managed=True"
)


def refuse_conda(env: Environment, builder: str, instead: str, always: bool = False) -> None:
    """fitdock's builders (virtualenvs with uv, images with pip) have no conda solver: an
    environment with conda packages that fitdock would build (``always``: even a
    user-managed one, whose packages would be ignored) is refused, naming the ``builder``
    and what to do ``instead``."""
    py = env.python
    if py.conda_packages and (always or not py.user_managed_dependencies):
        raise NotAvailableError(
            f"conda_packages {sorted(py.conda_packages)}: {builder} has no conda solver; "
            f"{instead}; packages that are on PyPI can move to pip_packages"
        )
