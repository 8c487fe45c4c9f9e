"""The public surface: ``fitdock.__all__`` pinned, imports light, dependencies declared."""

from __future__ import annotations

import ast
import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import fitdock

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fitdock"

EXPECTED_ALL = [
    "Chainer",
    "CondaDependencies",
    "DockerConfiguration",
    "Environment",
    "Estimator",
    "EstimatorStep",
    "Experiment",
    "FitdockError",
    "Horovod",
    "Hosts",
    "Model",
    "Mpi",
    "MpiConfiguration",
    "Pipeline",
    "PipelineData",
    "PipelineParameter",
    "PipelineRun",
    "PyTorch",
    "PyTorchConfiguration",
    "PythonScriptStep",
    "Run",
    "RunConfiguration",
    "RunStatus",
    "ScriptRunConfig",
    "Slurm",
    "StepSequence",
    "__version__",
]
HEAVY = ("pydantic", "torch", "chainer", "chainermn", "cupy", "mpi4py", "docker", "pandas")


def test_all_is_pinned() -> None:
    assert fitdock.__all__ == EXPECTED_ALL


def test_every_exported_name_resolves() -> None:
    for name in fitdock.__all__:
        assert getattr(fitdock, name) is not None, name
    assert fitdock.Run.__module__ == "fitdock.execution.run"
    assert issubclass(fitdock.Chainer, fitdock.Estimator)
    assert issubclass(fitdock.PyTorch, fitdock.Estimator)
    assert sorted(dir(fitdock)) == sorted(EXPECTED_ALL)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        fitdock.Nope  # noqa: B018


def test_version_is_a_string() -> None:
    assert isinstance(fitdock.__version__, str)
    assert fitdock.__version__.count(".") >= 2


IMPORTS = {
    "import fitdock": "import fitdock",
    "Run.get_context()": "import fitdock\nfrom fitdock import Run\nctx = Run.get_context()",
}
REPORT = "import json, sys\nprint(json.dumps(sorted(sys.modules)))"


@pytest.mark.parametrize("code", list(IMPORTS.values()), ids=list(IMPORTS))
def test_import_pulls_in_no_heavy_package(code: str, tmp_path: Path) -> None:
    """Every rank of every job imports fitdock: it must stay light. ``-X importtime``
    lists what the import loaded; ``sys.modules`` after it must agree."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"{code}\n{REPORT}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # an offline Run.get_context() creates ./outputs and ./checkpoints
        timeout=60,
        check=True,
    )
    timed = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "fitdock" in timed, "-X importtime should list fitdock"
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert "fitdock" in loaded
    for heavy in HEAVY:
        assert heavy not in timed, f"`{code}` imported {heavy} (-X importtime)"
        assert heavy not in loaded, f"`{code}` left {heavy} in sys.modules"


# ---------------------------------------------------------------------------------------------
# Every third-party module fitdock imports at module level is a declared dependency
# ---------------------------------------------------------------------------------------------
IMPORT_NAMES = {"pyyaml": "yaml"}  # distribution name -> import name where they differ


def _declared() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].strip().splitlines()
    names = {Requirement(line.strip()).name.lower() for line in lines if line.strip()}
    return {IMPORT_NAMES.get(name, name) for name in names}


def _module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported when ``path`` is imported (not inside functions or
    ``if TYPE_CHECKING:``)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_module_level_imports_are_declared_dependencies() -> None:
    declared = _declared()
    stdlib = set(sys.stdlib_module_names)
    missing: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _module_level_imports(path):
            if name in stdlib or name == "fitdock" or name == "__future__" or name in declared:
                continue
            missing.setdefault(name, str(path.relative_to(ROOT)))
    assert missing == {}, f"imported but not in setup.cfg install_requires: {missing}"


PIPELINES_ALL = [
    "CacheConfig", "ConditionStep", "DelayedReturn", "EstimatorStep", "ExecutePythonScriptStep",
    "Experiment",
    "FailStep", "FunctionStep", "InputData", "Join", "ParameterBoolean", "ParameterFloat",
    "ParameterInteger", "ParameterString", "Pipeline", "PipelineData", "PipelineParameter",
    "PipelineRun", "PythonScriptStep", "RunConfiguration", "StepRun", "StepSequence",
    "get_step", "preview", "step",
]  # fmt: skip
CONDITIONS = [
    "ConditionEquals", "ConditionGreaterThan", "ConditionGreaterThanOrEqualTo",
    "ConditionLessThan", "ConditionLessThanOrEqualTo", "ConditionIn", "ConditionNot",
    "ConditionOr",
]  # fmt: skip


def test_pipelines_surface_is_pinned() -> None:
    import fitdock.pipelines as pipelines
    import fitdock.pipelines.conditions as conditions

    assert pipelines.__all__ == PIPELINES_ALL
    for name in PIPELINES_ALL:
        assert getattr(pipelines, name) is not None, name
    for name in CONDITIONS:
        assert issubclass(getattr(conditions, name), conditions.Condition), name
