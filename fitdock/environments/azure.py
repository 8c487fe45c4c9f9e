"""Azure ML SDK v1's ways to make an ``Environment``: ``Environment.get(name=...)`` (the
curated catalogue by name, Azure's historic ``AzureML-*`` names included),
``Environment.from_conda_specification``, ``Environment.from_pip_requirements``,
``env.clone(name)``, and ``CondaDependencies`` (``env.python.conda_dependencies``).

They are defined here and attached to ``Environment`` and ``PythonSection`` when this
module is imported, not written in ``spec.py``: they read the curated catalogue, which
imports ``spec``. ``fitdock.Environment`` is taken from this module, so they are always
there for users (``spec.py`` declares them for type checkers).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import ValidationError

from fitdock.environments.catalogue import CatalogueRow, Framework, load_catalogue
from fitdock.environments.files import read_conda_file, read_requirements
from fitdock.environments.spec import Environment, PythonSection, pip_name
from fitdock.errors import EnvironmentResolutionError, SpecError

# Azure's curated names: "AzureML-PyTorch-1.6-GPU", "AzureML-Chainer-5.1.0-CPU", and the
# later long form "AzureML-pytorch-1.10-ubuntu18.04-py38-cuda11-gpu".
_AZURE_NAME = re.compile(
    r"^azureml-(?P<framework>chainer|pytorch)-(?P<version>[0-9][0-9.]*)(?:-.*)?-(?P<device>cpu|gpu)$"
)
ALIASES = {"azureml-minimal": "fitdock-base-cpu"}
AZURE_FORMS = (
    "AzureML-Chainer-<version>-<CPU|GPU>, AzureML-PyTorch-<version>-<CPU|GPU>, AzureML-Minimal"
)


# ---------------------------------------------------------------------------------- curated
def curated(name: str) -> Environment:
    """The buildable curated environment that ``name`` means (case does not matter). A
    history row, or an Azure name the catalogue has no row for, gives the current row
    that replaces it, with a ``FutureWarning``."""
    catalogue = load_catalogue()
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    rows = {row.name.lower(): row for row in catalogue.rows}
    row = rows.get(key)
    if row is None:
        row = _azure_row(name, key)
    elif not row.buildable:
        replacement = catalogue.get(row.replaced_by or "")
        warnings.warn(
            f"{name} ({row.platform.os}, Python {row.python_version}) no longer builds; "
            f"using {replacement.name} instead",
            FutureWarning,
            stacklevel=3,
        )
        row = replacement
    return row.to_environment()


def _azure_row(name: str, key: str) -> CatalogueRow:
    catalogue = load_catalogue()
    match = _AZURE_NAME.match(key)
    if match is None:
        known = ", ".join(row.name for row in catalogue.rows)
        raise EnvironmentResolutionError(
            f"no curated environment {name!r}; known: {known}; and Azure's names {AZURE_FORMS}"
        )
    framework = cast(Framework, match["framework"])
    gpu = match["device"] == "gpu"
    try:
        return catalogue.lookup(framework, match["version"], gpu)
    except EnvironmentResolutionError:
        row = catalogue.lookup(framework, None, gpu)
        warnings.warn(
            f"{name}: fitdock's catalogue has no {framework} {match['version']}; using "
            f"{row.name} ({framework} {row.framework_version}) instead",
            FutureWarning,
            stacklevel=4,
        )
        return row


def _base(name: Any) -> Environment:
    """fitdock's base environment (what an ``Estimator`` without packages gets)."""
    _check_name(name)
    return load_catalogue().lookup("none", None, False).to_environment()


def _file(value: Any, field: str) -> Path:
    """A user's file argument as a path (a ``SpecError`` for anything else)."""
    if not isinstance(value, (str, Path)) or not str(value).strip() or "\0" in str(value):
        raise SpecError(f"{field} must be the path of a file, got {value!r}", field=field)
    return Path(value).expanduser()


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"Environment: name must be a non-empty string, got {name!r}", field="name")


def _section(owner: str, field: str, section: PythonSection, **update: Any) -> PythonSection:
    """``section`` with ``update``, validated by ``PythonSection``'s own rules."""
    try:
        return PythonSection(**{**section.model_dump(), **update})
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise SpecError(f"{owner}: {field}: {message}", field=field) from None


