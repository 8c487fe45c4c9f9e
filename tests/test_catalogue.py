"""The curated catalogue: rows are consistent, history maps forward, errors list choices."""

from __future__ import annotations

import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from fitdock import Chainer, Estimator, PyTorch
from fitdock.environments.catalogue import load_catalogue
from fitdock.errors import EnvironmentResolutionError

CATALOGUE = load_catalogue()
HISTORY = [row for row in CATALOGUE.rows if not row.buildable]
CURRENT = [row for row in CATALOGUE.rows if row.buildable]


def test_row_names_and_keys_are_unique() -> None:
    names = [row.name for row in CATALOGUE.rows]
    assert len(names) == len(set(names))
    keys = [(row.framework, row.framework_version, row.gpu) for row in CATALOGUE.rows]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("row", HISTORY, ids=lambda row: row.name)
def test_history_rows_point_at_a_buildable_row_of_the_same_kind(row) -> None:  # type: ignore[no-untyped-def]
    target = CATALOGUE.get(row.replaced_by)
    assert target.buildable
    assert (target.framework, target.gpu) == (row.framework, row.gpu)


@pytest.mark.parametrize("row", CURRENT, ids=lambda row: row.name)
def test_current_rows_replace_nothing(row) -> None:  # type: ignore[no-untyped-def]
    assert row.replaced_by is None


@pytest.mark.parametrize("framework", ["chainer", "pytorch", "none"])
@pytest.mark.parametrize("gpu", [False, True])
def test_every_default_has_a_buildable_cpu_and_gpu_row(framework: str, gpu: bool) -> None:
    row = CATALOGUE.lookup(framework, None, gpu)  # type: ignore[arg-type]
    assert row.buildable
    assert row.framework_version == CATALOGUE.default_version(framework)  # type: ignore[arg-type]
    assert row.gpu is gpu


@pytest.mark.parametrize("cls", [Estimator, Chainer, PyTorch])
def test_estimator_defaults_match_the_catalogue(cls: type[Estimator]) -> None:
    assert CATALOGUE.default_version(cls._FRAMEWORK) == cls.DEFAULT_VERSION
    assert cls.DEFAULT_VERSION in cls.get_supported_versions()


@pytest.mark.parametrize(
    ("framework", "version", "target"),
    [
        ("chainer", "5.1.0", "chainer-7.8.1-cpu"),
        ("chainer", "7.0.0", "chainer-7.8.1-cpu"),
        ("pytorch", "1.6", "pytorch-2.13.0-cpu"),
    ],
)
def test_history_lookup_warns_and_returns_the_replacement(
    framework: str, version: str, target: str
) -> None:
    with pytest.warns(FutureWarning, match=rf"{version}.*no longer builds; using {target}"):
        row = CATALOGUE.lookup(framework, version, False)  # type: ignore[arg-type]
    assert row.name == target


def test_unknown_version_lists_supported_versions_and_default() -> None:
    with pytest.raises(EnvironmentResolutionError) as info:
        CATALOGUE.lookup("chainer", "6.0.0", False)
    assert str(info.value) == (
        "framework_version='6.0.0' is not supported for chainer; "
        "choose one of: 5.1.0, 7.0.0, 7.8.1 (default 7.8.1)"
    )


def test_unknown_row_name_lists_the_known_ones() -> None:
    with pytest.raises(EnvironmentResolutionError, match="no curated environment 'nope'") as info:
        CATALOGUE.get("nope")
    for row in CATALOGUE.rows:
        assert row.name in str(info.value)


def test_supported_versions_are_sorted_numerically() -> None:
    assert CATALOGUE.supported_versions("pytorch") == ["1.6", "2.13.0"]
    assert CATALOGUE.supported_versions("chainer") == ["5.1.0", "7.0.0", "7.8.1"]


@pytest.mark.parametrize(
    "row", [r for r in CURRENT if r.framework == "chainer"], ids=lambda r: r.name
)
def test_current_chainer_rows_carry_the_run_time_pins(row) -> None:  # type: ignore[no-untyped-def]
    """Chainer 7.8.1 needs numpy < 2, setuptools < 82 and SETUPTOOLS_USE_DISTUTILS=stdlib."""
    reqs = {Requirement(spec).name: Requirement(spec) for spec in row.pip_packages}
    assert str(reqs["chainer"].specifier) == "==7.8.1"
    assert not reqs["numpy"].specifier.contains("2.0.0")
    assert reqs["numpy"].specifier.contains("1.26.4")
    assert not reqs["setuptools"].specifier.contains("82.0.0")
    assert row.environment_variables == {"SETUPTOOLS_USE_DISTUTILS": "stdlib"}
    assert row.to_environment().environment_variables["SETUPTOOLS_USE_DISTUTILS"] == "stdlib"


def test_gpu_chainer_row_stays_on_cupy_13() -> None:
    row = CATALOGUE.get("chainer-7.8.1-gpu")
    cupy = next(Requirement(s) for s in row.pip_packages if s.startswith("cupy"))
    assert cupy.specifier.contains("13.3.0") and not cupy.specifier.contains("14.0.0")


TORCH_GPU = [r for r in CURRENT if r.framework == "pytorch" and r.gpu]


@pytest.mark.parametrize("row", TORCH_GPU, ids=lambda r: r.name)
def test_gpu_torch_rows_carry_the_torchvision_of_their_torch(row) -> None:  # type: ignore[no-untyped-def]
    """Azure's curated PyTorch images shipped torchvision: ours too, and the pair resolves
    (torchvision pins torch exactly). Resolved from PyPI's metadata with uv for the row's
    Python on Linux: the GPU wheels themselves cannot be installed on this CPU machine."""
    reqs = {Requirement(spec).name: str(Requirement(spec)) for spec in row.pip_packages}
    assert "torchvision" in reqs, f"{row.name} has no torchvision"
    python = row.python_version or "3.11"
    argv = [sys.executable, "-m", "uv", "pip", "compile", "-", "--python-version", python,
            "--python-platform", "x86_64-manylinux_2_28", "-q"]  # fmt: skip
    done = subprocess.run(
        argv, input=f"{reqs['torch']}\n{reqs['torchvision']}\n", capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    resolved = {line.split("==")[0]: line.split("==")[1] for line in done.stdout.splitlines()
                if "==" in line and not line.startswith("#")}  # fmt: skip
    assert f"torch=={resolved['torch']}" == reqs["torch"]
    assert f"torchvision=={resolved['torchvision']}" == reqs["torchvision"]


def test_to_environment_carries_the_row() -> None:
    row = CATALOGUE.get("pytorch-2.13.0-cpu")
    env = row.to_environment()
    assert env.name == row.name
    assert env.version == "2.13.0"
    assert env.python.pip_packages == list(row.pip_packages)
    assert env.python.pip_extra_index_urls == ["https://download.pytorch.org/whl/cpu"]
    assert env.docker.base_image == row.base_image
    assert env.docker.gpu_support is False
