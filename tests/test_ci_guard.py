"""The CI guard of conftest.py, checked by running pytest on a tiny suite: with ``CI=true``
every skip but a gpu test's fails the run, however it was made; without it skips stay
skips, with their reasons."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from helpers import run_inner_suite

INNER_TESTS = """
import pytest

def test_plain_skip():
    pytest.skip("no frobnicator here")

def test_importorskip():
    pytest.importorskip("fitdock_no_such_module_xyz")

@pytest.mark.skipif(True, reason="skipif says so")
def test_skipif_mark():
    pass

@pytest.fixture
def needs_tool():
    pytest.skip("the fixture found no tool")

def test_skip_in_a_fixture(needs_tool):
    pass

@pytest.mark.gpu_like
def test_gpu_like_may_skip():
    pytest.skip("no such device")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False

def test_plain():
    pass
"""

SKIPPED_MODULE = """
import pytest
pytest.skip("this whole module needs a missing extra", allow_module_level=True)

def test_never_collected():
    pass
"""

# The real conftest; gpu_like stands for gpu, whichever machine runs this.
EXTRA = """
ALWAYS_SKIP.add("gpu_like")
"""

INI = """[pytest]
markers =
    gpu_like: like gpu, may skip in CI
"""

SKIPS = ("test_plain_skip", "test_importorskip", "test_skipif_mark", "test_skip_in_a_fixture")


def run_inner(
    tmp_path: Path, ci: str | None, tests: str = INNER_TESTS
) -> subprocess.CompletedProcess[str]:
    return run_inner_suite(tmp_path / "suite", tests, EXTRA, INI, ci)


def summary(done: subprocess.CompletedProcess[str]) -> str:
    last = done.stdout.strip().splitlines()[-1]
    return re.sub(r" in [0-9.]+s.*$", "", last.strip("= "))


def test_outside_ci_skips_stay_skips(tmp_path: Path) -> None:
    done = run_inner(tmp_path, "false")  # (unset: tests/test_markers.py)
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary(done) == "1 passed, 5 skipped, 1 xfailed", done.stdout
    for reason in ("no frobnicator here", "skipif says so", "the fixture found no tool"):
        assert reason in done.stdout
    assert "CI=true" not in done.stdout


def test_in_ci_every_skip_fails_but_a_gpu_one(tmp_path: Path) -> None:
    done = run_inner(tmp_path, " TRUE ")  # any case, blanks ignored, as conftest's in_ci()
    assert done.returncode == 1, done.stdout + done.stderr
    # a skip in the test body fails it; one in its setup (a mark, a fixture) is an error
    assert summary(done) == "2 failed, 1 passed, 1 skipped, 1 xfailed, 2 errors", done.stdout
    for name in SKIPS:
        assert re.search(rf"^(FAILED|ERROR) test_inner.py::{name}\b", done.stdout, re.M), name
    assert done.stdout.count("CI=true: only gpu tests may skip") >= len(SKIPS)
    for reason in ("no frobnicator here", "fitdock_no_such_module_xyz", "skipif says so"):
        assert reason in done.stdout
    assert re.search(r"^SKIPPED .*no such device", done.stdout, re.M)  # the gpu one
    assert re.search(r"^XFAIL test_inner.py::test_expected_failure", done.stdout, re.M)


def test_in_ci_a_module_that_skips_itself_is_a_collection_error(tmp_path: Path) -> None:
    outside = run_inner(tmp_path / "outside", None, SKIPPED_MODULE)
    assert outside.returncode == 5 and summary(outside) == "1 skipped", outside.stdout
    done = run_inner(tmp_path / "ci", "True", SKIPPED_MODULE)
    assert done.returncode == 2, done.stdout + done.stderr  # collection stopped
    assert re.search(r"^ERROR test_inner.py - CI=true: only gpu tests may skip", done.stdout, re.M)
    assert "this whole module needs a missing extra" in done.stdout
