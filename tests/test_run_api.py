"""Azure's Run API: in the script (``Run.get_context()``: metrics, rows, tables, images, tags,
properties, uploads, status, details, parent, experiment), on the handle (``get_metrics`` in
Azure's shape, ``get_details``, ``get_children``, ``download_files``, ``register_model``,
``get_portal_url``), two MPI ranks logging at once, offline, and the model registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import write_script

from fitdock import Estimator, Model, Mpi, Run, RunStatus
from fitdock.errors import NotAvailableError, SpecError
from fitdock.pipelines import Pipeline, PythonScriptStep
from fitdock.runs import layout, logbook
from fitdock.runs.context import RunContext

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # copied as bytes: any content will do

SCRIPT = f"""
import io, json, os
from pathlib import Path
from fitdock import Run

PNG = {PNG!r}


class Figure:  # what log_image needs of a matplotlib figure
    def savefig(self, handle, format):
        assert format == "png"
        handle.write(PNG)


run = Run.get_context(allow_offline=False)
seen = {{"status_before": run.get_status()}}
run.log("loss", 0.5, description="training loss")
run.log("loss", 0.25)
run.log("acc", 0.75)
run.log_list("lrs", [0.1])
run.log_list("accs", [0.6, 0.7])
run.log_row("curve", x=1, y=0.5)
run.log_row("curve", description="roc", x=2, y=0.25)
run.log_table("pr", {{"precision": [0.9, 0.8], "recall": [0.1, 0.2]}})
run.log_row("pr", precision=0.7, recall=0.3, f1=0.4)
Path("tiny.png").write_bytes(PNG)
run.log_image("sample", path="tiny.png", description="a sample")
run.log_image("plot", plot=Figure())
run.tag("team", "vision")
run.tag("flag")
run.set_tags({{"stage": "dev", "n": 3}})
run.add_properties({{"owner": "me"}})
try:
    run.add_properties({{"owner": "you"}})
except ValueError as error:
    seen["property_refused"] = str(error)
run.add_properties({{"owner": "me"}})  # the same value again is fine
Path("note.txt").write_text("noted")
run.upload_file("outputs/uploaded.txt", "note.txt")
run.upload_file("extra/notes.txt", io.BytesIO(b"streamed"))
Path("folder/sub").mkdir(parents=True)
Path("folder/a.txt").write_text("a")
Path("folder/sub/b.txt").write_text("b")
run.upload_folder("bundle", "folder")
for bad in ("../escape.txt", "/abs.txt"):
    try:
        run.upload_file(bad, "note.txt")
    except ValueError:
        seen.setdefault("refused", []).append(bad)
try:
    run.upload_file("extra/notes.txt", "note.txt")
except FileExistsError:
    seen["second_upload_refused"] = True
details = run.get_details()
seen.update(
    id=run.id, experiment=run.experiment.name, parent=run.parent, tags=run.get_tags(),
    properties=run.get_properties(), status=run.get_status(),
    details={{k: details[k] for k in ("runId", "status", "properties", "runDefinition")}},
)
run.complete()
seen["status_after"] = run.get_status()
with open(os.path.join(run.output_dir, "seen.json"), "w") as handle:
    json.dump(seen, handle)
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """One run whose script calls every in-script method, shared by the checks below."""
    base = tmp_path_factory.mktemp("api")
    mp = pytest.MonkeyPatch()
    mp.setenv("FITDOCK_HOME", str(base / "home"))
    try:
        src = write_script(base / "src", SCRIPT)
        est = Estimator(src, entry_script="train.py", script_params={"--epochs": 2},
                        user_managed=True)  # fmt: skip
        run = est.fit()
        return Run(run.id, home=base / "home"), base
    finally:
        mp.undo()


def seen(run: Run) -> dict[str, Any]:
    return json.loads((run.output_dir / "seen.json").read_text())


# ------------------------------------------------------------------------------ in the script
def test_the_script_ran_every_call(finished: tuple[Run, Path]) -> None:
    run, _ = finished
    assert run.status is RunStatus.COMPLETED, (run.error, run.log_dir)
    said = seen(run)
    assert said["id"] == run.id
    assert said["experiment"] == run.record["name"]
    assert said["parent"] is None
    assert said["status_before"] == said["status"] == "Running"
    assert said["status_after"] == "Completed"
    assert said["tags"] == {"team": "vision", "flag": "", "stage": "dev", "n": "3"}
    assert said["properties"] == {"owner": "me"}
    assert "cannot change" in said["property_refused"]
    assert said["refused"] == ["../escape.txt", "/abs.txt"]
    assert said["second_upload_refused"] is True
    details = said["details"]
    assert details["runId"] == run.id and details["status"] == "Running"
    assert details["properties"] == {"owner": "me"}
    assert details["runDefinition"]["script"] == "train.py"
    assert details["runDefinition"]["arguments"] == ["--epochs", "2"]


