"""``@step`` functions on this machine: DelayedReturn rules, the graph they make,
parallel leaves, conditions and fail steps, results, parameters, caching, Python
versions. Every step is a real run of the job-side runner in a real interpreter."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from fitdock import RunStatus
from fitdock.environments.spec import Environment, PythonSection
from fitdock.errors import PipelineValidationError, SpecError, StepResultError
from fitdock.pipelines import (
    CacheConfig,
    ConditionStep,
    DelayedReturn,
    FailStep,
    Join,
    ParameterFloat,
    ParameterInteger,
    ParameterString,
    Pipeline,
    PipelineData,
    PythonScriptStep,
    get_step,
    step,
)
from fitdock.pipelines.conditions import (
    ConditionEquals,
    ConditionGreaterThan,
    ConditionGreaterThanOrEqualTo,
    ConditionIn,
    ConditionLessThan,
    ConditionLessThanOrEqualTo,
    ConditionNot,
    ConditionOr,
)

pytestmark = pytest.mark.usefixtures("workspace")  # run from a small folder


@step
def make(n: int) -> dict[str, Any]:
    return {"values": list(range(n)), "n": n}


@step
def total(data: dict[str, Any], scale: float = 1.0) -> float:
    return sum(data["values"]) * scale


@step
def pair() -> tuple[int, dict[str, str]]:
    return 7, {"k": "v"}


@step(name="stamp_a")
def stamp_a(seconds: float) -> list[float]:
    started = time.time()
    time.sleep(seconds)
    return [started, time.time()]


@step(name="stamp_b")
def stamp_b(seconds: float) -> list[float]:
    started = time.time()
    time.sleep(seconds)
    return [started, time.time()]


@step
def echo(value: Any) -> Any:
    return value


@step
def explode() -> None:
    raise RuntimeError("the step gives up")


def finished(pipeline: Pipeline, **parameters: Any) -> Any:
    run = pipeline.start(parameters=parameters or None)
    run.wait_for_completion(show_output=False, raise_on_error=False)
    return run


# ------------------------------------------------------------------ DelayedReturn rules
def test_indexing_makes_delayed_parts_and_misuse_says_what_to_do() -> None:
    r = make(3)
    assert isinstance(r, DelayedReturn)
    part = r["values"][1]
    assert isinstance(part, DelayedReturn) and part.path == ("values", 1)
    assert part.step is r.step is get_step(r)
    with pytest.raises(ValueError, match=r"cannot be unpacked or iterated: take its parts"):
        _a, _b = make(2)
    with pytest.raises(NotImplementedError, match=r"take its parts by index"):
        for _ in make(2):
            pass
    with pytest.raises(TypeError, match=r"no truth value yet.*ConditionStep"):
        bool(r)
    with pytest.raises(AttributeError, match=r"for a key of a returned dict use r\['rmse'\]"):
        r.rmse  # noqa: B018
    with pytest.raises(AttributeError, match="use get_step"):
        r.depends_on = []  # type: ignore[misc]
    with pytest.raises(AttributeError, match=r"use add_depends_on"):
        get_step(r).depends_on = []  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"return a tuple or list; index it with an int"):
        pair()["k"]
    assert pair()[1]["k"].path == (1, "k")
    with pytest.raises(SpecError, match=r"make\(\): missing a required argument"):
        make()


def test_step_options_are_checked_and_aws_only_ones_warned_about_once() -> None:
    with pytest.warns(UserWarning, match="instance_type, role only mean something on AWS"):

        @step(instance_type="ml.m5.xlarge", role="arn:aws:iam::1:role/x")
        def ported() -> int:
            return 1

    with pytest.raises(SpecError, match=r"instance_count.*one instance"):
        step(instance_count=2)
    with pytest.raises(SpecError, match="max_retry_attempts"):
        step(max_retry_attempts=0)
    with pytest.raises(SpecError, match=r"dependencies.*is not a file"):
        step(dependencies="no/such/requirements.txt")
    with pytest.raises(SpecError, match="expire_after 'thirty days' is not an ISO 8601"):
        CacheConfig(enable_caching=True, expire_after="thirty days")
    with pytest.raises(SpecError, match="not_an_option"):
        step(not_an_option=1)


def test_two_functions_of_one_name_are_an_error_naming_both() -> None:
    @step(name="same")
    def first() -> int:
        return 1

    @step(name="same")
    def second() -> int:
        return 2

    with pytest.raises(PipelineValidationError) as caught:
        Pipeline("clash", steps=[first(), second()]).start()
    assert "2 steps are named 'same'" in str(caught.value)
    assert "first" in str(caught.value) and "second" in str(caught.value)


# ------------------------------------------------------------------ graph and running
def test_leaves_bring_their_upstream_and_values_flow(fitdock_home: Path) -> None:
    data = make(4)
    result = total(data, scale=0.5)
    pipeline = Pipeline("flow", steps=[result])
    assert [s.name for s in pipeline.steps] == ["make", "total"]
    run = finished(pipeline)
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.result("total") == 3.0
    assert run.result("make") == {"values": [0, 1, 2, 3], "n": 4}
    steps = {s["StepName"]: s for s in run.list_steps()}
    assert steps["total"]["StepStatus"] == "Completed"
    assert run.describe()["PipelineExecutionStatus"] == "Completed"
    # the seed's layout
    record = run.record
    assert Path(record.steps["total"].outputs["results"]) == (
        fitdock_home / "pipelines" / "flow" / run.id / "total"
    )
    builds = list((fitdock_home / "pipelines" / "flow" / "total").iterdir())
    assert len(builds) == 1 and {"function", "arguments"} <= {p.name for p in builds[0].iterdir()}
    assert (fitdock_home / "pipelines" / "flow" / "workspace").is_dir()


def test_parts_of_results_and_add_depends_on_order_steps() -> None:
    first = stamp_a(0.3)
    second = stamp_b(0.0)
    get_step(second).add_depends_on([first])
    seven = echo(pair()[0])
    run = finished(Pipeline("order", steps=[second, seven]))
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.result("stamp_b")[0] >= run.result("stamp_a")[1]
    assert run.result("echo") == 7


def test_independent_leaves_run_at_the_same_time() -> None:
    run = finished(Pipeline("parallel", steps=[stamp_a(1.0), stamp_b(1.0)]))
    assert run.status is RunStatus.COMPLETED, run.error
    (a0, a1), (b0, b1) = run.result("stamp_a"), run.result("stamp_b")
    assert min(a1, b1) - max(a0, b0) > 0.5, "the two 1 s steps did not overlap"


def test_a_failing_step_skips_what_needs_it_and_result_names_the_state() -> None:
    boom = explode()
    after = echo(boom)
    run = finished(Pipeline("failing", steps=[after]))
    assert run.status is RunStatus.FAILED
    assert "explode" in run.error["message"]
    with pytest.raises(StepResultError, match="step 'explode' has no result: it is Failed"):
        run.result("explode")
    with pytest.raises(StepResultError, match="step 'echo' has no result: it is Skipped"):
        run.result("echo")
    with pytest.raises(StepResultError, match="no step 'nope'"):
        run.result("nope")
    stderr = run.find_step_run("explode")[0].log_dir / "rank_0.stderr.log"
    assert "RuntimeError: the step gives up" in stderr.read_text()


# ------------------------------------------------------------------ conditions
def test_condition_branches_fail_step_and_join(fitdock_home: Path) -> None:
    threshold = ParameterFloat("threshold", default_value=10.0)
    score = total(make(5))  # 10.0
    good, bad = (
        echo("registered"),
        FailStep(
            "too_low", error_message=Join(on=" ", values=["score", score, "is under", threshold])
        ),
    )
    check = ConditionStep(
        "check", conditions=[ConditionGreaterThanOrEqualTo(left=score, right=threshold)],
        if_steps=[good], else_steps=[bad],
    )  # fmt: skip
    pipeline = Pipeline("branch", parameters=[threshold], steps=[check])
    taken = finished(pipeline)
    assert taken.status is RunStatus.COMPLETED, taken.error
    states = taken.record.steps
    assert states["check"].outcome is True and states["too_low"].status is RunStatus.SKIPPED
    assert taken.result("echo") == "registered"

    other = finished(pipeline, threshold=11.5)
    assert other.status is RunStatus.FAILED
    assert other.error == {"step": "too_low", "message": "score 10.0 is under 11.5"}
    assert other.record.steps["echo"].status is RunStatus.SKIPPED
    with pytest.raises(StepResultError, match="it is Skipped"):
        other.result("echo")


X = "<the step's result>"  # replaced by a DelayedReturn of 3 below
CLASSES = [
    (ConditionEquals(left=X, right=3), True),
    (ConditionGreaterThan(left=X, right=3), False),
    (ConditionGreaterThanOrEqualTo(left=X, right=3), True),
    (ConditionLessThan(left=X, right=3), False),
    (ConditionLessThanOrEqualTo(left=X, right=3), True),
    (ConditionIn(value=X, in_values=[1, 3, 5]), True),
    (ConditionNot(expression=ConditionEquals(left=X, right=3)), False),
    (ConditionOr([ConditionEquals(left=X, right=1), ConditionLessThan(left=X, right=1)]), False),
]


def _with_operand(condition: Any, value: Any) -> Any:
    """``condition`` with each operand X replaced by ``value`` (a step result)."""
    for attr in ("left", "value"):
        if getattr(condition, attr, None) == X:
            setattr(condition, attr, value)
    for inner in [getattr(condition, "expression", None), *getattr(condition, "conditions", [])]:
        if inner is not None:
            _with_operand(inner, value)
    return condition


def test_every_condition_class_on_a_step_result() -> None:
    three = echo(3)
    steps = []
    for index, (condition, _) in enumerate(CLASSES):
        steps.append(ConditionStep(f"c{index}", conditions=[_with_operand(condition, three)]))
    run = finished(Pipeline("classes", steps=steps))
    assert run.status is RunStatus.COMPLETED, run.error
    outcomes = [run.record.steps[f"c{i}"].outcome for i in range(len(CLASSES))]
    assert outcomes == [expected for _, expected in CLASSES]


def test_comparing_different_types_fails_the_condition_naming_both() -> None:
    check = ConditionStep("typed", conditions=[ConditionEquals(left=echo("3"), right=3)])
    run = finished(Pipeline("types", steps=[check]))
    assert run.status is RunStatus.FAILED
    message = run.record.steps["typed"].error["message"]
    assert "str" in message and "int" in message


# ------------------------------------------------------------------ parameters
def test_typed_parameters_reach_functions_and_bad_values_are_refused() -> None:
    n = ParameterInteger("n", default_value=3)
    mode = ParameterString("mode", default_value="fast", enum_values=["fast", "slow"])
    pipeline = Pipeline("params", parameters=[n, mode], steps=[echo([n, mode])])
    assert finished(pipeline).result("echo") == [3, "fast"]
    assert finished(pipeline, n="5", mode="slow").result("echo") == [5, "slow"]
    with pytest.raises(PipelineValidationError, match="ParameterInteger 'n' expects an Integer"):
        pipeline.start(parameters={"n": "five"})
    with pytest.raises(PipelineValidationError, match="not one of"):
        pipeline.start(parameters={"mode": "medium"})


# ------------------------------------------------------------------ mixed pipelines
SCRIPT = """\
import os, sys
out = sys.argv[sys.argv.index("--out") + 1]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "seen.txt"), "w").write(sys.argv[sys.argv.index("--value") + 1])
"""


@step
def read_data(folder: str) -> str:
    return open(os.path.join(folder, "seen.txt")).read()


def test_results_feed_script_steps_and_data_feeds_functions(tmp_path: Path) -> None:
    src = tmp_path / "scripts"
    src.mkdir()
    (src / "write.py").write_text(SCRIPT)
    made = make(2)
    data = PipelineData("written")
    script = PythonScriptStep(
        "write.py", source_directory=src, outputs=[data],
        arguments=["--out", data, "--value", made["values"]],
    )  # fmt: skip
    run = finished(Pipeline("mixed", steps=[read_data(data), script]))
    assert run.status is RunStatus.COMPLETED, (run.error, run.explain())
    assert run.result("read_data") == "[0, 1]"


# ------------------------------------------------------------------ caching
def test_caching_is_opt_in_keyed_on_code_arguments_and_workspace(workspace: Path) -> None:
    (workspace / "helper.py").write_text("def factor():\n    return 2\n")
    sys.path.insert(0, str(workspace))
    try:
        import helper  # type: ignore[import-not-found]

        @step(cache_config=CacheConfig(enable_caching=True, expire_after="P30D"))
        def scaled(x: int) -> int:
            return x * helper.factor()

        @step
        def uncached(x: int) -> int:
            return x

        with pytest.raises(SpecError, match="'cache' is reserved"):
            Pipeline("cache", steps=[scaled(2)]).start()
        first = finished(Pipeline("caching", steps=[scaled(2), uncached(1)]))
        assert first.result("scaled") == 4
        again = finished(Pipeline("caching", steps=[scaled(2), uncached(1)]))
        states = again.record.steps
        assert states["scaled"].reused and again.result("scaled") == 4
        assert not states["uncached"].reused
        assert "reuse is off (cache_config=CacheConfig(enable_caching=True)" in (
            states["uncached"].explain or ""
        )
        changed = finished(Pipeline("caching", steps=[scaled(3)]))
        assert not changed.record.steps["scaled"].reused
        assert "argument 1: 2 -> 3" in changed.explain("scaled")

        (workspace / "helper.py").write_text("def factor():\n    return 5\n")
        helper_changed = finished(Pipeline("caching", steps=[scaled(3)]))
        assert "helper.py (changed)" in helper_changed.explain("scaled")
        assert helper_changed.result("scaled") == 15
    finally:
        sys.path.remove(str(workspace))
        sys.modules.pop("helper", None)


def test_an_expired_cache_entry_is_not_reused() -> None:
    @step(cache_config=CacheConfig(enable_caching=True, expire_after="PT1S"))
    def quick() -> int:
        return 1

    assert not finished(Pipeline("expire", steps=[quick()])).record.steps["quick"].reused
    assert finished(Pipeline("expire", steps=[quick()])).record.steps["quick"].reused
    time.sleep(1.2)
    assert not finished(Pipeline("expire", steps=[quick()])).record.steps["quick"].reused


# ------------------------------------------------------------------ Python versions
def test_an_environment_of_another_python_is_refused_before_the_step_starts() -> None:
    other = Environment(python=PythonSection(python_version="3.9"))

    @step(environment=other)
    def elsewhere() -> int:
        return 1

    run = finished(Pipeline("pyver", steps=[elsewhere()]))
    assert run.status is RunStatus.FAILED
    state = run.record.steps["elsewhere"]
    assert state.run_id is None  # nothing started
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"Python 3.9 but the pipeline is submitted with Python {ours}" in state.error["message"]


def test_the_step_refuses_a_payload_of_another_python(monkeypatch: pytest.MonkeyPatch) -> None:
    import fitdock.jobside.payload as payload
    from fitdock.pipelines.build import signing_key

    marker = Path.cwd() / "ran.txt"

    @step
    def never(path: str) -> None:
        Path(path).write_text("ran")

    slow = stamp_a(1.0)
    late = never(str(marker))
    get_step(late).add_depends_on([slow])
    run = Pipeline("pyver2", steps=[late]).start()
    build = run.record  # the build folders exist once start() returns
    folder = next(
        (
            payload.key_path(Path(os.environ["FITDOCK_HOME"])).parent
            / "pipelines"
            / "pyver2"
            / "never"
        ).iterdir()
    )
    body = payload.read(folder / "function", "function", signing_key())[1]
    key = signing_key()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "version_info", (3, 9, 0, "final", 0))
        payload.write(folder / "function", "function", body, key)
    run.wait_for_completion(show_output=False, raise_on_error=False)
    assert build is not None and run.status is RunStatus.FAILED
    step_run = run.find_step_run("never")[0]
    stderr = (step_run.log_dir / "rank_0.stderr.log").read_text()
    assert "submitted with Python 3.9" in stderr and "refused" in stderr
    assert not marker.exists()


def test_definition_create_upsert_and_list_executions(fitdock_home: Path) -> None:
    threshold = ParameterFloat("threshold", default_value=2.0)
    check = ConditionStep(
        "check", conditions=[ConditionLessThan(left=total(make(2)), right=threshold)],
        if_steps=[echo("small")],
    )  # fmt: skip
    pipeline = Pipeline("defined", parameters=[threshold], steps=[check])
    definition = json.loads(pipeline.definition())
    steps = {s["Name"]: s for s in definition["Steps"]}
    assert steps["check"]["Arguments"]["Conditions"][0]["LeftValue"] == {
        "Get": "Steps.total.Result"
    }
    assert steps["total"]["DependsOn"] == ["make"] and steps["echo"]["DependsOn"] == ["check"]
    assert definition["Parameters"][0]["Name"] == "threshold"
    pipeline.create()
    with pytest.raises(SpecError, match="stored already"):
        pipeline.create()
    assert Path(pipeline.upsert()["DefinitionPath"]) == (
        fitdock_home / "pipelines" / "defined" / "definition.json"
    )
    run = finished(pipeline)
    assert run.result("echo") == "small"
    listed = pipeline.list_executions()["PipelineExecutionSummaries"]
    assert [e["PipelineExecutionArn"] for e in listed] == [run.id]


def test_warnings_from_steps_do_not_leak() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert finished(Pipeline("quiet", steps=[echo(1)])).result("echo") == 1


def test_options_reach_the_step_pre_commands_variables_and_retries(workspace: Path) -> None:
    marker = workspace / "pre.txt"
    attempts = workspace / "attempts.txt"
    command = f"{sys.executable} -c \"open({str(marker)!r}, 'w').write('pre ran')\""

    @step(
        pre_execution_commands=[command],
        environment_variables={"GREETING": "hello"},
        max_retry_attempts=2,
        max_runtime_in_seconds=60,
    )
    def flaky(path: str) -> list[str]:
        with open(path, "a") as f:
            f.write("x")
        if len(Path(path).read_text()) < 2:
            raise RuntimeError("first attempt fails")
        return [os.environ["GREETING"], Path(path.replace("attempts", "pre")).read_text()]

    run = finished(Pipeline("options", steps=[flaky(str(attempts))]))
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.result("flaky") == ["hello", "pre ran"]
    assert attempts.read_text() == "xx"
    (step_run,) = run.find_step_run("flaky")
    assert step_run.record["spec"]["max_run_duration_seconds"] == 60
    assert len(step_run.record["attempts"]) == 2


def test_a_failing_pre_execution_command_fails_the_step_before_the_function() -> None:
    @step(pre_execution_commands=["false"])
    def unreached() -> int:
        return 1

    run = finished(Pipeline("pre_fails", steps=[unreached()]))
    assert run.status is RunStatus.FAILED
    (step_run,) = run.find_step_run("unreached")
    assert "fitdock step: false exited 1" in (step_run.log_dir / "rank_0.stderr.log").read_text()
