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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fitdock.environments.pins import PinOverride, UserRequirement, merge_pip
from fitdock.errors import NotAvailableError, SpecError

if TYPE_CHECKING:
    from fitdock.environments.azure import CondaDependencies

_SHM_SIZE = re.compile(r"[1-9][0-9]{0,11}[bkmgBKMG]?")
# One conda match spec: a name (with its channel), then an operator and a version such as
# "=1.26", " >= 1.2,<2", "=1.2.*=py3*" (spaces only around the operator): no more words.
_CONDA_SPEC = re.compile(
    r"[A-Za-z0-9_.\-]+(::[A-Za-z0-9_.\-]+)?( *[=<>!~]{1,2} *[=<>!~A-Za-z0-9_.*+,|-]*)?"
)
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# One word that reaches a program: a URL, a path, a channel, an image. No white space, no
# control character, not an option.
_ONE_WORD = re.compile(r"[^\s\x00-\x1f\x7f-][^\s\x00-\x1f\x7f]*")
# A Docker image reference: [registry[:port]/]name[:tag][@digest].
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")


def check_pip_spec(spec: object) -> str:
    """``spec`` when it is one pip requirement: PEP 508 (``numpy>=1.2; python_version<'4'``),
    or one URL or path (``git+https://...``, ``./vendored/pkg``). A pip option, a second
    requirement or a line break is refused (``ValueError``, the message says why)."""
    if not isinstance(spec, str):
        raise ValueError(f"a pip package is a string such as 'numpy>=1.26', got {spec!r}")
    text = spec.strip(" ")
    if not text:
        raise ValueError("pip package specs must not be empty")
    if text.startswith("-"):
        raise ValueError(f"{spec!r} is a pip option, not a package; pass packages only")
    if _has_control(spec):
        raise ValueError(
            f"{spec!r} holds a line break or control character: give one requirement per item"
        )
    try:
        Requirement(text)
    except InvalidRequirement:
        if not _ONE_WORD.fullmatch(text) or "#" in text.split("#egg=", 1)[0]:
            raise ValueError(
                f"{spec!r} is not one requirement: give a PEP 508 requirement such as "
                "'numpy>=1.26' or one URL or path, one per item"
            ) from None
    return spec


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def check_conda_spec(spec: object) -> str:
    """``spec`` when it is one conda match spec such as ``numpy=1.26`` (else ValueError)."""
    if not isinstance(spec, str) or not _CONDA_SPEC.fullmatch(spec.strip(" ")):
        raise ValueError(
            f"{spec!r} is not one conda package spec such as 'numpy=1.26' or "
            "'conda-forge::numpy>=1.26' (one per item, no spaces within the version)"
        )
    return spec


def check_image(value: object) -> str:
    """A Docker image reference such as ``python:3.12-slim`` (else ValueError): it reaches
    a Dockerfile's ``FROM`` line and docker's argv, so no spaces, line breaks or options."""
    if not isinstance(value, str) or not _IMAGE.fullmatch(value):
        raise ValueError(
            "an image is a reference such as 'python:3.12-slim' or "
            f"'registry:5000/team/image:tag' (no spaces or line breaks), got {value!r}"
        )
    return value


def check_variables(value: Any) -> Any:
    """Variables for a process (an environment's, a job's, a step's): names a shell could
    export, values as text without NUL (no process can receive one). Not a dict: left to
    the field's type to refuse."""
    if not isinstance(value, dict):
        return value
    for key, val in value.items():
        if not isinstance(key, str) or not _VAR_NAME.fullmatch(key):
            raise ValueError(
                f"{key!r} is not a valid environment variable name (letters, digits, _; "
                "no digit first): not a variable name a shell can export"
            )
        if "\0" in str(val):
            raise ValueError(f"the value of {key} holds a NUL byte, which no process can receive")
    return {key: str(val) for key, val in value.items()}


