"""Resolving an environment: which interpreter, which exact packages, which uv commands.

``lock_pip`` pins pip packages (``uv pip compile``); ``venv.ensure_venv(env, lock=...)``
installs exactly such a lock. conda-lock, which needs a conda channel to really lock (on
users' machines), is fed by ``render_environment_yml``/``conda_lock_spec``; its result is
read by ``read_conda_lock``. The uv plumbing lives in ``uvtool``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform as _platform
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fitdock import process
from fitdock.environments.spec import Environment
from fitdock.environments.uvtool import FitdockSource, run_uv, uv_options
from fitdock.errors import EnvironmentResolutionError, NotAvailableError, SpecError
from fitdock.shared import fitdock_home

__all__ = [
    "conda_lock_spec",
    "default_lock_path",
    "lock_pip",
    "python_key",
    "read_conda_lock",
    "render_environment_yml",
]

LOCK_KEY = re.compile(r"^# fitdock-python-key: ([0-9a-f]{64})\s*$", re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------
def python_version_of(env: Environment) -> str:
    """The environment's ``python_version``, or this interpreter's X.Y when unset."""
    return env.python.python_version or "{}.{}".format(*sys.version_info[:2])


def python_key(env: Environment) -> str:
    """A sha256 of what a venv and a pip lock depend on: the python section, version set."""
    section = env.canonical()["python"]
    del section["user_managed_dependencies"], section["interpreter_path"]
    section["python_version"] = python_version_of(env)
    return sha256_json(section)


def default_lock_path(env: Environment, home: Path | None = None) -> Path:
    """Where ``ensure_venv`` looks for a lock of ``env`` when none is given."""
    return (home or fitdock_home()) / "locks" / f"{python_key(env)[:16]}.txt"


def sha256_json(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# pip locks
# ---------------------------------------------------------------------------------------------
def lock_pip(env: Environment, out: Path) -> Path:
    """Pin the pip packages of ``env`` (and fitdock's own requirements) with
    ``uv pip compile`` for its Python version; write them to ``out``; return ``out``."""
    if env.python.conda_packages:
        raise NotAvailableError(
            "lock_pip pins pip packages only; an environment with conda packages is locked "
            "with conda-lock (render_environment_yml)"
        )
    source = FitdockSource.running()
    packages = env.canonical()["python"]["pip_packages"]
    fitdock_reqs = [f"-e {source.checkout}"] if source.checkout else source.requirements()
    with tempfile.TemporaryDirectory(prefix="fitdock-lock-") as tmp:
        work = Path(tmp)
        (work / "requirements.in").write_text("\n".join([*packages, *fitdock_reqs]) + "\n")
        args = ["pip", "compile", "requirements.in", "-o", "requirements.txt", "--no-header",
                "--color", "never", "--python-version", python_version_of(env),
                *uv_options(env, work)]  # fmt: skip
        run_uv(args, logs=[work / "compile.log"], cwd=work)
        body = _without_editables((work / "requirements.txt").read_text())
    header = (
        f"# Pinned by fitdock with `uv pip compile` for environment {env.name!r}, "
        f"Python {python_version_of(env)}.\n"
        f"# environment hash: {env.hash()}\n"
        f"# fitdock-python-key: {python_key(env)}\n"
        "# Install: fitdock.environments.venv.ensure_venv(env, lock=<this file>)\n"
    )
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.tmp")
    partial.write_text(header + body)
    os.replace(partial, out)
    return out


def _without_editables(text: str) -> str:
    """Drop ``-e <path>`` lines (fitdock's checkout: machine-specific) and their comments."""
    return re.sub(r"^-e .*\n(?:[ \t]+#.*\n)*", "", text, flags=re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# conda
# ---------------------------------------------------------------------------------------------
def render_environment_yml(env: Environment) -> str:
    """A conda environment file: channels (conda-forge when none), python, the conda
    packages, then pip's. Extra index URLs become conda-lock's ``pip-repositories``."""
    py = env.canonical()["python"]
    dependencies: list[Any] = [f"python={python_version_of(env)}", *py["conda_packages"]]
    if py["pip_packages"]:
        has_pip = any(re.match(r"^pip([=<>!~ ]|$)", spec) for spec in py["conda_packages"])
        dependencies += [*([] if has_pip else ["pip"]), {"pip": py["pip_packages"]}]
    document: dict[str, Any] = {
        "name": env.name,
        "channels": py["channels"] or ["conda-forge"],
        "dependencies": dependencies,
    }
    if py["pip_extra_index_urls"]:
        document["pip-repositories"] = py["pip_extra_index_urls"]
    if env.environment_variables:
        document["variables"] = dict(sorted(env.environment_variables.items()))
    header = f"# fitdock environment {env.name!r}, hash {env.hash()}\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def conda_lock_spec(
    env: Environment, workdir: Path, *, platforms: Sequence[str] = ("linux-64",)
) -> str:
    """conda-lock's lock specification (JSON, ``render-lock-spec --kind raw``) of ``env``,
    made offline: ``workdir`` receives environment.yml and an empty PyPI-to-conda lookup."""
    if importlib.util.find_spec("conda_lock") is None:
        raise NotAvailableError("conda-lock is not installed: pip install 'fitdock[lock]'")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "environment.yml").write_text(render_environment_yml(env))
    (workdir / "pypi-to-conda.json").write_text("{}\n")
    argv = [sys.executable, "-W", "ignore::UserWarning", "-m", "conda_lock", "render-lock-spec",
            "--kind", "raw", "--stdout", "--log-level", "ERROR", "-f", "environment.yml",
            "--pypi_to_conda_lookup_file", "pypi-to-conda.json"]  # fmt: skip
    argv += [arg for name in platforms for arg in ("--platform", name)]
    code, out = process.capture(argv, timeout=120, cwd=str(workdir))
    try:
        json.loads(out)
    except ValueError:
        code = code or 1
    if code != 0:
        raise EnvironmentResolutionError(f"conda-lock render-lock-spec failed:\n{out.strip()}")
    return out


def conda_platform() -> str:
    """This machine's conda platform name, e.g. ``linux-64``, ``osx-arm64``."""
    system = {"Linux": "linux", "Darwin": "osx", "Windows": "win"}.get(_platform.system(), "")
    machine = _platform.machine().lower().replace("x86_64", "64").replace("amd64", "64")
    return f"{system}-{'aarch64' if system == 'linux' and machine == 'arm64' else machine}"


def read_conda_lock(path: Path, platform: str | None = None) -> list[str]:
    """The pins of a conda-lock file (``conda-lock.yml``, version 1) for ``platform`` (this
    machine's by default): ``name=version=build`` for conda, ``name==version`` for pip."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read conda-lock file {path}: {exc}", field="lock") from exc
    if not isinstance(data, dict) or data.get("version") != 1:
        raise SpecError(f"{path} is not a conda-lock file (version: 1)", field="lock")
    packages = data.get("package") or []
    platform = platform or conda_platform()
    pins = {_pin(item) for item in packages if item.get("platform") == platform}
    if not pins:
        covered = sorted({str(item.get("platform")) for item in packages}) or ["none"]
        raise EnvironmentResolutionError(
            f"{path} has no packages for {platform}; it covers: {', '.join(covered)}"
        )
    return sorted(pins)


def _pin(item: dict[str, Any]) -> str:
    if item.get("manager") == "pip":
        return f"{item['name']}=={item['version']}"
    build = item.get("build")
    return f"{item['name']}={item['version']}" + (f"={build}" if build else "")
