"""Locks: ``uv pip compile`` pins, venvs built from a lock, environment.yml rendering,
conda-lock's lock specification (offline) and reading a conda-lock file."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from fitdock.environments.lock import (
    conda_lock_spec,
    default_lock_path,
    lock_pip,
    python_key,
    read_conda_lock,
    render_environment_yml,
)
from fitdock.environments.spec import Environment, PythonSection
from fitdock.environments.venv import ensure_venv
from fitdock.errors import EnvironmentResolutionError, NotAvailableError, SpecError

PIN = re.compile(r"^([a-z0-9][a-z0-9._-]*)==([^\s;]+)", re.MULTILINE)
SMALL = Environment(name="small", python=PythonSection(pip_packages=["six", "packaging<25"]))


def pins(text: str) -> dict[str, str]:
    return dict(PIN.findall(text))


# ---------------------------------------------------------------------------------------------
# pip locks
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lock_pins_exact_versions(tmp_path: Path) -> None:
    out = lock_pip(SMALL, tmp_path / "locks" / "small.txt")
    text = out.read_text()
    pinned = pins(text)
    assert {"six", "packaging", "pydantic"} <= set(pinned)  # fitdock's own requirements too
    assert int(pinned["packaging"].split(".")[0]) < 25
    assert f"# environment hash: {SMALL.hash()}" in text
    assert f"# fitdock-python-key: {python_key(SMALL)}" in text
    assert "-e " not in text and str(tmp_path) not in text
    for line in text.splitlines():
        assert line.startswith(("#", " ")) or PIN.match(line), line


@pytest.mark.slow
def test_venv_from_a_lock_has_exactly_its_versions(tmp_path: Path) -> None:
    lock = lock_pip(SMALL, tmp_path / "small.txt")
    built = ensure_venv(SMALL, lock=lock)
    assert built.built and built.lock == lock
    installed = dict(spec.split("==") for spec in built.packages)
    assert installed.pop("fitdock")
    assert installed == pins(lock.read_text())

    again = ensure_venv(SMALL, lock=lock)
    assert not again.built and again.path == built.path and again.lock == lock
    assert ensure_venv(SMALL).path != built.path  # no lock: another environment

    other = Environment(python=PythonSection(pip_packages=["six"]))
    with pytest.raises(EnvironmentResolutionError, match="was made for other packages"):
        ensure_venv(other, lock=lock)


@pytest.mark.slow
def test_a_lock_at_the_default_path_is_used(fitdock_home: Path) -> None:
    lock = lock_pip(SMALL, default_lock_path(SMALL))
    assert lock.parent == fitdock_home / "locks"
    built = ensure_venv(SMALL)
    assert built.lock == lock
    assert "uv pip sync" in (built.path / "build.log").read_text()


def test_lock_pip_refuses_conda_packages(tmp_path: Path) -> None:
    env = Environment(python=PythonSection(conda_packages=["numpy"]))
    with pytest.raises(NotAvailableError, match="conda-lock"):
        lock_pip(env, tmp_path / "lock.txt")


# ---------------------------------------------------------------------------------------------
# environment.yml and conda-lock
# ---------------------------------------------------------------------------------------------
MIXED = Environment(
    name="mixed",
    python=PythonSection(
        python_version="3.11",
        channels=["conda-forge", "nvidia"],
        conda_packages=["NumPy = 1.26", "mpi4py"],
        pip_packages=["Six", "packaging<25"],
        pip_extra_index_urls=["https://download.example/cpu"],
    ),
    environment_variables={"SETUPTOOLS_USE_DISTUTILS": "stdlib"},
)


def test_render_environment_yml() -> None:
    assert render_environment_yml(MIXED) == textwrap.dedent(
        f"""\
        # fitdock environment 'mixed', hash {MIXED.hash()}
        name: mixed
        channels:
        - conda-forge
        - nvidia
        dependencies:
        - python=3.11
        - mpi4py
        - numpy=1.26
        - pip
        - pip:
          - packaging<25
          - six
        pip-repositories:
        - https://download.example/cpu
        variables:
          SETUPTOOLS_USE_DISTUTILS: stdlib
        """
    )


def test_render_environment_yml_defaults() -> None:
    text = render_environment_yml(Environment(python=PythonSection(conda_packages=["scipy"])))
    version = "{}.{}".format(*sys.version_info[:2])
    assert f"channels:\n- conda-forge\ndependencies:\n- python={version}\n- scipy\n" in text
    assert "pip" not in text and "variables" not in text


def test_conda_lock_spec_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # conda-lock is the `lock` extra, in `all` (scripts/setup-venv.sh): without it this fails
    # with conda_lock_spec's own NotAvailableError, which names the extra
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # any network use would fail
    spec = json.loads(conda_lock_spec(MIXED, tmp_path / "work"))
    deps = {(d["manager"], d["name"]): d["version"] for d in spec["dependencies"]["linux-64"]}
    assert deps[("conda", "python")] == "3.11.*"
    assert deps[("conda", "numpy")] == "1.26.*"
    assert ("conda", "mpi4py") in deps
    assert deps[("pip", "packaging")] == "<25"
    assert ("pip", "six") in deps
    assert [c["url"] for c in spec["channels"]] == ["conda-forge", "nvidia"]
    assert [r["url"] for r in spec["pip_repositories"]] == ["https://download.example/cpu"]
    assert (tmp_path / "work" / "environment.yml").read_text() == render_environment_yml(MIXED)


CONDA_LOCK_V1 = """\
version: 1
metadata:
  content_hash: {linux-64: abc, osx-arm64: def}
  channels: [{url: conda-forge, used_env_vars: []}]
  platforms: [linux-64, osx-arm64]
  sources: [environment.yml]