def test_the_script_never_wrote_the_record(finished: tuple[Run, Path]) -> None:
    run, _ = finished
    on_disk = json.loads((run.run_dir / layout.RECORD).read_text())
    assert on_disk["tags"] == {}  # the supervisor's file; readers merge tags.jsonl
    assert run.record["tags"] == {"team": "vision", "flag": "", "stage": "dev", "n": "3"}
    for name in (layout.METRICS, layout.TABLES, layout.TAGS, layout.IMAGE_LOG):
        assert (run.run_dir / name).read_bytes().endswith(b"\n"), name


# ------------------------------------------------------------------------------ on the handle
def test_metrics_in_azures_shape(finished: tuple[Run, Path]) -> None:
    run, _ = finished
    assert run.get_metrics() == {
        "loss": [0.5, 0.25],
        "acc": 0.75,  # logged once: the value
        "lrs": [0.1],  # log_list: a list, even of one
        "accs": [0.6, 0.7],
        "curve": {"x": [1, 2], "y": [0.5, 0.25]},  # rows: a table
        "pr": {"precision": [0.9, 0.8, 0.7], "recall": [0.1, 0.2, 0.3], "f1": [None, None, 0.4]},
        "sample": "outputs/images/sample.png",
        "plot": "outputs/images/plot.png",
    }
    assert run.get_metrics("curve") == {"curve": {"x": [1, 2], "y": [0.5, 0.25]}}
    assert run.get_metrics("acc", as_lists=True) == {"acc": [0.75]}
    assert run.get_metrics("sample", as_lists=True) == {"sample": ["outputs/images/sample.png"]}
    assert run.get_metrics(rank=1) == {}
    assert (run.output_dir / "images" / "sample.png").read_bytes() == PNG
    assert (run.output_dir / "images" / "plot.png").read_bytes() == PNG


def test_tags_properties_status_and_url(finished: tuple[Run, Path]) -> None:
    run, _ = finished
    assert run.get_tags() == {"team": "vision", "flag": "", "stage": "dev", "n": "3"}
    assert run.get_properties() == {"owner": "me"}
    assert run.get_status() == "Completed"
    assert run.get_portal_url() == run.run_dir.resolve().as_uri()
    assert run.get_portal_url().startswith("file:///")
    assert run.get_children() == []


def test_details_in_azures_shape(finished: tuple[Run, Path]) -> None:
    run, _ = finished
    details = run.get_details()
    assert details["runId"] == run.id and details["status"] == "Completed"
    assert details["target"] == "local"
    assert details["startTimeUtc"].endswith("Z") and details["endTimeUtc"].endswith("Z")
    assert details["startTimeUtc"] <= details["endTimeUtc"]
    assert details["properties"] == {"owner": "me"}
    assert details["tags"]["team"] == "vision"
    assert details["runDefinition"]["script"] == "train.py"
    assert details["runDefinition"]["arguments"] == ["--epochs", "2"]
    assert details["logFiles"]["logs/rank_0.stdout.log"] == str(run.log_dir / "rank_0.stdout.log")
    assert details["record"]["id"] == run.id and details["record"]["spec"]
    assert "error" not in details


def test_files_uploaded_and_downloaded(finished: tuple[Run, Path], tmp_path: Path) -> None:
    run, _ = finished
    names = run.get_file_names()
    for name in ("outputs/uploaded.txt", "extra/notes.txt", "bundle/a.txt", "bundle/sub/b.txt",
                 "outputs/images/sample.png", "logs/rank_0.stdout.log"):  # fmt: skip
        assert name in names
    assert (run.run_dir / "uploads" / "extra" / "notes.txt").read_bytes() == b"streamed"
    assert run.download_file("extra/notes.txt", tmp_path / "one").read_bytes() == b"streamed"
    copies = run.download_files(output_directory=tmp_path / "all")
    got = {p.relative_to(tmp_path / "all").as_posix() for p in copies}
    assert {"outputs/uploaded.txt", "extra/notes.txt", "bundle/a.txt", "bundle/sub/b.txt"} <= got
    assert not any(name.startswith(("logs/", "checkpoints/")) for name in got)
    assert (tmp_path / "all" / "outputs" / "uploaded.txt").read_text() == "noted"
    bundle = run.download_files("bundle/", tmp_path / "bundle", append_prefix=False)
    assert sorted(p.relative_to(tmp_path / "bundle").as_posix() for p in bundle) == [
        "a.txt",
        "sub/b.txt",
    ]
    logs = run.download_files("logs/", tmp_path / "logs")
    assert tmp_path / "logs" / "logs" / "rank_0.stdout.log" in logs


