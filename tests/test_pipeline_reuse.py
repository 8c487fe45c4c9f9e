"""Content-addressed reuse of pipeline steps, case by case, with what ``explain`` says.

prepare (reads an input file, writes ``raw``) -> train (reads ``raw``, writes ``model``)
-> evaluate (reads ``model``), each from a source directory of its own (a step's whole
source directory is part of its key, as on Azure). Every step is a real run; the cache
lives in this test's own FITDOCK_HOME."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_script

from fitdock import RunStatus
from fitdock.pipelines import (
    InputData,
    Pipeline,
    PipelineData,
    PipelineParameter,
    PipelineRun,
    PythonScriptStep,
    RunConfiguration,
)

PREPARE = """\
import os, sys
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
text = open(src).read()
open(os.path.join(out, "data.txt"), "w").write(text.upper() if "--upper" in sys.argv else text)
"""
TRAIN = """\
import os, sys
raw, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
rate = os.environ.get("AML_PARAMETER_rate", "?")
open(os.path.join(out, "model.txt"), "w").write(open(os.path.join(raw, "data.txt")).read() + rate)
"""
EVALUATE = """\
import os, sys
print("score", len(open(os.path.join(sys.argv[1], "model.txt")).read()))
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write_script(src / "prepare", PREPARE, name="prepare.py")
    write_script(src / "train", TRAIN, name="train.py")
    write_script(src / "evaluate", EVALUATE, name="evaluate.py")
    (src / "train" / "notes.md").write_text("ignored\n")
    (src / "train" / ".amlignore").write_text("notes.md\n")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    return tmp_path


def pipeline(work: Path, data: Path | None = None) -> Pipeline:
    src = work / "src"
    raw, model = PipelineData("raw"), PipelineData("model")
    rate = PipelineParameter("rate", default_value="0.1")
    source = InputData(data or work / "data.csv", name="csv")
    config = RunConfiguration()
    PythonScriptStep(  # prepare: found through the data it writes
        "prepare.py", arguments=[source, raw], inputs=[source], outputs=[raw],
        source_directory=src / "prepare", runconfig=config,
    )  # fmt: skip
    PythonScriptStep(  # train
        "train.py", arguments=[raw, model], inputs=[raw], outputs=[model],
        params={"rate": rate}, source_directory=src / "train", runconfig=config,
    )  # fmt: skip
    evaluate = PythonScriptStep(
        "evaluate.py",
        arguments=[model],
        inputs=[model],
        source_directory=src / "evaluate",
        runconfig=config,
    )
    return Pipeline(None, [evaluate])


