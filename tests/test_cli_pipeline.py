"""``fitdock pipeline ...``, run as a real subprocess on a two-step pipeline file: make
(writes a PipelineData) -> use (reads it), each a PythonScriptStep of a tiny script in a
source directory of its own, with the default (user-managed) RunConfiguration."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until, write_script

from fitdock.cli import main
from fitdock.cli.pipeline import parse_params
from fitdock.cli.pipeline_show import dot, draw
from fitdock.errors import StepResultError
from fitdock.pipelines import ConditionStep, FailStep, Pipeline, PipelineRun, step
from fitdock.pipelines import record as records
from fitdock.pipelines.conditions import ConditionGreaterThan
from fitdock.pipelines.record import PipelineRecord, StepState
from fitdock.runs.status import RunStatus

ROOT = Path(__file__).resolve().parents[1]

MAKE = """\
import os, sys
out, word = sys.argv[sys.argv.index("--out") + 1], sys.argv[sys.argv.index("--word") + 1]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "value.txt"), "w").write(word)
print("made", word, "seed", os.environ.get("AML_PARAMETER_seed"))
"""
USE = """\
import os, sys
folder = sys.argv[sys.argv.index("--in") + 1]
print("used", open(os.path.join(folder, "value.txt")).read())
"""
PIPELINE = """\
from pathlib import Path

from fitdock.pipelines import Pipeline, PipelineData, PipelineParameter, PythonScriptStep