package:
- name: python
  version: 3.11.9
  manager: conda
  platform: linux-64
  dependencies: {}
  url: https://conda.anaconda.org/conda-forge/linux-64/python-3.11.9-hb806964_0_cpython.conda
  hash: {md5: 0, sha256: 0}
  build: hb806964_0_cpython
  category: main
  optional: false
- name: numpy
  version: 1.26.4
  manager: conda
  platform: linux-64
  dependencies: {python: '>=3.11,<3.12.0a0'}
  url: https://conda.anaconda.org/conda-forge/linux-64/numpy-1.26.4-py311h64a7726_0.conda
  hash: {md5: 0, sha256: 0}
  category: main
  optional: false
- name: six
  version: 1.17.0
  manager: pip
  platform: linux-64
  dependencies: {}
  url: https://files.pythonhosted.org/packages/six-1.17.0-py2.py3-none-any.whl
  hash: {sha256: 0}
  category: main
  optional: false
- name: numpy
  version: 1.26.3
  manager: conda
  platform: osx-arm64
  dependencies: {}
  url: https://conda.anaconda.org/conda-forge/osx-arm64/numpy-1.26.3-py311h.conda
  hash: {md5: 0, sha256: 0}
  category: main
  optional: false
"""


def test_read_conda_lock(tmp_path: Path) -> None:
    path = tmp_path / "conda-lock.yml"
    path.write_text(CONDA_LOCK_V1)
    assert read_conda_lock(path, "linux-64") == [
        "numpy=1.26.4",
        "python=3.11.9=hb806964_0_cpython",
        "six==1.17.0",
    ]
    assert read_conda_lock(path, "osx-arm64") == ["numpy=1.26.3"]
    with pytest.raises(EnvironmentResolutionError, match="covers: linux-64, osx-arm64"):
        read_conda_lock(path, "win-64")


def test_read_conda_lock_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text(render_environment_yml(MIXED))
    with pytest.raises(SpecError, match="not a conda-lock file"):
        read_conda_lock(path)
    with pytest.raises(SpecError, match="cannot read"):
        read_conda_lock(tmp_path / "missing.yml")
