"""Names that become paths (issue 15): run ids, experiment, pipeline, step, input and data
names with ``..``, ``/``, NUL, line breaks or 200+ characters are refused with a clear
error or made safe, and a run id given to a lookup (``Run(id)``, ``fitdock runs show``,
``logs``, ``metrics``, ``cancel``, ``compare``, ``sync-mlflow``, ``pipeline show``) reads
nothing outside the home folder: a valid run record waits one folder up as bait."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

from fitdock import Estimator, Run
from fitdock.errors import RunNotFoundError, SpecError
from fitdock.pipelines import InputData, PipelineData, PipelineParameter
from fitdock.pipelines.build import storage
from fitdock.pipelines.experiment import Experiment
from fitdock.runs import names
from fitdock.runs.store import RunDir, new_run_id, runs_root

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "legacy" / "local-completed.run.json"
ESCAPES = ["..", ".", "../bait", "../../bait", "a/../../bait", "runs/../../bait", "a\0b", "a\nb",
           "x" * 300, ""]  # fmt: skip
NASTY = ["..", ".", "a/b", "../x", "/abs", "a\0b", "a\nb", "a\n", "x" * 201, " ", "-rf", "a b"]


@pytest.fixture
def bait(fitdock_home: Path, tmp_path: Path) -> Path:
    """A valid run record (and a pipeline record) outside ``runs/`` and ``pipelines/``: a
    lookup that escaped would find and read them."""
    folder = tmp_path / "bait"
    folder.mkdir()
    shutil.copy(GOLDEN, folder / "run.json")
    (folder / "pipeline.json").write_text('{"not": "a pipeline record"}')
    runs_root().mkdir(parents=True)
    (fitdock_home / "pipelines").mkdir()
    assert RunDir(folder).read().status.value == "Completed"  # it would be read if reached
    return folder


def cli(*argv: str) -> tuple[int, str]:
    from fitdock.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("run_id", [*ESCAPES, str(Path("/tmp") / "bait")])
def test_run_lookups_stay_under_runs(run_id: str, bait: Path) -> None:
    for find in (Run, RunDir.find):
        with pytest.raises(RunNotFoundError) as caught:
            find(run_id)
        assert caught.value.run_id == run_id
    from fitdock.pipelines import PipelineRun

    with pytest.raises(RunNotFoundError):  # not a ValidationError of the bait's content
        PipelineRun(run_id)


@pytest.mark.parametrize("run_id", ["../../bait", "..", "runs/../../bait"])
def test_cli_lookups_stay_under_the_home(run_id: str, bait: Path) -> None:
    for argv in (
        ["runs", "show", run_id],
        ["runs", "show", "--json", run_id],
        ["runs", "logs", run_id],
        ["runs", "metrics", run_id],
        ["runs", "cancel", run_id],
        ["runs", "compare", run_id, run_id],
        ["runs", "sync-mlflow", run_id],
        ["pipeline", "show", run_id],
        ["pipeline", "cancel", run_id],
    ):
        code, text = cli(*argv)
        assert code == 2, (argv, text)
        assert text.startswith("fitdock: error: no run"), (argv, text)
        assert "Completed" not in text and "not a pipeline" not in text
    assert not (bait / "cancel").exists()  # `runs cancel` wrote nothing beside the bait


def test_the_rule_for_run_ids_is_one_folder_name() -> None:
    for run_id in [*ESCAPES, "/abs", "a\\b", "a\rb"]:
        assert names.run_id_problem(run_id) is not None, run_id
        with pytest.raises(SpecError, match="run_id"):
            names.check_run_id(run_id)
    # older ids (a script stem with spaces) are still found
    for run_id in ("train_20261202-092308_e74332", "my train_2026_ab", "con", "a..b"):
        assert names.run_id_problem(run_id) is None


def test_new_run_ids_are_safe_whatever_the_name() -> None:
    for name in [*NASTY, "we'ird $(touch M) `x`; name" + "y" * 300, "", "...", "ünïcode"]:
        run_id = new_run_id(name)
        assert names.run_id_problem(run_id) is None, run_id
        assert names.is_folder_name(run_id.split("_")[0]) or run_id.startswith("run_")
        assert len(run_id) <= names.MAX_NAME
        assert (runs_root() / run_id).parent == runs_root()


@pytest.mark.parametrize("bad", NASTY)
def test_names_that_become_folders_are_refused(bad: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("")
    with pytest.raises(SpecError, match="experiment_name"):
        Estimator(src, entry_script="train.py", experiment_name=bad)
    with pytest.raises(SpecError, match="Experiment name"):
        Experiment(bad)
    with pytest.raises(SpecError, match="pipeline name") as caught:
        storage(bad)
    assert caught.value.field == "name"
    for make in (lambda: PipelineData(bad), lambda: PipelineParameter(bad, 1)):
        with pytest.raises(SpecError, match="must be a word"):
            make()
    with pytest.raises(SpecError, match="InputData name"):
        InputData(src, name=bad)
    with pytest.raises(SpecError, match="input name"):
        Estimator(src, entry_script="train.py", inputs={bad: str(src)})
    with pytest.raises(SpecError, match="step name"):
        names.folder_name(bad, "step name")


def test_reserved_words_and_limits() -> None:
    """Only ``.`` and ``..`` are special on POSIX: ``con``, ``nul`` (Windows' devices) are
    ordinary names. 200 characters is the limit of a name; a derived input name is cut."""
    for ok in ("con", "nul", "aux", "a..b", "x" * 200, "A-1.b_c"):
        assert names.folder_name(ok, "name") == ok
    assert names.word("x" * 200, "name") == "x" * 200
    long = InputData(Path("/tmp") / ("d" * 250 + ".csv"))
    assert names.is_word(long.name) and len(long.name) < names.MAX_NAME
    assert InputData(Path("/tmp/9 lives.csv")).name == "_9_lives_csv"


def test_plot_out_into_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    """``fitdock runs plot --out``: the user's own path; one that cannot be written is an
    error of fitdock's, not a traceback (and an unknown run is checked first)."""
    code, text = cli("runs", "plot", "../../bait", "--metric", "loss", "--out", str(tmp_path))
    assert code == 2 and text.startswith("fitdock: error: no run"), text
