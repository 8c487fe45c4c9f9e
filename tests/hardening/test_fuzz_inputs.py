"""Bad input, fuzzed (issue 15): every invalid value given to fitdock's front doors (the
estimators, ``Environment``, requirements and conda files, YAML job files, pipelines and
their parameters, ``@step`` options, Execute Python Script) is a ``FitdockError`` whose
message names the field, never a bare ``TypeError``/``KeyError``/``AttributeError`` or
pydantic's ``ValidationError``; and nothing is made under ``FITDOCK_HOME``: the home
folder is listed before and after each example."""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitdock import Environment, Estimator, Mpi, PyTorch, Slurm
from fitdock.errors import FitdockError
from fitdock.runs.names import is_folder_name, is_word

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def listing(home: Path) -> list[str]:
    """Every path under the home folder (empty when it does not exist)."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")) if home.exists() else []


def refused(home: Path, call: Callable[[], object], *fields: str) -> FitdockError:
    """``call()`` raises a FitdockError naming one of ``fields`` and leaves the home as it was."""
    before = listing(home)
    with pytest.raises(FitdockError) as caught:
        call()
    message = str(caught.value)
    assert any(field in message for field in fields), f"{fields} not named in: {message}"
    assert listing(home) == before, "a refused input left files under FITDOCK_HOME"
    return caught.value


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train.py").write_text("print('hi')\n")
    return folder


# ------------------------------------------------------------------------------ strategies
INT_TEXT = re.compile(r"\s*[+-]?[0-9_]+\s*")
not_a_count = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=1025, max_value=10**12),
    st.text(max_size=20).filter(lambda t: not INT_TEXT.fullmatch(t)),
    st.floats(allow_nan=True).filter(
        lambda f: f != f or f != int(f) if f == f and abs(f) < 1e18 else True
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
not_positive = st.one_of(
    st.floats(max_value=0), st.just(float("nan")), st.sampled_from(["x", "", "-1"])
)
# Characters that break names and command lines.
NASTY = ["..", ".", "/", "a/b", "../../etc", "a\0b", "a\nb", "x" * 201, " ", "-rf", "$(id)", "a b"]
bad_folder_name = st.one_of(st.sampled_from(NASTY), st.text(max_size=30)).filter(
    lambda t: not is_folder_name(t)
)
bad_word = st.one_of(st.sampled_from([*NASTY, "1abc", "a-b"]), st.text(max_size=30)).filter(
    lambda t: not is_word(t)
)
bad_variable = st.one_of(st.sampled_from([*NASTY, "1abc", "a-b"]), st.text(max_size=30)).filter(
    lambda t: not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t)
)
smuggled_pip = st.one_of(
    st.sampled_from(
        [
            "six\n--index-url http://elsewhere",
            "-i http://x",
            "--extra-index-url=http://x",
            "six --index-url http://x",
            "six\r\nnumpy",
            "",
            "  ",
            "six numpy",
            "six\0",
            "-e .",
        ]
    ),
    st.text(min_size=1, max_size=20).map(lambda t: f"six\n{t}"),
    st.text(max_size=20).map(lambda t: f"-{t}"),
)
smuggled_conda = st.one_of(
    st.sampled_from(["numpy=1 -c evil", "numpy\n", "numpy\npip", "numpy 1.2 extra", "", "a b c"]),
    st.text(min_size=1, max_size=10).map(lambda t: f"numpy\n{t}"),
)
bad_image = st.one_of(
    st.sampled_from(["", "-v /:/host", "debian\nRUN touch /x", "a b", "image:tag;id", "x" * 300]),
    st.text(min_size=1, max_size=20).map(lambda t: f"debian\n{t}"),
)

ESTIMATOR_FIELDS: dict[str, Any] = {
    "node_count": not_a_count,
    "process_count_per_node": not_a_count,
    "max_run_duration_seconds": not_positive,
    "hang_timeout_seconds": not_positive,
    "termination_grace_seconds": st.one_of(st.floats(max_value=-1e-9), st.just("soon")),
    "max_restarts": st.one_of(st.integers(max_value=-1), st.just("many")),
    "max_snapshot_files": not_a_count.filter(lambda v: not isinstance(v, int) or v <= 0),
    "shm_size": st.text(max_size=12).filter(
        lambda t: not re.fullmatch(r"[1-9][0-9]*[bkmgBKMG]?", t)
    ),
    "experiment_name": bad_folder_name,
    "environment_variables": st.one_of(
        st.dictionaries(bad_variable, st.text(max_size=5), min_size=1, max_size=2),
        st.text(max_size=5).map(lambda t: {"OK": f"{t}\0{t}"}),
    ),
    "pip_packages": smuggled_pip.map(lambda spec: ["numpy", spec]),
    "conda_packages": smuggled_conda.map(lambda spec: [spec]),
    "inputs": bad_word.map(lambda name: {name: "."}),
    "entry_script": st.sampled_from(
        ["", "../outside.py", "/etc/passwd", "nope.py", "a\0b.py", " "]
    ),
    "custom_docker_image": bad_image,
    "script_params": st.one_of(
        st.text(max_size=10),
        st.just({"--x": {"a": 1}}),
        st.text(max_size=5).map(lambda t: ["--a", f"{t}\0"]),
        st.just({"": 1}),
        st.integers(),
    ),
    "distributed_training": st.one_of(
        st.just({"kind": "nope"}), st.just("mpi"), st.integers(), st.just({"kind": "mpi", "x": 1})
    ),
    "compute_target": st.one_of(st.integers(), st.just({"kind": "slurm", "partition": "a;b"})),
    # a folder is a checkpoint folder; else it is a run id, looked up under runs/ only
    "resume_from": st.sampled_from(["../../no-such-x", "/no/such/folder", "no-such-run", "a\0b"]),
}


@pytest.mark.parametrize("field", sorted(ESTIMATOR_FIELDS))
def test_estimator_arguments_fuzzed(field: str, src: Path, fitdock_home: Path) -> None:
    @FUZZ
    @given(value=ESTIMATOR_FIELDS[field])
    def check(value: Any) -> None:
        def build() -> Any:
            kwargs = {"entry_script": "train.py", "user_managed": True, field: value}
            est = Estimator(src, **kwargs)
            return est.plan() if field == "resume_from" else est

        refused(fitdock_home, build, field)

    check()


@FUZZ
@given(ppn=st.one_of(st.integers(max_value=0), st.integers(min_value=1025, max_value=10**18)))
def test_distribution_counts_are_capped(ppn: int, src: Path, fitdock_home: Path) -> None:
    refused(fitdock_home, lambda: Mpi(ppn), "process_count_per_node")
    refused(
        fitdock_home, lambda: PyTorch(src, entry_script="train.py", node_count=ppn), "node_count"
    )


def test_framework_estimators_name_a_bad_version(src: Path, fitdock_home: Path) -> None:
    error = refused(
        fitdock_home,
        lambda: PyTorch(src, entry_script="train.py", framework_version="0.0.nope"),
        "0.0.nope",
    )
    assert "pytorch" in str(error).lower()


def test_slurm_settings_fuzzed(fitdock_home: Path) -> None:
    @FUZZ
    @given(
        field=st.sampled_from(["partition", "account", "qos", "mem", "constraint"]),
        value=st.sampled_from(["a b", "x;y", "$(id)", "a\nb", "", "`id`"]),
    )
    def check(field: str, value: str) -> None:
        refused(fitdock_home, lambda: Slurm(**{field: value}), field)

    check()


# ------------------------------------------------------------------------------ Environment
ENV_FIELDS: dict[str, Any] = {
    "python.pip_packages": smuggled_pip.map(lambda s: {"python": {"pip_packages": [s]}}),
    "python.build_constraints": smuggled_pip.map(lambda s: {"python": {"build_constraints": [s]}}),
    "python.conda_packages": smuggled_conda.map(lambda s: {"python": {"conda_packages": [s]}}),
    "python.channels": st.sampled_from(["a b", "-c", "x\ny", ""]).map(
        lambda s: {"python": {"channels": [s]}}
    ),
    "python.pip_extra_index_urls": st.sampled_from(["http://a b", "--trusted-host x", "u\nv"]).map(
        lambda s: {"python": {"pip_extra_index_urls": [s]}}
    ),
    "python.python_version": st.text(max_size=8)
    .filter(lambda t: not re.fullmatch(r"3\.[0-9]{1,3}(\.[0-9]{1,3})?", t))
    .map(lambda s: {"python": {"python_version": s}}),
    "docker.base_image": bad_image.map(lambda s: {"docker": {"base_image": s}}),
    "docker.shm_size": st.sampled_from(["2 g", "0", "1t", "2g\n", "-1"]).map(
        lambda s: {"docker": {"shm_size": s}}
    ),
    "environment_variables": bad_variable.map(lambda k: {"environment_variables": {k: "1"}}),
    "name": st.sampled_from(["", " ", "a\nb", "x" * 300]).map(lambda s: {"name": s}),
    "unknown": st.just({"pyhton": {}}),
}


@pytest.mark.parametrize("field", sorted(ENV_FIELDS))
def test_environment_fuzzed(field: str, src: Path, fitdock_home: Path) -> None:
    """Built with a bad value, or given a bad value afterwards and then used by an
    estimator: both are refused, naming the field."""
    where = field.split(".")[-1] if field != "unknown" else "pyhton"

    @FUZZ
    @given(data=ENV_FIELDS[field])
    def check(data: dict[str, Any]) -> None:
        refused(fitdock_home, lambda: Environment(**data), where)
        if field.startswith("python.") and field != "python.python_version":
            env = Environment("changed-later")
            setattr(env.python, where, next(iter(data["python"].values())))
            refused(
                fitdock_home,
                lambda: Estimator(src, entry_script="train.py", environment_definition=env),
                where,
            )

    check()


# --------------------------------------------------------------- requirements and conda files
def test_requirements_files_fuzzed(tmp_path: Path, fitdock_home: Path) -> None:
    path = tmp_path / "requirements.txt"

    @FUZZ
    @given(
        line=st.one_of(
            st.sampled_from(
                [
                    "six --index-url http://elsewhere",
                    "-i http://x",
                    "--extra-index-url http://x",
                    "six numpy",
                    "-r missing.txt",
                    "six; ;",
                    "--trusted-host evil",
                ]
            ),
            st.text(min_size=1, max_size=15).map(lambda t: f"six {t}x"),
        )
    )
    def check(line: str) -> None:
        path.write_text(f"numpy\n{line}\n")
        refused(fitdock_home, lambda: Environment.from_pip_requirements("r", path), "file_path")
        refused(
            fitdock_home,
            lambda: Estimator(
                tmp_path, entry_script="requirements.txt", pip_requirements_file=path
            ),
            "pip_requirements_file",
            "entry_script",
        )

    check()


def test_bad_file_arguments_are_spec_errors(tmp_path: Path, fitdock_home: Path) -> None:
    for value in (None, 3, "", "no/such/file.txt", "a\0b", tmp_path):
        refused(fitdock_home, lambda: Environment.from_pip_requirements("r", value), "file_path")  # noqa: B023
        refused(fitdock_home, lambda: Environment.from_conda_specification("c", value), "file_path")  # noqa: B023


CONDA_DOCS = st.one_of(
    st.sampled_from(["numpy=1 -c evil", "numpy\npip", "a b c", 3, ["x"]]).map(
        lambda dep: {"dependencies": [dep]}
    ),
    st.sampled_from(["six --index-url http://x", "-i http://x", "six\n--pre"]).map(
        lambda pip: {"dependencies": [{"pip": [pip]}]}
    ),
    st.just({"dependencies": [{"pip": "six"}]}),
    st.just({"dependencies": "numpy"}),
    st.just({"channels": "conda-forge", "dependencies": []}),
    st.just({"channels": ["a b"], "dependencies": []}),
    st.just({"dependencies": ["python=abc"]}),
    st.just(["not", "a", "mapping"]),
)


def test_conda_files_fuzzed(tmp_path: Path, fitdock_home: Path) -> None:
    path = tmp_path / "environment.yml"

    @FUZZ
    @given(doc=CONDA_DOCS)
    def check(doc: Any) -> None:
        path.write_text(yaml.safe_dump(doc))
        refused(fitdock_home, lambda: Environment.from_conda_specification("c", path), "file_path")

    check()
    path.write_text("dependencies: [unclosed\n")
    refused(fitdock_home, lambda: Environment.from_conda_specification("c", path), "file_path")


# ------------------------------------------------------------------------------ YAML job files
JOB_FIELDS = {
    "process_count_per_node": st.sampled_from([0, -3, 10**9, "many", [1]]),
    "node_count": st.sampled_from([0, 10**9, "two"]),
    "pip_packages": smuggled_pip.map(lambda spec: [spec]),
    "environment_variables": st.sampled_from([{"A B": "1"}, {"X": "a\0b"}, ["X=1"]]),
    "experiment_name": bad_folder_name,
    "entry_script": st.sampled_from(["../x.py", "nope.py", 3]),
    "max_run_duration_seconds": st.sampled_from([-1, 0, "soon"]),
    "distributed_training": st.sampled_from(
        [{"kind": "nope"}, {"kind": "mpi", "process_count_per_node": 0}, {"kind": "mpi", "x": 1}]
    ),
    "compute_target": st.sampled_from([{"kind": "slurm", "partition": "a;b"}, 7]),
}


@pytest.mark.parametrize("field", sorted(JOB_FIELDS))
def test_yaml_job_files_fuzzed(
    field: str, src: Path, fitdock_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fitdock run job.yml --dry-run`` with one bad value: exit 2, a one-line error that
    names the field, no traceback, nothing made."""
    from fitdock.cli import main

    job = src.parent / "job.yml"

    @settings(FUZZ, max_examples=15)
    @given(value=JOB_FIELDS[field])
    def check(value: Any) -> None:
        job.write_text(
            yaml.safe_dump(
                {
                    "source_directory": "src",
                    "entry_script": "train.py",
                    "user_managed": True,
                    field: value,
                }
            )
        )
        before = listing(fitdock_home)
        capsys.readouterr()
        assert main(["run", str(job), "--dry-run"]) == 2
        err = capsys.readouterr().err
        named = (field, "Mpi", "kind") if field == "distributed_training" else (field,)
        assert err.startswith("fitdock: error:") and any(n in err for n in named), err
        assert listing(fitdock_home) == before

    check()


