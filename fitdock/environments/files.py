"""Read users' dependency files: a conda ``environment.yml`` and a pip requirements file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fitdock.environments.spec import check_conda_spec, check_pip_spec, check_word
from fitdock.errors import SpecError


def read_requirements(path: Path, field: str, _seen: frozenset[Path] = frozenset()) -> list[str]:
    """Package lines of a requirements file; ``-r other.txt`` includes are followed."""
    if path in _seen:
        raise SpecError(f"{field}: {path} includes itself through -r", field=field)
    specs: list[str] = []
    for raw in _read(path, field).splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            include = path.parent / line.split(None, 1)[1].strip()
            specs += read_requirements(include, field, _seen | {path})
        elif line.startswith("-"):
            raise SpecError(
                f"{field}: {path} has the pip option {line!r}; only package lines and -r are "
                "supported (put index URLs in Environment.python.pip_extra_index_urls)",
                field=field,
            )
        else:
            specs.append(_checked(check_pip_spec, line, path, field))
    return specs


def _checked(check: Callable[[str], str], spec: str, path: Path, field: str) -> str:
    """``spec`` when ``check`` passes it, else a ``SpecError`` naming the file and field."""
    try:
        return check(spec)
    except ValueError as exc:
        raise SpecError(f"{field}: {path}: {exc}", field=field) from None


def read_conda_file(path: Path, field: str) -> dict[str, Any]:
    """``{"channels", "conda", "pip", "python_version"}`` from an environment.yml."""
    try:
        data = yaml.safe_load(_read(path, field)) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{field}: {path} is not valid YAML: {exc}", field=field) from exc
    if not isinstance(data, dict):
        raise SpecError(f"{field}: {path} must be a mapping with 'dependencies'", field=field)
    conda: list[str] = []
    pip: list[str] = []
    python_version = None
    for key in ("dependencies", "channels"):
        if not isinstance(data.get(key) or [], list):
            raise SpecError(f"{field}: {path}: {key} must be a list", field=field)
    for dep in data.get("dependencies") or []:
        if isinstance(dep, dict) and "pip" in dep:
            if not isinstance(dep["pip"] or [], list):
                raise SpecError(f"{field}: {path}: pip must be a list of packages", field=field)
            pip += [_checked(check_pip_spec, str(item), path, field) for item in dep["pip"] or []]
        elif isinstance(dep, str):
            name = dep.split("=")[0].split("<")[0].split(">")[0].strip()
            if name == "python" and "=" in dep:
                python_version = dep.split("=")[-1].strip().rstrip(".*") or None
            else:
                conda.append(_checked(check_conda_spec, dep, path, field))
        else:
            raise SpecError(
                f"{field}: {path} has a dependency {dep!r} fitdock cannot read", field=field
            )
    channels = [str(c) for c in data.get("channels") or []]
    for channel in channels:
        _checked(lambda text: check_word(text, "a conda channel"), channel, path, field)
    return {
        "channels": channels,
        "conda": conda,
        "pip": pip,
        "python_version": python_version,
    }


def _read(path: Path, field: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise SpecError(f"{field}: cannot read {path}: {exc.strerror}", field=field) from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"{field}: {path} is not UTF-8 text: {exc}", field=field) from exc