def submit(work: Path, data: Path | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    run = pipeline(work, data).submit(wait=True, **kwargs)  # type: ignore[arg-type]
    assert run.status is RunStatus.COMPLETED, run.error
    return run


def reused(run) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    return {name: state.reused for name, state in run.record.steps.items()}


def test_nothing_changed_reuses_every_step(work: Path) -> None:
    first = submit(work)
    assert reused(first) == {"prepare.py": False, "train.py": False, "evaluate.py": False}
    assert "never run before" in first.explain("train.py")
    again = submit(work)
    assert reused(again) == {"prepare.py": True, "train.py": True, "evaluate.py": True}
    for step in again.get_steps():
        assert step.reused and step.reused_from == first.record.steps[step.name].run_id
    assert f"reused from {first.record.steps['train.py'].run_id}" in again.explain("train.py")
    assert again.get_output_data("model") == first.get_output_data("model")


def test_an_edited_script_reruns_it_and_its_unchanged_output_is_not_rerun_downstream(
    work: Path,
) -> None:
    submit(work)
    (work / "src" / "train" / "train.py").write_text(TRAIN + "# tuned\n")
    run = submit(work)
    assert reused(run) == {"prepare.py": True, "train.py": False, "evaluate.py": True}
    assert "source files: train.py (changed)" in run.explain("train.py")


def test_an_ignored_file_edited_changes_nothing(work: Path) -> None:
    submit(work)
    (work / "src" / "train" / "notes.md").write_text("still ignored\n")
    assert all(reused(submit(work)).values())


def test_a_parameter_change_reruns_the_step_that_uses_it(work: Path) -> None:
    submit(work)
    run = submit(work, pipeline_parameters={"rate": "0.5"})
    assert reused(run) == {"prepare.py": True, "train.py": False, "evaluate.py": False}
    assert run.explain("train.py") == 'train.py: ran: param rate: "0.1" -> "0.5"'


def test_data_changed_at_the_same_path_reruns(work: Path) -> None:
    submit(work)
    (work / "data.csv").write_text("a,b\n3,4\n")
    run = submit(work)
    assert not reused(run)["prepare.py"]
    assert run.explain("prepare.py") == "prepare.py: ran: input csv: its content changed"


def test_the_same_data_at_a_new_path_is_reused(work: Path) -> None:
    submit(work)
    moved = work / "elsewhere" / "copy.csv"
    moved.parent.mkdir()
    shutil.copyfile(work / "data.csv", moved)
    assert all(reused(submit(work, moved)).values())


def test_identical_output_from_a_rerun_upstream_cuts_off_the_rest(work: Path) -> None:
    submit(work)
    (work / "src" / "prepare" / "prepare.py").write_text(
        PREPARE + "# a comment changes the key only\n"
    )
    run = submit(work)
    assert reused(run) == {"prepare.py": False, "train.py": True, "evaluate.py": True}


def test_deleted_outputs_mean_a_rerun(work: Path) -> None:
    first = submit(work)
    shutil.rmtree(first.get_output_data("raw"))
    run = submit(work)
    assert not reused(run)["prepare.py"]
    assert reused(run)["train.py"]  # the rerun wrote the same bytes: the cutoff holds


def test_modified_outputs_are_never_reused(work: Path) -> None:
    first = submit(work)
    (first.get_output_data("model") / "model.txt").write_text("tampered")
    run = submit(work)
    assert not reused(run)["train.py"]
    assert (run.get_output_data("model") / "model.txt").read_text() != "tampered"


def test_regenerate_outputs_and_force(work: Path) -> None:
    submit(work)
    assert not any(reused(submit(work, regenerate_outputs=True)).values())
    run = submit(work, force=["train.py"])
    assert reused(run) == {"prepare.py": True, "train.py": False, "evaluate.py": False}
    assert run.explain("train.py") == "train.py: ran: forced"


SUBMITTER = """\
import sys
sys.path.insert(0, sys.argv[1])
from test_pipeline_reuse import pipeline
from pathlib import Path
run = pipeline(Path(sys.argv[2])).submit()
run.wait_for_completion(show_output=True)
"""


def test_a_killed_submitter_then_a_resubmission_reuses_what_completed(work: Path) -> None:
    (work / "src" / "evaluate" / "evaluate.py").write_text(
        "import time\ntime.sleep(60)\n" + EVALUATE
    )
    tests = str(Path(__file__).parent)
    child = subprocess.Popen(
        [sys.executable, "-c", SUBMITTER, tests, str(work)],
        stdout=subprocess.PIPE, text=True, env=os.environ,
    )  # fmt: skip
    assert child.stdout is not None
    for line in child.stdout:
        if "step evaluate.py: Running" in line:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    (killed,) = PipelineRun.list()
    assert killed.status is RunStatus.FAILED  # its scheduler is gone: it says so
    assert killed.error is not None and killed.error["reason"] == "lost_scheduler"
    (work / "src" / "evaluate" / "evaluate.py").write_text(EVALUATE)
    run = submit(work)
    assert reused(run) == {"prepare.py": True, "train.py": True, "evaluate.py": False}


def test_a_preview_says_what_would_run_and_submits_nothing(work: Path, fitdock_home: Path) -> None:
    from fitdock.pipelines.preview import preview

    never = preview(pipeline(work))
    assert never["prepare.py"] == "runs: never run before"
    assert never["train.py"].startswith("runs: after prepare.py")
    first = submit(work)
    runs_before = sorted((fitdock_home / "runs").iterdir())
    (work / "src" / "evaluate" / "evaluate.py").write_text(EVALUATE + "# changed\n")
    said = preview(pipeline(work))
    assert said["prepare.py"] == f"reused from {first.record.steps['prepare.py'].run_id} " + (
        f"(key {first.record.steps['prepare.py'].key[:12]})"
    )
    assert said["evaluate.py"] == "runs: source files: evaluate.py (changed)"
    assert sorted((fitdock_home / "runs").iterdir()) == runs_before


def test_a_deleted_step_run_is_not_reused(work: Path, fitdock_home: Path) -> None:
    first = submit(work)
    shutil.rmtree(fitdock_home / "runs" / first.record.steps["evaluate.py"].run_id)
    run = submit(work)
    assert reused(run) == {"prepare.py": True, "train.py": True, "evaluate.py": False}