HERE = Path(__file__).resolve().parent
data = PipelineData("data")
word = PipelineParameter("word", default_value="hello")
make = PythonScriptStep(
    "make.py", name="make", arguments=["--out", data, "--word", word], outputs=[data],
    params={"seed": 7}, source_directory=HERE / "make",
)
use = PythonScriptStep(
    "use.py", name="use", arguments=["--in", data], inputs=[data], source_directory=HERE / "use"
)
pipeline = Pipeline(None, steps=[use])
"""


def fitdock(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # FITDOCK_HOME: the test's own
    return subprocess.run(
        [sys.executable, "-m", "fitdock.cli", "pipeline", *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    write_script(tmp_path / "make", MAKE, name="make.py")
    write_script(tmp_path / "use", USE, name="use.py")
    return write_script(tmp_path, PIPELINE, name="pipeline.py") / "pipeline.py"


def run_id_of(done: subprocess.CompletedProcess[str]) -> str:
    match = re.search(r"^pipeline run (\S+) ", done.stdout, re.MULTILINE)
    assert match, done.stdout + done.stderr
    return match.group(1)


def runs_under(home: Path) -> list[Path]:
    root = home / "runs"
    return sorted(root.iterdir()) if root.is_dir() else []


def test_run_then_rerun_reuses_then_list_show_explain_logs(
    pipeline_file: Path, fitdock_home: Path
) -> None:
    first = fitdock("run", str(pipeline_file), "--param", "word=hi", "--experiment", "cli")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "fitdock: step make: Completed" in first.stdout
    assert "fitdock: step use: Completed" in first.stdout
    first_id = run_id_of(first)
    assert len(runs_under(fitdock_home)) == 2

    dry = fitdock("run", str(pipeline_file), "--param", "word=hi", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"^make .* reused from make_\S+ \(key [0-9a-f]+\)$", dry.stdout, re.M)
    assert re.search(r"^use .* reused from use_", dry.stdout, re.M)
    changed = fitdock("run", str(pipeline_file), "--param", "word=ho", "--dry-run")
    assert re.search(r'^make .* runs: argument 4: "hi" -> "ho"$', changed.stdout, re.M)
    assert len(runs_under(fitdock_home)) == 2  # a dry run creates nothing

    second = fitdock("run", f"{pipeline_file}:pipeline", "--param", "word=hi")
    assert second.returncode == 0, second.stdout + second.stderr
    second_id = run_id_of(second)
    assert len(runs_under(fitdock_home)) == 2  # both steps reused: no new run
    assert re.search(r"└─> use +Completed .* reused from use_", second.stdout)

    listing = fitdock("list")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "STEPS", "CREATED"]
    assert [row.split()[0] for row in rows] == [first_id, second_id]
    assert "2/2, 2 reused" in rows[1] and "Completed" in rows[0]

    text = fitdock("show", first_id)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"pipeline {first_id} (use): Completed")
    assert re.match(r"  make +Completed +\d+\.\ds  run make_", lines[1])
    assert re.match(r"  └─> use +Completed +\d+\.\ds  run use_", lines[2])
    assert all(len(line) <= 100 for line in lines)

    dot = fitdock("show", second_id, "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith(f'digraph "{second_id}" {{')
    assert '"make" -> "use";' in dot.stdout
    assert dot.stdout.count("->") == 1
    assert '"use" [label="use\\nCompleted, reused"' in dot.stdout

    explained = fitdock("explain", second_id)
    assert explained.returncode == 0, explained.stderr
    assert re.search(r"^make: reused from make_\S+ \(key [0-9a-f]+\)", explained.stdout, re.M)
    assert re.search(r"^use: reused from use_", explained.stdout, re.M)
    one = fitdock("explain", first_id, "use")
    assert one.stdout.strip() == "use: ran: never run before"

    logs = fitdock("logs", first_id)
    assert logs.returncode == 0, logs.stderr
    assert "[make] [rank 0] made hi seed 7" in logs.stdout
    assert "[use] [rank 0] used hi" in logs.stdout
    reused = fitdock("logs", second_id, "use")
    assert reused.stdout.splitlines()[0].startswith("[use] reused: the logs of use_")
    assert "[use] [rank 0] used hi" in reused.stdout and "[make]" not in reused.stdout

    ended = fitdock("cancel", second_id)
    assert ended.returncode == 0 and "already ended: Completed" in ended.stdout


def test_a_failing_step_exits_1_and_skips_what_depends_on_it(
    pipeline_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "make" / "make.py").write_text("import sys\nsys.exit(3)\n")
    done = fitdock("run", str(pipeline_file))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "fitdock: step make: Failed" in done.stdout
    assert "fitdock: step use: Skipped" in done.stdout


def test_cancel_from_another_process_stops_the_running_step(
    pipeline_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "make" / "make.py").write_text("import time\ntime.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "fitdock.cli", "pipeline", "run", str(pipeline_file)]
    runner = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert wait_until(lambda: "Running" in fitdock("list").stdout, timeout=30)
        run_id = fitdock("list").stdout.splitlines()[1].split()[0]
        running = re.compile(r"^  make +Running ", re.MULTILINE)
        assert wait_until(lambda: running.search(fitdock("show", run_id).stdout), timeout=30)
        started = time.monotonic()
        done = fitdock("cancel", run_id)
        assert done.returncode == 0 and f"cancel requested for pipeline run {run_id}" in done.stdout
        out, _ = runner.communicate(timeout=30)
        assert time.monotonic() - started < 10
    finally:
        if runner.poll() is None:  # Ctrl-C cancels the pipeline's steps, then it exits
            runner.send_signal(signal.SIGINT)
            try:
                runner.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.communicate()
    assert runner.returncode == 1, out
    # canceled wherever the cancel came from: the running step and what had not started
    assert "fitdock: step make: Canceled" in out and "fitdock: step use: Canceled" in out
    assert fitdock("show", run_id).stdout.startswith(f"pipeline {run_id} (use): Canceled")


def test_dry_run_prints_the_dag_and_creates_nothing(
    pipeline_file: Path, fitdock_home: Path
) -> None:
    done = fitdock("run", str(pipeline_file), "--dry-run", "--force", "make")
    assert done.returncode == 0, done.stderr
    head, header, make, use = done.stdout.splitlines()
    assert head.startswith("pipeline pipeline.py:pipeline: 2 steps, parameters word='hello'")
    assert header.split() == ["STEP", "KIND", "SCRIPT", "AFTER", "NOW"]
    assert make.split() == ["make", "python_script", "make.py", "-", "runs:", "forced"]
    assert use.split()[:4] == ["use", "python_script", "use.py", "make"]
    assert use.endswith("runs: after make (its inputs are not known before)")
    fresh = fitdock("run", str(pipeline_file), "--dry-run")
    assert fresh.stdout.splitlines()[2].endswith("runs: never run before")
    assert not (fitdock_home / "runs").exists()
    assert not (fitdock_home / "pipelines").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.py"], "pipeline file missing.py not found"),
        (["run", "{empty}"], "defines no Pipeline"),
        (["run", "{two}"], "defines 2 pipelines (a, b): choose one with"),
        (["run", "{two}:c"], "defines no Pipeline named 'c'; it defines a, b"),
        (["run", "{pipeline}", "--param", "word"], "--param 'word': give NAME=VALUE"),
        (["run", "{pipeline}", "--dry-run", "--force", "nope"], "--force names no step"),
        (["run", "{pipeline}", "--dry-run", "--param", "nope=1"], "'nope' is not used"),
        (["show", "nope_20250101-000000_abcdef"], "nope_20250101-000000_abcdef"),
        (["explain", "nope_20250101-000000_abcdef"], "nope_20250101-000000_abcdef"),
        (["run", "{broken}"], "broken.py failed: ZeroDivisionError: division by zero"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    args: list[str], message: str, pipeline_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty.py").write_text("x = 1\n")
    (tmp_path / "two.py").write_text(
        "from pipeline import pipeline as a\nfrom fitdock.pipelines import Pipeline\n"
        "b = Pipeline(None, steps=a.steps[:1])\n"
    )
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    paths = {name: tmp_path / f"{name}.py" for name in ("empty", "two", "broken")}
    paths["pipeline"] = pipeline_file
    done = fitdock(*(arg.format(**paths) for arg in args))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "fitdock: error: " in done.stderr  # after the traceback of a file that raised
    assert message in done.stderr[done.stderr.index("fitdock: error: ") :]


def test_a_step_name_a_run_does_not_have_exits_2(pipeline_file: Path) -> None:
    done = fitdock("run", str(pipeline_file))
    assert done.returncode == 0, done.stderr
    bad = fitdock("explain", run_id_of(done), "nope")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("has no step 'nope'; its steps: make, use")


@pytest.mark.parametrize("action", ["run", "list", "show", "explain", "cancel", "logs"])
def test_help_explains_each_action_with_an_example(action: str) -> None:
    done = fitdock(action, "--help")
    assert done.returncode == 0
    assert f"usage: fitdock pipeline {action}" in done.stdout
    assert "example" in done.stdout and f"fitdock pipeline {action}" in done.stdout.split("exam")[1]


def test_param_values_keep_strings_and_turn_numbers_and_booleans_into_their_types() -> None:
    values = parse_params(["a=3", "b=-0.5", "c=1e-3", "d=True", "e=false", "f=abc", "g=", "h=1=2"])
    assert values == {"a": 3, "b": -0.5, "c": 0.001, "d": True, "e": False, "f": "abc"} | {
        "g": "",
        "h": "1=2",
    }


SUBMITS_ITSELF = """\
from fitdock.pipelines import Experiment, Pipeline, PipelineParameter, PythonScriptStep
ws = None
value = PipelineParameter(name="value", default_value=1)
step = PythonScriptStep(script_name="echo.py", arguments=["--value", value], source_directory=".")
pipeline_run = Experiment(ws, "notebook").submit(Pipeline(workspace=ws, steps=[step]))
raise SystemExit("the CLI stops a file at its own submit: this line never runs")
"""


def test_a_file_that_submits_its_pipeline_itself_is_run_once_with_the_options(
    tmp_path: Path,
) -> None:
    """Azure's notebooks submit at the top level: the CLI runs that pipeline, once."""
    (tmp_path / "echo.py").write_text("import sys\nprint('value', sys.argv[-1])\n")
    (tmp_path / "notebook.py").write_text(SUBMITS_ITSELF)
    done = fitdock("run", str(tmp_path / "notebook.py"), "--param", "value=7")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("fitdock: step echo.py: Completed") == 1
    (state,) = PipelineRun.list()[0].record.steps.values()
    (step_run,) = PipelineRun.list()[0].get_steps()
    assert (step_run.log_dir / "rank_0.stdout.log").read_text() == "value 7\n"
    assert state.status.value == "Completed" and len(PipelineRun.list()) == 1


