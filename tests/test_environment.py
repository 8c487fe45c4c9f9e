"""``Environment.hash()``: a content hash, the same in every process and on every machine;
how a user's pip requirements merge with curated pins (``environments.pins``)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from packaging.specifiers import SpecifierSet

from fitdock import Environment
from fitdock.environments.catalogue import load_catalogue
from fitdock.environments.pins import PinOverride, UserRequirement, satisfiable, witness
from fitdock.environments.spec import DockerSection, PythonSection, normalize_pip
from fitdock.errors import SpecError

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


# ---------------------------------------------------------------------------------------------
# Curated pins and the user's requirements
# ---------------------------------------------------------------------------------------------
PINNED = ["chainer==7.8.1", "numpy>=1.24,<2"]


@pytest.mark.parametrize(
    ("mine", "expected"),
    [
        ("numpy", "numpy>=1.24,<2"),
        ("NumPy", "numpy>=1.24,<2"),
        (" numpy ", "numpy>=1.24,<2"),
        ('numpy; python_version > "3"', "numpy>=1.24,<2"),
        ("numpy[extra]", "numpy[extra]<2,>=1.24"),
        ("NumPy <2, >=1.24", "numpy>=1.24,<2"),  # the pin's own version is no override
    ],
)
def test_an_unversioned_requirement_keeps_the_curated_pin(mine: str, expected: str) -> None:
    merged = env(PINNED, name=CURATED).with_packages(pip=[mine, "pytest"])
    assert merged.python.pip_packages == ["chainer==7.8.1", expected, "pytest"]
    assert merged.pin_overrides == []


def test_an_unversioned_requirement_with_another_marker_stays_beside_a_marked_pin() -> None:
    base = env(['numpy>=1.24,<2; python_version < "3.13"'])
    merged = base.with_packages(pip=["numpy", 'numpy; python_version < "3.13"'])
    assert merged.python.pip_packages == ['numpy>=1.24,<2; python_version < "3.13"', "numpy"]


def test_curated_hash_holds_when_the_user_names_a_pinned_package_without_a_version() -> None:
    curated = load_catalogue().get(CURATED).to_environment()
    assert curated.with_packages(pip=["NumPy"]).hash() == curated.hash()


@pytest.mark.parametrize(
    "mine", ["numpy==1.26.4", "numpy>=1.25", "numpy @ https://example.invalid/numpy.whl"]
)
def test_a_versioned_requirement_replaces_the_pin_and_is_recorded(mine: str) -> None:
    base = env(PINNED, name=CURATED)
    merged = base.with_packages(pip=[UserRequirement(mine, "pip_requirements_file")])
    assert merged.python.pip_packages == ["chainer==7.8.1", mine]
    assert merged.pin_overrides == [
        PinOverride(
            package="numpy", curated="numpy>=1.24,<2", requested=mine, field="pip_requirements_file"
        )
    ]
    again = merged.with_packages(pip=["chainer>=7.8"])
    assert [o.package for o in again.pin_overrides] == ["numpy", "chainer"], "records add up"


def test_pin_overrides_are_not_hashed() -> None:
    base = env(PINNED)
    merged = base.with_packages(pip=["numpy==1.26.4"])
    assert merged.pin_overrides
    assert "pin_overrides" not in json.dumps(merged.canonical())
    assert merged.hash() == env(["chainer==7.8.1", "numpy==1.26.4"]).hash()
    assert Environment.model_validate(merged.model_dump(mode="json")) == merged


@pytest.mark.parametrize(
    ("mine", "field"),
    [
        ("numpy>=2", "pip_packages"),
        ("numpy==2.0.1", "pip_packages"),
        ("NumPy==2.*", "pip_requirements_file"),
        ('numpy~=2.1; python_version > "3"', "pip_requirements_file"),
    ],
)
def test_a_version_outside_the_pin_is_refused_naming_both(mine: str, field: str) -> None:
    with pytest.raises(SpecError) as info:
        env(PINNED, name=CURATED).with_packages(pip=[UserRequirement(mine, field)])
    assert info.value.field == field
    message = str(info.value)
    assert f"{field} {mine!r}" in message
    assert f"the curated pin 'numpy>=1.24,<2' of {CURATED}" in message
    assert "e.g. 'numpy==1.24'" in message
    assert "environment_definition=" in message


def test_two_user_lines_that_cannot_both_hold_are_refused_naming_both() -> None:
    mine = [UserRequirement("tqdm<4", "pip_requirements_file"), UserRequirement("tqdm>=4.66")]
    with pytest.raises(SpecError) as info:
        env(PINNED).with_packages(pip=mine)
    assert info.value.field == "pip_packages"
    assert "pip_packages 'tqdm>=4.66'" in str(info.value)
    assert "pip_requirements_file 'tqdm<4'" in str(info.value)


def test_user_lines_that_fit_the_pin_one_by_one_but_not_together_are_refused() -> None:
    mine = [UserRequirement("numpy>=1.20,!=1.24.*,!=1.25.*", "pip_requirements_file")]
    mine += [UserRequirement("numpy<1.26")]
    with pytest.raises(SpecError, match=r"pip_requirements_file .* and pip_packages ") as info:
        env(PINNED, name=CURATED).with_packages(pip=mine)
    assert info.value.field == "pip_packages"


def test_compatible_user_lines_are_kept_as_written() -> None:
    mine = [UserRequirement("numpy>=1.25", "pip_requirements_file"), UserRequirement("numpy<1.27")]
    merged = env(PINNED).with_packages(pip=mine)
    assert merged.python.pip_packages == ["chainer==7.8.1", "numpy>=1.25", "numpy<1.27"]
    assert [o.requested for o in merged.pin_overrides] == ["numpy>=1.25", "numpy<1.27"]


def test_unparseable_lines_pass_through() -> None:
    merged = env(PINNED).with_packages(pip=["./vendored/numpy", "git+https://x.invalid/y.git"])
    assert merged.python.pip_packages == [
        *PINNED,
        "./vendored/numpy",
        "git+https://x.invalid/y.git",
    ]


@pytest.mark.parametrize(
    ("one", "two", "fits"),
    [
        (">=1.24,<2", ">=2", False),
        (">=1.24,<2", "==2.0.1", False),
        (">=1.24,<2", "==1.26.4", True),
        (">=1.24,<2", "", True),
        ("==1.2.*", ">=1.3", False),
        ("==1.2.*", "<1.2", False),  # <1.2 excludes 1.2's pre-releases
        ("==1.2.*", "<=1.2", True),
        ("!=1.5.*", ">=1.5,<1.6", False),
        ("!=1.5.*", ">=1.5,<=1.6", True),
        ("~=1.4.5", ">=1.5", False),
        ("~=1.4.5", "<1.4.6", True),
        ("!=1.5", "==1.5", False),
        (">1.7", "<1.7.1", True),  # 1.7.0.0.1
        (">1.7", "<=1.7.post1", False),  # >1.7 excludes 1.7's post-releases
        ("<2", ">=2.dev0", False),
        ("<2rc1", ">=2.dev0", True),  # pre-releases allowed
        (">=1!1.0", "<2", False),  # epochs
        ("<1!0", ">=5", True),
        ("==1.0+a", "==1.0+b", False),
        ("==1.0+a", "==1.0", True),
        ("===1.0", "==1.0", True),
        ("===1.0", "===1.0.0", False),
        ("===foo", "<2", False),
        ("===foo", "===foo", True),
        (">1.0,<1.0.0.0.0.1", "", True),
    ],
)
def test_satisfiable_table(one: str, two: str, fits: bool) -> None:
    sets = (SpecifierSet(one), SpecifierSet(two))
    assert satisfiable(*sets) is fits
    found = witness(*sets)
    if found is not None:
        assert all(s.contains(found, prereleases=True) for s in sets)


_POOL = [
    f"{op}{version}"
    for version in ["1", "1.2", "2", "1.2rc1", "1.2.post1", "1.2.dev0", "1!1", "1.0.1"]
    for op in ["<", "<=", ">", ">=", "==", "!=", "~="]
    if op != "~=" or "." in version
] + ["==1.*", "!=1.2.*", "==1.2.*", "===1.2", "==1.2+loc", "!=1.2+loc"]
_GRID = [
    release + suffix
    for release in ["0", "1", "1.0.1", "1.1", "1.2", "1.2.1", "2", "1!1"]
    for suffix in ["", ".dev0", "a1", "rc1", ".post1", ".post1.dev0", ".post0"]
] + ["1.2+loc", "1!0", "1.0.0.0.1", "1.999", "3"]


def test_satisfiable_misses_no_pair_a_grid_of_versions_satisfies() -> None:
    """Whenever a version of the grid satisfies a pair of the pool, so must ``satisfiable``
    (and what it answers True, it answers with a witness)."""
    for one, two in itertools.combinations([SpecifierSet(s) for s in _POOL], 2):
        both = one & two
        if any(both.contains(v, prereleases=True) for v in _GRID):
            assert satisfiable(one, two), (str(one), str(two))


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