def test_yaml_job_file_that_is_not_a_mapping(src: Path, fitdock_home: Path) -> None:
    from fitdock.cli import main

    job = src.parent / "job.yml"
    for text in ("- a\n- b\n", "just text\n", "a: [unclosed\n"):
        job.write_text(text)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            assert main(["run", str(job), "--dry-run"]) == 2
        assert "job file" in stderr.getvalue()
        assert listing(fitdock_home) == []


# ------------------------------------------------------------------------------ pipelines
def test_pipeline_names_and_parameters_fuzzed(src: Path, fitdock_home: Path) -> None:
    from fitdock.pipelines import (
        InputData,
        Pipeline,
        PipelineData,
        PipelineParameter,
        PythonScriptStep,
    )
    from fitdock.pipelines.experiment import Experiment

    @FUZZ
    @given(name=bad_word, folder=bad_folder_name)
    def check(name: str, folder: str) -> None:
        refused(fitdock_home, lambda: PipelineParameter(name, 1), "PipelineParameter")
        refused(fitdock_home, lambda: PipelineData(name), "PipelineData")
        if name:  # no name: one is made from the path
            refused(fitdock_home, lambda: InputData(src, name=name), "InputData")
        refused(fitdock_home, lambda: Experiment(folder), "Experiment")

    check()
    refused(fitdock_home, lambda: PythonScriptStep("", source_directory=src), "script_name")
    refused(fitdock_home, lambda: PythonScriptStep(3, source_directory=src), "script_name")  # type: ignore[arg-type]
    refused(fitdock_home, lambda: Pipeline(None), "steps")
    step = PythonScriptStep("train.py", source_directory=src)
    param = PipelineParameter("lr", 0.1)
    step2 = PythonScriptStep(
        "train.py", name="two", arguments=["--lr", param], source_directory=src
    )
    refused(
        fitdock_home,
        lambda: Pipeline(None, [step, step2]).submit(pipeline_parameters={"nope": 1}),
        "nope",
    )
    refused(  # at once, not when the step runs (a pipeline record would exist by then)
        fitdock_home,
        lambda: PythonScriptStep("train.py", arguments=["a\0b"], source_directory=src),
        "arguments",
    )