# ------------------------------------------------- @step results, conditions: show, dot
START, END = "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:02+00:00"
RAN = {"status": "Completed", "started_at": START, "ended_at": END}
WAITING = {"status": "NotStarted", "started_at": None, "ended_at": None}
SKIPPED = WAITING | {"status": "Skipped"}
FAILED = RAN | {"status": "Failed"}


def state(name: str, kind: str, how: dict[str, Any], **fields: Any) -> StepState:
    return StepState.model_validate({"name": name, "kind": kind} | how | fields)


def branching_record(results: Path, *, held: bool | None = True) -> PipelineRecord:
    """train -> check (if: register, else: alarm, a fail step); after_alarm needs only
    alarm. ``held``: the condition's outcome (None: not decided yet)."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text('{"accuracy": 0.93, "epochs": 3}')
    message = {"reason": "fail_step", "message": "accuracy 0.4 is too low\nmore"}
    branches = {"if": ["register"], "else": ["alarm"]}
    check, register, alarm = {
        True: (RAN, RAN | {"run_id": "register_1"}, SKIPPED),
        False: (RAN, SKIPPED, FAILED | {"error": message}),
        None: (WAITING, WAITING, WAITING),
    }[held]
    steps = [
        state("train", "function", RAN, run_id="train_1", outputs={"results": str(results)}),
        state("check", "condition", check, depends_on=["train"], outcome=held, branches=branches),
        state("register", "python_script", register, depends_on=["check"]),
        state("alarm", "fail", alarm, depends_on=["check"]),
        state("after_alarm", "python_script", SKIPPED, depends_on=["alarm"]),
    ]
    status = {True: "Completed", False: "Failed", None: "Running"}[held]
    return PipelineRecord(
        id="p_1", name="p", status=RunStatus(status), created_at="2026-01-01T00:00:00+00:00",
        steps={s.name: s for s in steps}, order=[s.name for s in steps],
    )  # fmt: skip


def test_show_says_which_branch_a_condition_chose_and_a_short_result(tmp_path: Path) -> None:
    text = draw(branching_record(tmp_path / "train"))
    assert text.splitlines()[1:] == [
        '  train                    Completed    2.0s  run train_1 -> {"accuracy":0.93,"epochs":3}',
        "  └─> check                Completed    2.0s  condition held: if -> register",
        "      └─> register         Completed    2.0s  run register_1",
        "      └─> alarm            Skipped         -  skipped: branch not taken",
        "          └─> after_alarm  Skipped         -",  # skipped downstream: as before
    ]


def test_show_a_condition_that_did_not_hold_and_the_fail_steps_message(tmp_path: Path) -> None:
    text = draw(branching_record(tmp_path / "train", held=False))
    assert text.splitlines()[2:] == [
        "  └─> check                Completed    2.0s  condition did not hold: else -> alarm",
        "      └─> register         Skipped         -  skipped: branch not taken",
        "      └─> alarm            Failed       2.0s  accuracy 0.4 is too low",
        "          └─> after_alarm  Skipped         -",
    ]


def test_show_a_condition_not_decided_yet(tmp_path: Path) -> None:
    text = draw(branching_record(tmp_path / "train", held=None))
    assert re.search(r"^  └─> check +NotStarted +-  not decided yet$", text, re.M)
    assert re.search(r"^      └─> register +NotStarted +-$", text, re.M)
    assert "branch not taken" not in text


@pytest.mark.parametrize("content", [json.dumps({"k": "v" * 60}), "{not json", "x" * 5000, None])
def test_show_leaves_out_a_long_or_unreadable_result(tmp_path: Path, content: str | None) -> None:
    record = branching_record(tmp_path / "train")
    path = tmp_path / "train" / "results.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    assert re.search(r"^  train +Completed +2\.0s  run train_1$", draw(record), re.M)


def test_show_puts_a_result_that_does_not_fit_on_a_line_of_its_own(tmp_path: Path) -> None:
    record = branching_record(tmp_path / "train")
    long_id = "train_" + "x" * 60
    record.steps["train"] = record.steps["train"].model_copy(update={"run_id": long_id})
    lines = draw(record).splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("run train_x"))
    assert lines[at].strip() == f"run {long_id}" and lines[at - 1].split()[0] == "train"
    assert lines[at + 1].strip() == '-> {"accuracy":0.93,"epochs":3}'
    assert all(len(line) <= 100 for line in lines)


def test_dot_draws_conditions_as_diamonds_with_labelled_branches(tmp_path: Path) -> None:
    text = dot(branching_record(tmp_path / "train"))
    assert '"check" [label="check\\nCompleted", fillcolor="#d9ead3", shape=diamond, ' in text
    assert '"check" -> "register" [label="if"];' in text
    assert '"check" -> "alarm" [label="else"];' in text
    assert '"train" -> "check";' in text and '"alarm" -> "after_alarm";' in text
    skipped = '[label="alarm\\nSkipped", fillcolor="#eeeeee", style="rounded,filled,dotted"];'
    assert f'"alarm" {skipped}' in text
    assert '"after_alarm" [label="after_alarm\\nSkipped", fillcolor="#eeeeee", ' in text
    assert '"register" [label="register\\nCompleted", fillcolor="#d9ead3"];' in text


def test_show_through_the_cli_reads_the_record(tmp_path: Path, capsys: Any) -> None:
    record = branching_record(tmp_path / "train")
    records.write(record)
    stored = records.read(record.id)
    assert main(["pipeline", "show", record.id]) == 0
    assert capsys.readouterr().out.rstrip("\n") == draw(stored)
    assert "condition held: if -> register" in draw(stored)
    assert main(["pipeline", "show", record.id, "--format", "dot"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == dot(stored)


# ------------------------------------------------------------------ pipeline result
class Opaque:
    pass


@step
def answer() -> dict[str, Any]:
    return {"x": 42, "names": ["a", "b"]}


@step
def as_set() -> set[int]:
    return {1, 2}


@step
def as_object() -> Opaque:
    return Opaque()


@step
def register(value: int) -> str:
    return f"registered {value}"


@step
def boom() -> None:
    raise ValueError("no data")


@pytest.fixture
def finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PipelineRun:
    """A real @step pipeline, run to the end: answer, two results with no JSON form, a
    condition that holds (register runs; the fail step is skipped)."""
    workspace = tmp_path / "workspace"  # @step pipelines snapshot the working directory
    workspace.mkdir()
    monkeypatch.chdir(workspace)
    value = answer()
    check = ConditionStep(
        "check", conditions=[ConditionGreaterThan(value["x"], 10)],
        if_steps=[register(value["x"])], else_steps=[FailStep("alarm", error_message="low")],
    )  # fmt: skip
    run = Pipeline("results", steps=[check, as_set(), as_object()]).start()
    run.wait()
    return run


def test_result_prints_a_step_result_as_indented_sorted_json(
    finished: PipelineRun, capsys: Any
) -> None:
    assert main(["pipeline", "result", finished.id, "answer"]) == 0
    out = capsys.readouterr().out
    assert out == '{\n  "names": [\n    "a",\n    "b"\n  ],\n  "x": 42\n}\n'
    assert main(["pipeline", "result", finished.id, "register"]) == 0
    assert json.loads(capsys.readouterr().out) == "registered 42"


def test_result_of_an_unknown_step_lists_the_steps(finished: PipelineRun, capsys: Any) -> None:
    assert main(["pipeline", "result", finished.id, "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fitdock: error: pipeline run {finished.id} has no step 'nope'; ")
    assert err.rstrip().endswith("its steps: " + ", ".join(finished.record.steps))


@pytest.mark.parametrize("name", ["as_set", "as_object"])
def test_a_result_with_no_json_form_exits_1_and_points_at_python(
    finished: PipelineRun, name: str, capsys: Any
) -> None:
    assert main(["pipeline", "result", finished.id, name]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"the result of step {name!r} has no JSON form" in captured.err
    assert f"PipelineRun({finished.id!r}).result({name!r})" in captured.err
    assert finished.result(name) is not None  # it does have a result, in Python


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("alarm", "step 'alarm' is a fail step: result() is for @step functions"),
        ("check", "step 'check' is a condition step: result() is for @step functions"),
    ],
)
def test_a_step_with_no_result_exits_1_with_results_message(
    finished: PipelineRun, name: str, message: str, capsys: Any
) -> None:
    assert main(["pipeline", "result", finished.id, name]) == 1
    assert capsys.readouterr().err == f"fitdock: error: {message}\n"
    with pytest.raises(StepResultError) as raised:
        finished.result(name)
    assert str(raised.value) == message


def test_a_skipped_or_failed_function_step_has_no_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    value = answer()
    check = ConditionStep(
        "check", conditions=[ConditionGreaterThan(value["x"], 100)],
        if_steps=[register(value["x"])], else_steps=[boom()],
    )  # fmt: skip
    run = Pipeline("failing", steps=[check]).start()
    run.wait_for_completion(show_output=False, raise_on_error=False)
    for name, message in [
        ("register", "step 'register' has no result: it is Skipped"),
        ("boom", "step 'boom' has no result: it is Failed"),
    ]:
        assert main(["pipeline", "result", run.id, name]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"fitdock: error: {message}"), err
        with pytest.raises(StepResultError) as raised:
            run.result(name)
        assert err == f"fitdock: error: {raised.value}\n"
    assert re.search(r"register +Skipped +-  skipped: branch not taken$", draw(run.record), re.M)


def test_result_help_and_the_pipeline_help_mention_it(capsys: Any) -> None:
    for argv in (["pipeline", "--help"], ["pipeline", "result", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert "fitdock pipeline result RUN_ID evaluate" in out
    assert "usage: fitdock pipeline result [-h] run_id step" in out
    assert "PipelineRun(RUN_ID).result(STEP)" in out
