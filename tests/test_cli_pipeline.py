"""``fitdock pipeline ...``, run as a real subprocess on a two-step pipeline file: make
(writes a PipelineData) -> use (reads it), each a PythonScriptStep of a tiny script in a
source directory of its own, with the default (user-managed) RunConfiguration."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_until, write_script

from fitdock.cli.pipeline import parse_params
from fitdock.pipelines import PipelineRun

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