def test_step_options_fuzzed(tmp_path: Path, fitdock_home: Path) -> None:
    from fitdock.pipelines import step

    options = st.one_of(
        st.sampled_from([0, -1, "x"]).map(lambda v: ("max_retry_attempts", v)),
        st.sampled_from([0, -5.0, "soon"]).map(lambda v: ("max_runtime_in_seconds", v)),
        st.sampled_from([2, 0]).map(lambda v: ("instance_count", v)),
        st.sampled_from([str(tmp_path / "none.txt"), 3]).map(lambda v: ("dependencies", v)),
        st.just(("no_such_option", 1)),
        st.sampled_from([{"A B": "1"}, {"X": "a\0b"}, ["X=1"]]).map(
            lambda v: ("environment_variables", v)
        ),
    )

    @FUZZ
    @given(option=options)
    def check(option: tuple[str, Any]) -> None:
        field, value = option
        refused(fitdock_home, lambda: step(**{field: value}), field)

    check()


def test_function_step_names_that_are_not_folders(workspace: Path, fitdock_home: Path) -> None:
    from fitdock.pipelines import Pipeline, step

    for name in ("../escape", "a/b", "..", "x" * 201, "a\nb"):

        @step(name=name)
        def f() -> int:
            return 1

        refused(fitdock_home, lambda: Pipeline("p", steps=[f()]).submit(), "name")
        refused(fitdock_home, lambda: Pipeline(name, steps=[f()]).submit(), "name")  # noqa: B023