# ------------------------------------------------------------------- Environment's methods
def _get(
    cls: type[Environment],
    workspace: Any = None,
    name: str | None = None,
    version: str | None = None,
) -> Environment:
    """Azure's ``Environment.get(workspace, name, version=None)``: a curated environment by
    name; the workspace and the (registry) version are ignored."""
    if isinstance(workspace, str) and name is None:  # Environment.get("name")
        name = workspace
    if not isinstance(name, str) or not name.strip():
        raise SpecError(
            "Environment.get needs the name of a curated environment, e.g. "
            "Environment.get(name='pytorch-2.13.0-cpu')",
            field="name",
        )
    return curated(name)


def _from_pip_requirements(
    cls: type[Environment], name: str, file_path: str | Path, pip_version: str | None = None
) -> Environment:
    """fitdock's base environment with the packages of a requirements file (``-r``
    includes followed); ``pip_version`` is ignored (fitdock installs with uv)."""
    env = _base(name)
    specs = read_requirements(_file(file_path, "file_path"), "file_path")
    python = _section(
        "Environment.from_pip_requirements", "file_path", env.python, pip_packages=specs
    )
    return env.model_copy(update={"name": name, "python": python})


def _from_conda_specification(
    cls: type[Environment], name: str, file_path: str | Path
) -> Environment:
    """fitdock's base environment with an ``environment.yml``'s channels, Python version,
    conda and pip packages. The bare ``pip`` conda package is dropped (every environment
    fitdock builds has pip); any other conda package makes an environment that fitdock's
    builders refuse, saying what to do instead."""
    env = _base(name)
    conda = read_conda_file(_file(file_path, "file_path"), "file_path")
    python = _section(
        "Environment.from_conda_specification", "file_path", env.python,
        conda_packages=[spec for spec in conda["conda"] if _conda_name(spec) != "pip"],
        pip_packages=conda["pip"], channels=conda["channels"],
        python_version=conda["python_version"] or env.python.python_version,
    )  # fmt: skip
    return env.model_copy(update={"name": name, "python": python})


def _clone(self: Environment, new_name: str) -> Environment:
    """A deep copy under another name (Azure's ``clone``), to change without touching this."""
    _check_name(new_name)
    return self.model_copy(update={"name": new_name}, deep=True)


def _conda_name(spec: str) -> str:
    return re.split(r"[=<>!~ ]", spec.strip(), maxsplit=1)[0].split("::")[-1].lower()