def test_runs_show_lists_tables_images_tags_and_properties(finished: tuple[Run, Path]) -> None:
    run, _ = finished
    text = run.summary()
    assert "  loss: 0.25 (last of 2)" in text
    assert "  acc: 0.75 (last of 1)" in text
    assert "  table curve: 2 rows (x, y)" in text
    assert "  table pr: 3 rows (precision, recall, f1)" in text
    assert "  team: vision" in text and "  n: 3" in text
    assert "  property owner: me" in text
    assert f"  image: {run.output_dir / 'images' / 'sample.png'} (sample)" in text
    assert "  uploaded: 3 files in" in text  # outputs/uploaded.txt is among the outputs


# ------------------------------------------------------------------------------ models
def test_register_model_versions_and_download(finished: tuple[Run, Path], tmp_path: Path) -> None:
    run, base = finished
    home = base / "home"
    first = run.register_model("notes", "outputs/uploaded.txt", tags={"kind": "text"})
    second = run.register_model("notes", "bundle", properties={"size": 2}, description="two")
    assert (first.version, second.version) == (1, 2)
    assert first.id == "notes:1" and first.run_id == run.id and first.tags == {"kind": "text"}
    assert second.properties == {"size": "2"} and second.description == "two"
    assert (home / "models" / "notes" / "2" / "model.json").is_file()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FITDOCK_HOME", str(home))
        assert Model("notes") == second and Model("notes", version=1) == first
        assert Model(None, "notes").version == 2 and Model(id="notes:1") == first  # (ws, name)
        assert [m.id for m in Model.list()] == ["notes:1", "notes:2"]
        assert [m.id for m in Model.list(latest=True)] == ["notes:2"]
        assert [m.id for m in Model.list(tags=[["kind", "text"]])] == ["notes:1"]
        assert [m.id for m in Model.list(run_id="nope")] == []
        assert Model.get_model_path("notes", version=1).endswith("files/uploaded.txt")
        with pytest.raises(SpecError, match="no version 7"):
            Model("notes", version=7)
        with pytest.raises(SpecError, match="has: notes"):
            Model("other")
    file = first.download(tmp_path / "down")
    assert Path(file).read_text() == "noted" and Path(file).name == "uploaded.txt"
    folder = Path(second.download(tmp_path / "down"))
    assert (folder / "sub" / "b.txt").read_text() == "b"
    with pytest.raises(FileExistsError, match="exist_ok"):
        first.download(tmp_path / "down")
    assert first.download(tmp_path / "down", exist_ok=True) == file
    with pytest.raises(FileNotFoundError, match="get_file_names"):
        run.register_model("notes", "outputs/missing.pt")
    with pytest.raises(SpecError, match="model name"):
        run.register_model("../bad", "bundle")


REGISTER = """
import sys
from pathlib import Path
from fitdock.runs.models import register
source = Path(sys.argv[1]) / f"model-{sys.argv[2]}"
source.write_text(sys.argv[2])
print(register("race", source, run_id=sys.argv[2]).version)
"""


def test_registering_at_once_gives_each_its_own_version(tmp_path: Path) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER, str(tmp_path), str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    versions = [int(p.communicate(timeout=60)[0]) for p in processes]
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    for n, version in enumerate(versions):
        model = Model("race", version=version)
        assert model.run_id == str(n) and model.path.read_text() == str(n)
    assert not [p for p in (Path(tmp_path / "fitdock-home" / "models" / "race")).iterdir()
                if p.name.startswith(".new-")]  # fmt: skip


# ------------------------------------------------------------------------------ failure
FAILS = """
from fitdock import Run
run = Run.get_context()
run.fail("bad data in shard 3")
print("exits 0 anyway")
"""


