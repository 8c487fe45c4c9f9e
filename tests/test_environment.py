"""``Environment.hash()``: a content hash, the same in every process and on every machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from fitdock import Environment
from fitdock.environments.catalogue import load_catalogue
from fitdock.environments.spec import DockerSection, PythonSection, normalize_pip

CURATED = "chainer-7.8.1-cpu"


def env(
    pip: list[str] | None = None,
    conda: list[str] | None = None,
    name: str = "fitdock-user-env",
    **kwargs: object,
) -> Environment:
    python = PythonSection(pip_packages=pip or [], conda_packages=conda or [])
    return Environment(name=name, python=python, **kwargs)  # type: ignore[arg-type]


def test_hash_is_a_sha256_hex_digest() -> None:
    digest = env(["numpy==1.26.4"]).hash()
    assert len(digest) == 64
    int(digest, 16)


def test_hash_ignores_package_order() -> None:
    assert (
        env(["numpy>=1.2", "scipy", "rich==13"]).hash()
        == env(["rich==13", "scipy", "numpy>=1.2"]).hash()
    )
    assert env(conda=["numpy=1.26", "scipy"]).hash() == env(conda=["scipy", "numpy=1.26"]).hash()


def test_hash_ignores_variable_order() -> None:
    one = env(environment_variables={"A": "1", "B": "2"})
    two = env(environment_variables={"B": "2", "A": "1"})
    assert one.hash() == two.hash()


def test_hash_ignores_name_and_label() -> None:
    assert env(["numpy"], name="mine").hash() == env(["numpy"], name="yours").hash()
    assert env(["numpy"], version="1").hash() == env(["numpy"], version="2").hash()


@pytest.mark.parametrize(
    ("one", "two"),
    [
        ("NumPy >= 1.2", "numpy>=1.2"),
        ("Foo_Bar.Baz==1.0", "foo-bar-baz==1.0"),
        ("numpy<2,>=1.24", "numpy>=1.24,<2"),
        ("requests[socks,security]>=2", "requests[security,socks] >= 2"),
    ],
)
def test_hash_normalizes_pip_specs(one: str, two: str) -> None:
    assert normalize_pip(one) == normalize_pip(two)
    assert env([one]).hash() == env([two]).hash()


def test_hash_normalizes_conda_specs() -> None:
    assert env(conda=["NumPy = 1.26"]).hash() == env(conda=["numpy=1.26"]).hash()


def test_hash_of_duplicates_equals_hash_of_one() -> None:
    assert env(["numpy>=1.2", "NumPy >= 1.2"]).hash() == env(["numpy>=1.2"]).hash()


@pytest.mark.parametrize(
    "changed",
    [
        env(["numpy==1.26.5"]),
        env(["numpy==1.26.4", "scipy"]),
        env(["numpy==1.26.4"], environment_variables={"A": "1"}),
        env(["numpy==1.26.4"], docker=DockerSection(base_image="debian:bookworm")),
        env(["numpy==1.26.4"], docker=DockerSection(shm_size="2g")),
        Environment(python=PythonSection(pip_packages=["numpy==1.26.4"], python_version="3.12")),
        Environment(
            python=PythonSection(pip_packages=["numpy==1.26.4"], user_managed_dependencies=True)
        ),
    ],
)
def test_hash_changes_with_contents(changed: Environment) -> None:
    assert changed.hash() != env(["numpy==1.26.4"]).hash()


def test_channel_order_is_priority_and_counts() -> None:
    one = Environment(python=PythonSection(channels=["conda-forge", "defaults"]))
    two = Environment(python=PythonSection(channels=["defaults", "conda-forge"]))
    assert one.hash() != two.hash()


HASH_IN_CHILD = """
import json, sys
from fitdock import Environment
from fitdock.environments.catalogue import load_catalogue
spec = json.loads(sys.argv[1])
print(json.dumps([Environment.model_validate(spec).hash(),
                  load_catalogue().get(sys.argv[2]).to_environment().hash()]))
"""


@pytest.mark.parametrize("seed", ["1", "4242"])
def test_hash_is_stable_across_processes(seed: str) -> None:
    mine = Environment(
        python=PythonSection(pip_packages=["b", "a>=1", "c[x,y]"], conda_packages=["z", "y=1"]),
        environment_variables={"K1": "v", "K2": "w", "K3": "x"},
    )
    child_env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run(
        [sys.executable, "-c", HASH_IN_CHILD, mine.model_dump_json(), CURATED],
        capture_output=True,
        text=True,
        env=child_env,
        check=True,
        timeout=60,
    )
    theirs, curated = json.loads(done.stdout)
    assert theirs == mine.hash()
    assert curated == load_catalogue().get(CURATED).to_environment().hash()


def test_curated_chainer_hash_matches_the_golden_file(golden: Callable[[str, str], None]) -> None:
    curated = load_catalogue().get(CURATED).to_environment()
    # The canonical form first: when the hash changes, its diff says why.
    golden(
        f"{CURATED}.canonical.json",
        json.dumps(curated.canonical(), indent=2, sort_keys=True) + "\n",
    )
    golden(f"{CURATED}.hash", curated.hash() + "\n")


def test_with_packages_replaces_same_name_and_keeps_the_rest() -> None:
    base = env(["numpy>=1.24,<2", "chainer==7.8.1"], conda=["mkl=2024"])
    merged = base.with_packages(pip=["NumPy==1.26.4", "tqdm"], conda=["MKL=2023"])
    assert merged.python.pip_packages == ["chainer==7.8.1", "NumPy==1.26.4", "tqdm"]
    assert merged.python.conda_packages == ["MKL=2023"]
    assert base.python.pip_packages == ["numpy>=1.24,<2", "chainer==7.8.1"], "base must not change"


@pytest.mark.parametrize(
    ("section", "kwargs", "words"),
    [
        (PythonSection, {"pip_packages": ["--index-url=x"]}, "pip option"),
        (PythonSection, {"pip_packages": [" "]}, "must not be empty"),
        (PythonSection, {"conda_packages": ["not a spec!"]}, "conda package spec"),
        (PythonSection, {"python_version": "2.7"}, "python_version"),
        (DockerSection, {"shm_size": "lots"}, "shm_size"),
        (Environment, {"environment_variables": {"1BAD": "x"}}, "environment variable name"),
    ],
)
def test_environment_validation_messages(section: type, kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        section(**kwargs)