def check_word(value: object, what: str) -> str:
    """One word for a program (a channel, an index URL): no white space, not an option."""
    if not isinstance(value, str) or not _ONE_WORD.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be one word: no spaces, line breaks or leading '-'"
        )
    return value


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

    # Checked again wherever it is used (an estimator, a job), so that a section changed by
    # assignment (``env.python.pip_packages = [...]``) is checked too.
    model_config = ConfigDict(extra="forbid", revalidate_instances="always")

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
        return [check_pip_spec(spec) for spec in value]

    @field_validator("conda_packages")
    @classmethod
    def _conda_ok(cls, value: list[str]) -> list[str]:
        return [check_conda_spec(spec) for spec in value]

    @field_validator("channels")
    @classmethod
    def _channels_ok(cls, value: list[str]) -> list[str]:
        return [check_word(item, "a conda channel") for item in value]

    @field_validator("pip_extra_index_urls")
    @classmethod
    def _urls_ok(cls, value: list[str]) -> list[str]:
        return [check_word(item, "an index URL") for item in value]

    @field_validator("interpreter_path")
    @classmethod
    def _interpreter_ok(cls, value: str) -> str:
        if not value or "\0" in value or "\n" in value:
            raise ValueError(f"interpreter_path must name a program, got {value!r}")
        return value

    @field_validator("python_version")
    @classmethod
    def _version_ok(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"3\.[0-9]{1,3}(\.[0-9]{1,3})?", value):
            raise ValueError(f"python_version must look like '3.11' or '3.11.7', got {value!r}")
        return value

    if TYPE_CHECKING:  # Azure's; defined in and attached by fitdock.environments.azure

        @property
        def conda_dependencies(self) -> CondaDependencies: ...
        @conda_dependencies.setter
        def conda_dependencies(self, value: CondaDependencies) -> None: ...


class DockerSection(BaseModel):
    """How the environment runs in Docker (built by the environment builders)."""

    model_config = ConfigDict(extra="forbid", revalidate_instances="always")

    enabled: bool | None = None  # run in Docker (Azure's ``environment.docker.enabled``)
    base_image: str | None = None
    shm_size: str | None = None
    gpu_support: bool = False
    arguments: list[str] = Field(default_factory=list)

    @field_validator("shm_size")
    @classmethod
    def _shm_ok(cls, value: str | None) -> str | None:
        if value is not None and not _SHM_SIZE.fullmatch(value):
            raise ValueError(f"shm_size must be a size such as '2g' or '512m', got {value!r}")
        return value

    @field_validator("base_image")
    @classmethod
    def _image_ok(cls, value: str | None) -> str | None:
        return None if value is None else check_image(value)

    @field_validator("arguments")
    @classmethod
    def _arguments_ok(cls, value: list[str]) -> list[str]:
        for arg in value:
            if "\0" in arg:
                raise ValueError(f"docker argument {arg!r} holds a NUL byte")
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

    model_config = ConfigDict(extra="forbid", revalidate_instances="always")

    name: str = "fitdock-user-env"
    version: str | None = None
    python: PythonSection = Field(default_factory=PythonSection)
    docker: DockerSection = Field(default_factory=DockerSection)
    platform: Platform = Field(default_factory=Platform)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    # Curated pins the user's versioned requirements replaced: a record, not hashed.
    pin_overrides: list[PinOverride] = Field(default_factory=list)

    def __init__(self, name: str | None = None, **data: Any) -> None:
        """``Environment("name")`` as in Azure, or keywords only. A bad value is a
        ``SpecError`` naming the field (``python.pip_packages.0: ...``)."""
        try:
            super().__init__(**data, **({} if name is None else {"name": name}))
        except ValidationError as exc:
            raise SpecError.from_pydantic("Environment", exc) from None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not value.strip() or len(value) > 255 or _has_control(value):
            raise ValueError(
                f"an environment's name is 1 to 255 characters without line breaks, got {value!r}"
            )
        return value

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
        return check_variables(value)

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
        for item in requested:  # they reach pip and conda: one requirement each
            _user_spec(check_pip_spec, item.spec, item.field, self.name)
        for spec in conda:
            _user_spec(check_conda_spec, spec, "conda_packages", self.name)
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


def _user_spec(check: Any, spec: str, field: str, owner: str) -> None:
    try:
        check(spec)
    except ValueError as exc:
        raise SpecError(f"{owner}: {field}: {exc}", field=field) from None


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