# ------------------------------------------------------------------------------ script module
def test_execute_python_script_inputs_fuzzed(tmp_path: Path, fitdock_home: Path) -> None:
    from fitdock.script.api import execute_python_script

    script = "def azureml_main(a=None, b=None):\n    return a,\n"
    cases = st.one_of(
        st.sampled_from([3, "", "   ", str(tmp_path / "none.py")]).map(lambda v: ("script", v)),
        st.sampled_from([3, str(tmp_path / "none.csv"), [1, 2], {"a": 1}]).map(
            lambda v: ("dataframe1", v)
        ),
        st.sampled_from(["bogus", "", 3]).map(lambda v: ("sandbox", v)),
        st.sampled_from([0, -1, "soon", float("nan")]).map(lambda v: ("timeout_seconds", v)),
        st.sampled_from([0, -5, True, "big"]).map(lambda v: ("memory_mb", v)),
        st.sampled_from([str(tmp_path / "none.zip"), 3]).map(lambda v: ("script_bundle", v)),
    )

    @FUZZ
    @given(case=cases)
    def check(case: tuple[str, Any]) -> None:
        field, value = case
        kwargs = {"script": script, field: value}
        refused(fitdock_home, lambda: execute_python_script(**kwargs), field)

    check()


def test_refusals_are_quick(src: Path, fitdock_home: Path) -> None:
    """A refused input costs nothing: 200 refusals well under a second each."""
    started = time.monotonic()
    for _ in range(200):
        with pytest.raises(FitdockError):
            Estimator(src, entry_script="train.py", pip_packages=["six\n--index-url http://x"])
    assert (time.monotonic() - started) / 200 < 0.5