def test_fail_in_the_script_makes_the_run_failed(tmp_path: Path) -> None:
    run = Estimator(write_script(tmp_path / "src", FAILS), entry_script="train.py",
                    user_managed=True).fit()  # fmt: skip
    assert run.record["exit_code"] == 0
    assert run.get_status() == "Failed" and run.status is RunStatus.FAILED
    assert run.error == {
        "reason": "rank_failed",
        "message": "the script called fail(): bad data in shard 3",
        "rank": 0,
    }
    details = run.get_details()
    assert details["status"] == "Failed"
    assert details["error"]["error"]["message"].endswith("bad data in shard 3")
    assert json.loads((run.run_dir / "run.json").read_text())["status"] == "Completed"


# ------------------------------------------------------------------------------ children
STEP = """
import json, os
from fitdock import Run
run = Run.get_context()
run.log("seen", 1)
with open(os.path.join(run.output_dir, "parent.json"), "w") as handle:
    json.dump({"parent": run.parent.id, "experiment": run.experiment.name}, handle)
"""


def test_a_pipelines_steps_are_its_children(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", STEP, name="step.py")
    steps = [PythonScriptStep("step.py", name=name, source_directory=src) for name in "ab"]
    pipeline_run = Pipeline(None, steps).submit(wait=True)
    assert pipeline_run.status is RunStatus.COMPLETED, pipeline_run.error
    children = Run.children_of(pipeline_run.id)
    assert sorted(c.id for c in children) == sorted(s.id for s in pipeline_run.get_steps())
    for child in children:
        said = json.loads((child.output_dir / "parent.json").read_text())
        assert said["parent"] == pipeline_run.id
        assert said["experiment"] == child.record["name"]
        assert child.get_children() == [] and child.get_details()["parentRunId"] == pipeline_run.id


# ------------------------------------------------------------------------------ two ranks
RANKS = f"""
import json, os
from fitdock import Run

PNG = {PNG!r}


class Figure:
    def savefig(self, handle, format):
        handle.write(PNG)


run = Run.get_context()
rank = run.rank
big = list(range(2000))  # a line of ~10 kB: written under the flock
for i in range(300):
    run.log_row("rows", rank=rank, i=i, **({{"odd": True}} if i % 2 else {{}}))
    if i % 10 == 0:
        run.log_table("tables", {{"rank": [rank] * 20, "j": list(range(20))}})
        run.log_table("big", {{"rank": [rank] * len(big), "k": big}})
        run.tag(f"tag{{rank}}", i)
run.log_image("sample", plot=Figure())
"""


@pytest.mark.mpi
def test_two_ranks_log_rows_and_tables_at_once(tmp_path: Path) -> None:
    run = Estimator(
        write_script(tmp_path / "src", RANKS), entry_script="train.py", user_managed=True,
        distributed_training=Mpi(), process_count_per_node=2,
    ).fit()  # fmt: skip
    assert run.status is RunStatus.COMPLETED, run.error
    lines = (run.run_dir / "tables.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == 2 * (300 + 30 + 30)
    assert all(json.loads(line) for line in lines[:-1])  # none torn, none interleaved
    metrics = run.get_metrics()
    assert len(metrics["rows"]["i"]) == 600 and len(metrics["tables"]["j"]) == 2 * 30 * 20
    assert len(metrics["big"]["k"]) == 2 * 30 * 2000
    for rank in (0, 1):
        rows = run.get_metrics("rows", rank=rank)["rows"]
        assert rows["i"] == list(range(300)) and set(rows["rank"]) == {rank}
        assert rows["odd"] == [None if i % 2 == 0 else True for i in range(300)]
        big = run.get_metrics("big", rank=rank)["big"]
        assert big["k"] == list(range(2000)) * 30 and set(big["rank"]) == {rank}
    assert {k: v for k, v in run.get_tags().items() if k.startswith("tag")} == {
        "tag0": "290",
        "tag1": "290",
    }
    images = sorted(run.get_metrics("sample")["sample"])
    assert images == ["outputs/images/sample-2.png", "outputs/images/sample.png"]
    assert all((run.run_dir / image).read_bytes() == PNG for image in images)


# ------------------------------------------------------------------------------ offline
def test_offline_context_prints_and_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotAvailableError, match="allow_offline"):
        Run.get_context(allow_offline=False)
    assert not (tmp_path / "outputs").exists()  # refused before making anything
    ctx = Run.get_context()
    assert ctx.offline and ctx.id is None and ctx.parent is None
    assert ctx.experiment.name is None
    ctx.log("loss", 0.5, description="d")
    ctx.log_list("accs", [0.1, 0.2])
    ctx.log_row("curve", x=1)
    ctx.log_table("pr", {"p": [0.5]})
    ctx.upload_file("outputs/x.txt", "x.txt")
    ctx.tag("team", "vision")
    ctx.set_tags({"n": 1})
    ctx.add_properties({"owner": "me"})
    with pytest.raises(ValueError, match="cannot change"):
        ctx.add_properties({"owner": "you"})
    assert ctx.get_tags() == {"team": "vision", "n": "1"}
    assert ctx.get_properties() == {"owner": "me"}
    image = ctx.log_image("plot", plot=_Figure())
    assert image == Path("outputs/images/plot.png") and image.read_bytes() == PNG
    assert ctx.get_status() == "Running"
    ctx.fail(ValueError("nope"))
    assert ctx.get_status() == "Failed"
    assert ctx.get_details()["status"] == "Failed" and ctx.get_details()["runId"] is None
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "[metric] loss=0.5",
        "[metric] accs=[0.1, 0.2]",
        '[row] curve: {"row": {"x": 1}}',
        '[table] pr: {"columns": {"p": [0.5]}}',
        "[upload] outputs/x.txt <- x.txt",
        "[image] plot: outputs/images/plot.png",
        "[status] Failed: ValueError: nope",
    ]
    made = {p.name for p in tmp_path.iterdir()} - {"fitdock-home"}
    assert made == {"checkpoints", "outputs"}