# --------------------------------------------------------------------------- CondaDependencies
class CondaDependencies:
    """Azure's ``CondaDependencies``: conda and pip packages, channels and a Python version.

    ``env.python.conda_dependencies = deps`` gives the environment these packages
    (replacing its own); ``env.python.conda_dependencies`` is the environment's own, so
    ``env.python.conda_dependencies.add_pip_package("x")`` changes the environment. Each
    package is checked when added (a ``SpecError`` naming the argument)."""

    def __init__(self, conda_dependencies_file_path: str | Path | None = None) -> None:
        self._section = PythonSection()
        if conda_dependencies_file_path is not None:
            field = "conda_dependencies_file_path"
            conda = read_conda_file(_file(conda_dependencies_file_path, field), field)
            self._update(
                field, conda_packages=conda["conda"], pip_packages=conda["pip"],
                channels=conda["channels"], python_version=conda["python_version"],
            )  # fmt: skip

    @classmethod
    def create(
        cls,
        pip_indexurl: str | None = None,
        pip_packages: Sequence[str] | None = None,
        conda_packages: Sequence[str] | None = None,
        python_version: str | None = None,
        pin_sdk_version: bool = True,
    ) -> CondaDependencies:
        """Azure's ``create``. ``pip_indexurl`` becomes an extra index URL;
        ``pin_sdk_version`` is ignored (there is no Azure SDK to pin)."""
        deps = cls()
        for field, specs in (("conda_packages", conda_packages), ("pip_packages", pip_packages)):
            if isinstance(specs, str):
                specs = [specs]
            if specs is not None and not isinstance(specs, Sequence):
                raise SpecError(
                    f"CondaDependencies.create: {field} must be a list of package specs, "
                    f"got {specs!r}",
                    field=field,
                )
            for spec in specs or ():
                deps._add(field, str(spec))
        if python_version is not None:
            deps.set_python_version(python_version)
        if pip_indexurl is not None:
            deps._update("pip_indexurl", pip_extra_index_urls=[pip_indexurl])
        return deps

    @classmethod
    def _of(cls, section: PythonSection) -> CondaDependencies:
        deps = cls.__new__(cls)
        deps._section = section
        return deps

    # --------------------------------------------------------------- reading
    @property
    def conda_packages(self) -> list[str]:
        return list(self._section.conda_packages)

    @property
    def pip_packages(self) -> list[str]:
        return list(self._section.pip_packages)

    @property
    def conda_channels(self) -> list[str]:
        return list(self._section.channels)

    def get_python_version(self) -> str | None:
        return self._section.python_version

    # --------------------------------------------------------------- changing
    def add_pip_package(self, pip_package: str) -> None:
        """Add a pip requirement; one of the same name is replaced."""
        self._add("pip_package", pip_package)

    def add_conda_package(self, conda_package: str) -> None:
        """Add a conda spec; one of the same name is replaced."""
        self._add("conda_package", conda_package)

    def _add(self, field: str, spec: str) -> None:
        if not isinstance(spec, str):
            raise SpecError(
                f"CondaDependencies: {field} must be a string, got {spec!r}", field=field
            )
        if field.startswith("pip"):
            kept = [s for s in self._section.pip_packages if pip_name(s) != pip_name(spec)]
            self._update(field, pip_packages=[*kept, spec])
        else:
            name = _conda_name(spec)
            kept = [s for s in self._section.conda_packages if _conda_name(s) != name]
            self._update(field, conda_packages=[*kept, spec])

    def add_channel(self, channel: str) -> None:
        if not isinstance(channel, str):
            raise SpecError(
                f"CondaDependencies: a channel is a string, got {channel!r}", field="channel"
            )
        if channel not in self._section.channels:
            self._update("channel", channels=[*self._section.channels, channel])

    def remove_pip_package(self, pip_package: str) -> None:
        name = pip_name(pip_package)
        kept = [s for s in self._section.pip_packages if pip_name(s) != name]
        self._update("pip_package", pip_packages=kept)

    def remove_conda_package(self, conda_package: str) -> None:
        name = _conda_name(conda_package)
        kept = [s for s in self._section.conda_packages if _conda_name(s) != name]
        self._update("conda_package", conda_packages=kept)

    def set_python_version(self, version: str) -> None:
        self._update("python_version", python_version=version)

    def _update(self, field: str, **values: Any) -> None:
        checked = _section("CondaDependencies", field, self._section, **values)
        for key in values:  # assigned one by one: a bound section stays the same object
            setattr(self._section, key, getattr(checked, key))

    # --------------------------------------------------------------- writing
    def serialize_to_string(self) -> str:
        """The packages as an ``environment.yml``."""
        section = self._section
        dependencies: list[Any] = []
        if section.python_version:
            dependencies.append(f"python={section.python_version}")
        dependencies += list(section.conda_packages)
        if section.pip_packages:
            dependencies += ["pip", {"pip": list(section.pip_packages)}]
        data: dict[str, Any] = {"name": "project_environment", "dependencies": dependencies}
        if section.channels:
            data["channels"] = list(section.channels)
        return yaml.safe_dump(data, sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write ``serialize_to_string()`` to ``path``; returns it."""
        target = Path(path).expanduser()
        target.write_text(self.serialize_to_string())
        return target

    def __repr__(self) -> str:
        return (
            f"CondaDependencies(conda_packages={self.conda_packages!r}, "
            f"pip_packages={self.pip_packages!r})"
        )


def _get_conda_dependencies(section: PythonSection) -> CondaDependencies:
    return CondaDependencies._of(section)


def _set_conda_dependencies(section: PythonSection, value: CondaDependencies) -> None:
    if not isinstance(value, CondaDependencies):
        raise SpecError(
            "python.conda_dependencies takes a CondaDependencies, e.g. "
            f"CondaDependencies.create(pip_packages=['numpy']), got {value!r}",
            field="conda_dependencies",
        )
    source = value._section
    for key in ("conda_packages", "pip_packages", "channels", "pip_extra_index_urls"):
        setattr(section, key, list(getattr(source, key)))
    if source.python_version is not None:
        section.python_version = source.python_version


ATTACHED: tuple[tuple[type, str, Any], ...] = (
    (Environment, "get", classmethod(_get)),
    (Environment, "from_pip_requirements", classmethod(_from_pip_requirements)),
    (Environment, "from_conda_specification", classmethod(_from_conda_specification)),
    (Environment, "clone", _clone),
    (
        PythonSection,
        "conda_dependencies",
        property(_get_conda_dependencies, _set_conda_dependencies),
    ),
)
for _owner, _name, _value in ATTACHED:
    setattr(_owner, _name, _value)

__all__ = ["CondaDependencies", "Environment", "curated"]
