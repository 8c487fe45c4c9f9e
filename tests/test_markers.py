"""The marker rules of conftest.py, checked by running pytest on a tiny suite: a missing
tool skips with its reason, fails with CI=true, and ``gpu`` always skips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import run_inner_suite

INNER_TESTS = """
import pytest

@pytest.mark.needs_nothing_here
def test_tool():
    pass

@pytest.mark.gpu_like
def test_gpu_like():
    pass

def test_plain():
    pass
"""

# The real conftest, plus two tools that are never available (so that the result does not
# depend on what this machine has installed).
EXTRA = """
TOOLS["needs_nothing_here"] = lambda: "the tool is never here"
TOOLS["gpu_like"] = lambda: "no such device"
ALWAYS_SKIP.add("gpu_like")
"""

INI = """[pytest]
markers =
    needs_nothing_here: a tool that is never available
    gpu_like: like gpu, always skipped
"""


def run_inner(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    return run_inner_suite(tmp_path / "suite", INNER_TESTS, EXTRA, INI, ci)


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_tool_skips_with_its_reason(tmp_path: Path, ci: str | None) -> None:
    done = run_inner(tmp_path, ci)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 2 skipped" in done.stdout
    assert "[needs_nothing_here] the tool is never here" in done.stdout
    assert "[gpu_like] no such device" in done.stdout


def test_missing_tool_fails_in_ci_but_gpu_still_skips(tmp_path: Path) -> None:
    done = run_inner(tmp_path, "true")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "CI=true, so this fails instead of skipping" in done.stdout
    assert "1 passed, 1 skipped, 1 error" in done.stdout
    assert "SKIPPED" in done.stdout and "[gpu_like] no such device" in done.stdout


def test_update_golden_option_is_registered(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.getoption("--update-golden") in (True, False)