class _Figure:
    def savefig(self, handle: Any, format: str) -> None:
        handle.write(PNG)


def test_bad_calls_say_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ctx = RunContext()
    with pytest.raises(ValueError, match="non-empty string"):
        ctx.log("", 1)
    with pytest.raises(ValueError, match="at least one column"):
        ctx.log_row("r")
    with pytest.raises(ValueError, match="different lengths"):
        ctx.log_table("t", {"a": [1, 2], "b": [1]})
    with pytest.raises(ValueError, match="dict of columns"):
        ctx.log_table("t", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both or neither"):
        ctx.log_image("i")
    with pytest.raises(ZeroDivisionError):
        ctx.log_image("broken", plot=_Broken())
    assert not (tmp_path / "outputs" / "images" / "broken.png").exists()


class _Broken:
    def savefig(self, handle: Any, format: str) -> None:
        raise ZeroDivisionError


# ------------------------------------------------------------------------------ the logbook
def test_reading_skips_a_line_still_being_written(tmp_path: Path) -> None:
    rows = [{"name": "t", "kind": "row", "row": {"a": 1}, "rank": 0}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"name": "t", "kind": "ro'
    (tmp_path / logbook.TABLES).write_text(text)
    assert logbook.tables(tmp_path) == {"t": {"a": [1]}}


def test_tables_join_rows_and_tables_column_by_column(tmp_path: Path) -> None:
    lines = [
        {"name": "t", "kind": "table", "columns": {"a": [1, 2]}, "rank": 0},
        {"name": "t", "kind": "row", "row": {"b": 3}, "rank": 1},
        {"name": "t", "kind": "table", "columns": {"a": [4], "c": [5]}, "rank": 0},
    ]
    (tmp_path / logbook.TABLES).write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert logbook.tables(tmp_path) == {
        "t": {"a": [1, 2, None, 4], "b": [None, None, 3, None], "c": [None, None, None, 5]}
    }
    assert logbook.tables(tmp_path, rank=1) == {"t": {"b": [3]}}


def test_file_names_stay_inside_the_run(tmp_path: Path) -> None:
    assert logbook.artifact_path(tmp_path, "outputs/m.pt") == tmp_path / "outputs" / "m.pt"
    assert logbook.artifact_path(tmp_path, "m.pt") == tmp_path / "uploads" / "m.pt"
    for bad in ("", "/etc/passwd", "a/../../b", "..", "a\\b"):
        with pytest.raises(ValueError, match="relative path"):
            logbook.artifact_path(tmp_path, bad)


def test_layout_names_every_file_the_script_writes() -> None:
    assert logbook.ARTIFACT_FOLDERS == (layout.OUTPUTS, layout.LOGS, layout.CHECKPOINTS)
    for name in (*logbook.SCRIPT_FILES, logbook.RECORD, logbook.IMAGES):
        assert name in vars(layout).values()
    listed = {word.rstrip("/") for word in (layout.__doc__ or "").split()}
    assert set(logbook.SCRIPT_FILES) <= listed
