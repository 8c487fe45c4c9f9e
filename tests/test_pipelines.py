"""Pipelines of PythonScriptSteps on this machine: DAG shapes, parameters, data between
steps, ordering, validation, failures and cancel. Every step is a real run of a real
script. Reuse is in test_pipeline_reuse.py."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import pytest
from helpers import write_script

from fitdock import Estimator, RunStatus
from fitdock.errors import PipelineValidationError, RunFailedError
from fitdock.pipelines import (
    Experiment,
    Pipeline,
    PipelineData,
    PipelineParameter,
    PythonScriptStep,
    StepSequence,
)

STEP = """\
import json, os, sys, time
args = sys.argv[1:]
out = args[args.index("--out") + 1] if "--out" in args else None
inp = args[args.index("--in") + 1] if "--in" in args else None
sleep = float(args[args.index("--sleep") + 1]) if "--sleep" in args else 0.0
if "--fail" in args:
    print("step gives up", file=sys.stderr)
    sys.exit(4)
started = time.time()
time.sleep(sleep)
seen = open(os.path.join(inp, "value.txt")).read() if inp else ""
record = {"name": os.environ.get("STEP_NAME"), "seen": seen, "started": started,
          "ended": time.time(), "args": args,
          "params": {k: v for k, v in os.environ.items() if k.startswith("AML_PARAMETER_")}}
print(json.dumps(record))
if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "value.txt"), "w") as handle:
        handle.write(seen + "+" + (os.environ.get("STEP_NAME") or "?"))
"""


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_script(tmp_path / "src", STEP, name="step.py")


def step(src: Path, name: str, *arguments: object, **kwargs: object) -> PythonScriptStep:
    from fitdock.pipelines import RunConfiguration

    config = RunConfiguration(environment_variables={"STEP_NAME": name})
    return PythonScriptStep(
        "step.py", name=name, arguments=list(arguments), source_directory=src,
        runconfig=config, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def seen(run, name: str) -> dict:  # type: ignore[no-untyped-def]
    (step_run,) = run.find_step_run(name)
    return json.loads((step_run.log_dir / "rank_0.stdout.log").read_text())


def test_a_chain_passes_data_parameters_and_params(src: Path) -> None:
    raw, model = PipelineData("raw"), PipelineData("model")
    rate = PipelineParameter("rate", default_value=0.1)
    prepare = step(src, "prepare", "--out", raw, outputs=[raw])
    train = step(
        src, "train", "--in", raw, "--out", model, "--rate", rate, inputs=[raw],
        outputs=[model], params={"epochs": 3, "rate": rate},
    )  # fmt: skip
    evaluate = step(src, "evaluate", "--in", model, inputs=[model])
    run = Pipeline(None, [evaluate]).submit(pipeline_parameters={"rate": 0.5}, wait=True)
    assert run.status is RunStatus.COMPLETED, run.error
    assert [s.name for s in run.get_steps()] == ["prepare", "train", "evaluate"]
    assert all(s.status is RunStatus.COMPLETED and not s.reused for s in run.get_steps())
    assert seen(run, "train")["params"] == {
        "AML_PARAMETER_epochs": "3",
        "AML_PARAMETER_rate": "0.5",
    }
    assert seen(run, "train")["args"][-2:] == ["--rate", "0.5"]
    assert seen(run, "evaluate")["seen"] == "+prepare+train"
    assert (run.get_output_data("model") / "value.txt").read_text() == "+prepare+train"
    (train_run,) = run.find_step_run("train")
    assert train_run.record["parent_id"] == run.id and train_run.get_status() == "Completed"
    assert run.get_status() == "Completed" and train is not None and prepare is not None


def test_a_diamond_runs_its_branches_at_once_and_joins_after_both(src: Path) -> None:
    a, b, c = PipelineData("a"), PipelineData("b"), PipelineData("c")
    first = step(src, "first", "--out", a, outputs=[a])
    step(src, "left", "--in", a, "--out", b, "--sleep", 1, inputs=[a], outputs=[b])
    step(src, "right", "--in", a, "--out", c, "--sleep", 1, inputs=[a], outputs=[c])
    join = step(src, "join", "--in", b, inputs=[b, c])
    run = Pipeline(None, [join]).submit(max_concurrency=4, wait=True)
    assert run.status is RunStatus.COMPLETED, run.error
    lefts, rights, joins = (seen(run, n) for n in ("left", "right", "join"))
    assert lefts["started"] < rights["ended"] and rights["started"] < lefts["ended"]  # overlap
    assert joins["started"] >= max(lefts["ended"], rights["ended"])
    assert first is not None


def test_a_fan_out_of_eight_runs_in_parallel(src: Path) -> None:
    steps = [step(src, f"fan{i}", "--sleep", 1) for i in range(8)]
    started = time.monotonic()
    run = Pipeline(None, steps).submit(max_concurrency=8, wait=True)
    wall = time.monotonic() - started
    assert run.status is RunStatus.COMPLETED, run.error
    assert len(run.get_steps()) == 8
    assert wall < 4.0, f"8 steps of 1 s took {wall:.1f} s: not in parallel"


def test_run_after_and_step_sequence_order_steps_without_data(src: Path) -> None:
    one, two, three = (step(src, name) for name in ("one", "two", "three"))
    sequence = StepSequence(steps=[one, two, three])
    late = step(src, "late")
    late.run_after(three)
    run = Pipeline(None, [sequence, late]).submit(wait=True)
    assert run.status is RunStatus.COMPLETED, run.error
    times = [seen(run, name) for name in ("one", "two", "three", "late")]
    for before, after in itertools.pairwise(times):
        assert after["started"] >= before["ended"]


def test_validation_reports_every_problem_at_once(src: Path) -> None:
    orphan, twice = PipelineData("orphan"), PipelineData("twice")
    reader = step(src, "reader", "--in", orphan, inputs=[orphan])
    writer1 = step(src, "writer", outputs=[twice])
    writer2 = step(src, "writer", outputs=[twice])
    a, b = step(src, "a"), step(src, "b")
    a.run_after(b)
    b.run_after(a)
    unset = PipelineParameter("unset", default_value=None)
    param_step = step(src, "param", "--x", unset)
    pipeline = Pipeline(None, [reader, writer1, writer2, a, param_step])
    with pytest.raises(PipelineValidationError) as caught:
        pipeline.submit()
    problems = caught.value.problems
    assert "no step produces 'orphan' (read by reader)" in problems
    assert "2 steps are named 'writer'" in problems
    assert "output 'twice' is produced by more than one step: 'writer', 'writer'" in problems
    assert any(p.startswith("a cycle: ") and "a" in p and "b" in p for p in problems)
    assert "pipeline parameter 'unset' has no value: give one" in problems
    assert caught.value.field == "steps"


def test_a_failed_step_skips_its_dependants_and_fails_the_pipeline(src: Path) -> None:
    data = PipelineData("data")
    broken = step(src, "broken", "--fail", outputs=[data])
    after = step(src, "after", "--in", data, inputs=[data])
    slow = step(src, "independent", "--sleep", 3)
    run = Pipeline(None, [after, slow]).submit(wait=True)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and "step 'broken' failed" in run.error["message"]
    states = run.record.steps
    assert states["after"].status is RunStatus.SKIPPED
    assert states["independent"].status in (RunStatus.CANCELED, RunStatus.SKIPPED)
    with pytest.raises(RunFailedError):
        run.wait_for_completion(show_output=False)
    assert broken is not None


def test_continue_on_step_failure_finishes_the_independent_branches(src: Path) -> None:
    data = PipelineData("data")
    broken = step(src, "broken", "--fail", outputs=[data])
    after = step(src, "after", "--in", data, inputs=[data])
    other = step(src, "independent", "--sleep", 0.5)
    pipeline = Pipeline(None, [after, other])
    run = Experiment(None, "exp").submit(pipeline, continue_on_step_failure=True)
    run.wait_for_completion(show_output=False, raise_on_error=False)
    states = run.record.steps
    assert states["independent"].status is RunStatus.COMPLETED
    assert states["after"].status is RunStatus.SKIPPED
    assert states["broken"].status is RunStatus.FAILED
    assert run.status is RunStatus.FAILED and run.record.experiment_name == "exp"
    assert broken is not None


def test_cancel_stops_the_running_steps_and_starts_nothing_new(src: Path) -> None:
    first = step(src, "long", "--sleep", 30)
    second = step(src, "next")
    second.run_after(first)
    run = Pipeline(None, [second]).submit()
    deadline = time.monotonic() + 30
    while run.record.steps["long"].status is not RunStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    started = time.monotonic()
    run.cancel()
    run.wait_for_completion(show_output=False, raise_on_error=False)
    assert time.monotonic() - started < 35
    assert run.status is RunStatus.CANCELED
    assert run.record.steps["next"].status is RunStatus.CANCELED
    (long_run,) = run.find_step_run("long")
    assert long_run.status is RunStatus.CANCELED


def test_experiment_takes_an_estimator_too(src: Path) -> None:
    est = Estimator(src, entry_script="step.py", user_managed=True)
    run = Experiment(name="single").submit(est)
    run.wait_for_completion()
    assert run.status is RunStatus.COMPLETED
    assert os.environ.get("FITDOCK_HOME")


def test_azure_arguments_hash_paths_and_pipeline_params_for_counts(src: Path) -> None:
    with pytest.warns(DeprecationWarning, match="hash_paths is deprecated"):
        PythonScriptStep("step.py", source_directory=src, hash_paths=["."])
    ranks = PipelineParameter("ranks", default_value=1)
    counted = PythonScriptStep(
        "step.py", source_directory=src, runconfig_pipeline_params={"MpiProcessCountPerNode": ranks}
    )
    spec = counted.job_spec(lambda value: 3 if value is ranks else value)
    assert spec.process_count_per_node == 3 and spec.name == "step.py"
    with pytest.raises(ValueError, match="not among"):
        PythonScriptStep("step.py", source_directory=src, runconfig_pipeline_params={"Bad": ranks})


def test_both_call_shapes_of_pipeline(src: Path) -> None:
    one = step(src, "one")
    azure = Pipeline(object(), [one], "described")  # Azure: (workspace, steps, description)
    sagemaker = Pipeline("named", None, None, [one])  # SageMaker: (name, parameters, _, steps)
    keywords = Pipeline(steps=[one], name="kw", description="d")
    assert (azure.description, azure.steps) == ("described", [one])
    assert (sagemaker.name, sagemaker.steps) == ("named", [one])
    assert (keywords.name, keywords.description) == ("kw", "d")
    assert PythonScriptStep("x.py", source_directory=src).name == "x.py"  # Azure's default
