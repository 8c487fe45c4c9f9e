"""Mirroring runs to MLflow, against a real tracking server: ``mlflow server`` with a sqlite
store on loopback, started once for the module (and killed and restarted by the test of a
server that dies mid-run). Everything is read back with ``MlflowClient``.

The pure parts (params from argv, metric names, the reader of metrics.jsonl, the retry
decision) are tested without a server first."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until, write_script

from fitdock import Estimator, RunStatus
from fitdock.errors import SpecError
from fitdock.execution import tracking, tracking_session
from fitdock.execution.tracking_data import MetricReader, metric_key, script_params, table_json
from fitdock.runs.record import MirrorPart, TrackingInfo
from fitdock.runs.store import RunDir

if importlib.util.find_spec("mlflow") is None:  # the CI guard (conftest.py) fails this skip
    pytest.skip("mlflow is not installed: pip install 'fitdock[mlflow]'", allow_module_level=True)

# MLflow's own settings, as the mirror would set them, but undone after each test
CLIENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


# ---------------------------------------------------------------------------------- pure
def test_script_params_read_flags_values_and_positionals() -> None:
    argv = ["data.csv", "--lr", "0.1", "--fast", "--shift", "-1", "--tag=a", "--tag", "b"]
    assert script_params(argv) == {
        "arg.0": "data.csv", "lr": "0.1", "fast": "true", "shift": "-1", "tag": "a,b",
    }  # fmt: skip


def test_metric_names_are_what_mlflow_accepts() -> None:
    assert metric_key("loss") == "loss"
    assert metric_key("loss", rank=2) == "rank_2/loss"
    assert metric_key("acc@5 (val)") == "acc_5 _val_"
    assert metric_key("/abs//x/") == "_abs__x_"
    assert metric_key("../up") == "_.._up"
    assert len(metric_key("x" * 300)) == 250


def test_the_reader_numbers_steps_skips_text_and_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"name": "loss", "value": 0.5, "step": 10, "rank": 0, "time": 1.0},
        {"name": "acc", "value": 0.1, "step": None, "rank": 0, "time": 1.0},
        {"name": "acc", "value": True, "step": None, "rank": 1, "time": 1.0},
        {"name": "note", "value": "text", "step": None, "rank": 0, "time": 1.0},
        {"name": "acc", "value": 0.2, "step": None, "rank": 0, "time": 2.0},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"name": "lo')
    reader = MetricReader(path)
    got = reader.read(100)
    assert [(v.key, v.value, v.step, v.timestamp) for v in got] == [
        ("loss", 0.5, 10, 1000), ("acc", 0.1, 0, 1000), ("rank_1/acc", 1.0, 0, 1000),
        ("acc", 0.2, 1, 2000),
    ]  # fmt: skip
    assert reader.skipped == {"note": 1}
    assert reader.read(100) == []  # the half-written line waits
    with path.open("a") as handle:
        handle.write('ss", "value": 3, "rank": 0, "time": 3.0}\n')
    assert [(v.key, v.step) for v in reader.read(100)] == [("loss", 1)]
    again = MetricReader(path, offset=reader.offset)  # a sync resumes from the offset
    assert (again.values, again.steps) == (reader.values, reader.steps)


def test_retries_back_off_and_refusals_are_final() -> None:
    assert [tracking_session.backoff(n) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1, 2, 4, 8, 8]
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    assert tracking_session.retryable(MlflowException("API request failed: connection refused"))
    refused = MlflowException("bad", error_code=INVALID_PARAMETER_VALUE)
    assert not tracking_session.retryable(refused)
    assert table_json({"x": [1, 2], "y": [0.5]}) == {
        "columns": ["x", "y"], "data": [[1, 0.5], [2, None]],
    }  # fmt: skip


def test_import_fitdock_loads_no_mlflow() -> None:
    code = (
        "import sys, fitdock, fitdock.execution.submit, fitdock.pipelines.scheduler; "
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tracking_is_off_unless_asked() -> None:
    assert tracking.tracking_uri({}) is None
    assert tracking.tracking_uri({"MLFLOW_TRACKING_URI": "http://x"}) == "http://x"
    off = {"MLFLOW_TRACKING_URI": "http://x", "FITDOCK_TRACKING": "off"}
    assert tracking.tracking_uri(off) is None


def test_the_job_choice_comes_before_the_variables(tmp_path: Path, fitdock_home: Path) -> None:
    src = write_script(tmp_path / "src", "print('hi')\n")

    def spec(**kw: Any) -> Any:
        return Estimator(src, entry_script="train.py", user_managed=True, **kw).job_spec

    env = {"MLFLOW_TRACKING_URI": "http://x", "FITDOCK_TRACKING": "off"}
    assert tracking.tracking_uri(env, spec(tracking="off")) is None
    assert tracking.tracking_uri({"MLFLOW_TRACKING_URI": "http://x"}, spec(tracking="off")) is None
    assert tracking.tracking_uri(env, spec(tracking="mlflow")) == "http://x"
    assert (
        tracking.tracking_uri(env, spec(tracking="mlflow", tracking_uri="http://y")) == "http://y"
    )
    assert tracking.tracking_uri({}, spec(tracking="mlflow")) == (
        f"sqlite:///{fitdock_home / 'mlflow.db'}"
    )
    assert tracking.tracking_uri({}, spec()) is None
    with pytest.raises(SpecError, match="tracking"):
        spec(tracking="wandb")


# ---------------------------------------------------------------------------------- server
class Server:
    """``mlflow server`` on loopback, in a session of its own (it starts workers)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        argv = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--default-artifact-root", str(self.folder / "artifacts"),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FITDOCK_", "MLFLOW_"))}
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # seven job workers: slow to start
        log = (self.folder / "server.log").open("ab")
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        ready = wait_until(self.healthy, timeout, interval=0.2)
        tail = (self.folder / "server.log").read_text(errors="replace")[-2000:]
        assert ready, f"mlflow server did not answer within {timeout} s:\n{tail}"

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError("mlflow server exited; see " + str(self.folder / "server.log"))
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = Server(tmp_path_factory.mktemp("mlflow"))
    started.start()
    yield started
    started.stop()


@pytest.fixture
def tracked(server: Server, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Tracking on, to the module's server; an MlflowClient of it."""
    for name, value in CLIENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    from mlflow import MlflowClient

    return MlflowClient(server.uri)


def mlflow_run(client: Any, fitdock_id: str) -> Any:
    """The MLflow run that mirrors ``fitdock_id`` (found by its tag, as the mirror does)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(ids, filter_string=f"tags.`fitdock.run_id` = '{fitdock_id}'")
    assert len(found) == 1, f"{len(found)} MLflow runs for {fitdock_id}"
    return found[0]


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def artifacts(client: Any, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for entry in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return found


TRAIN = """\
import argparse
from fitdock import Run
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float)
parser.add_argument("--epochs", type=int)
parser.add_argument("--fail", action="store_true")
args = parser.parse_args()
run = Run.get_context()
for i in range(300):
    run.log("loss", 1.0 / (i + 1), step=i)
run.log("acc", 0.5)
run.log("acc", 0.75)
run.log("note", "not a number")
run.log_row("curve", x=1, y=0.5)
run.log_row("curve", x=2, y=0.25)
run.log_table("pr", {"precision": [0.9, 0.8], "recall": [0.1, 0.2]})
png = "tiny.png"
open(png, "wb").write(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(16))
run.log_image("sample", path=png)
run.tag("team", "vision")
run.upload_file("reports/summary.txt", __file__)
open("outputs/model.txt", "w").write("weights")
raise SystemExit(3 if args.fail else 0)
"""


def git_repo(folder: Path) -> str:
    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *argv],
            check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return done.stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "train")
    return git("rev-parse", "HEAD")


@pytest.mark.timeout(180)
def test_a_run_is_mirrored_with_metrics_params_tags_and_artifacts(
    tracked: Any, tmp_path: Path
) -> None:
    src = write_script(tmp_path / "src", TRAIN)
    commit = git_repo(src)
    estimator = Estimator(
        src, entry_script="train.py", script_params={"--lr": 0.1, "--epochs": 3},
        user_managed=True, experiment_name="mirrored",
    )  # fmt: skip
    run = estimator.fit()
    assert run.status is RunStatus.COMPLETED, run.error
    info = run.record["tracking"]
    assert info["missing"] == [] and info["error"] is None, info
    assert (info["metrics_logged"], info["metrics_mirrored"]) == (302, 302)
    assert info["skipped"] == {"note": 1}

    found = mlflow_run(tracked, run.id)
    assert found.info.run_id == info["run_id"]
    assert found.info.run_name == run.id
    assert found.info.status == "FINISHED"
    assert tracked.get_experiment(found.info.experiment_id).name == "mirrored"
    assert history(tracked, found.info.run_id, "loss") == [(i, 1.0 / (i + 1)) for i in range(300)]
    assert history(tracked, found.info.run_id, "acc") == [(0, 0.5), (1, 0.75)]
    params = found.data.params
    assert (params["lr"], params["epochs"]) == ("0.1", "3")
    assert params["fitdock.node_count"] == "1" and params["fitdock.entry_script"] == "train.py"
    tags = found.data.tags
    assert tags["fitdock.framework"] == "none"
    assert tags["fitdock.target"] == "local"
    assert tags["fitdock.environment_hash"] == run.record["environment_hash"]
    assert tags["fitdock.version"] == run.record["fitdock_version"]
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["team"] == "vision"
    names = artifacts(tracked, found.info.run_id)
    assert {"tables/curve.json", "tables/pr.json", "outputs/model.txt"} <= names
    assert "reports/summary.txt" in names
    assert any(name.startswith("outputs/images/sample") for name in names), names
    table = Path(tracked.download_artifacts(found.info.run_id, "tables/pr.json"))
    assert json.loads(table.read_text()) == {
        "columns": ["precision", "recall"], "data": [[0.9, 0.1], [0.8, 0.2]],
    }  # fmt: skip


BACKLOG = """\
from fitdock import Run
run = Run.get_context()
for i in range(4500):
    run.log("loss", float(i), step=i)
    run.log("lr", 0.5, step=i)
"""


@pytest.mark.timeout(180)
def test_a_backlog_at_the_end_goes_in_side_by_side_and_each_value_once(
    tracked: Any, tmp_path: Path
) -> None:
    """9,000 values logged faster than the server takes them: most are left at the run's
    end and go in over several requests at once (lanes); each arrives once, none is lost,
    and the record counts them all with the offset at the file's end."""
    src = write_script(tmp_path / "src", BACKLOG)
    run = Estimator(src, entry_script="train.py", user_managed=True).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    info = run.record["tracking"]
    assert info["missing"] == [] and info["error"] is None, info
    assert (info["metrics_logged"], info["metrics_mirrored"]) == (9000, 9000)
    assert info["metrics_offset"] == RunDir(run.snapshot_dir.parent).metrics.stat().st_size
    found = mlflow_run(tracked, run.id)
    assert history(tracked, found.info.run_id, "loss") == [(i, float(i)) for i in range(4500)]
    assert history(tracked, found.info.run_id, "lr") == [(i, 0.5) for i in range(4500)]
    assert found.data.metrics["loss"] == 4499.0  # the latest is the last step, whatever order


@pytest.mark.timeout(180)
def test_tracking_asked_by_the_job_registers_models_and_links_the_page(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in CLIENT.items():
        monkeypatch.setenv(name, value)
    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    src = write_script(tmp_path / "src", TRAIN)
    run = Estimator(
        src, entry_script="train.py", user_managed=True, experiment_name="chosen",
        tracking="mlflow", tracking_uri=server.uri,
    ).fit()  # fmt: skip
    assert run.status is RunStatus.COMPLETED, run.error
    info = run.record["tracking"]
    assert info["uri"] == server.uri and info["missing"] == [], info
    found = mlflow_run(client, run.id)
    experiment = found.info.experiment_id
    assert run.get_portal_url() == f"{server.uri}/#/experiments/{experiment}/runs/{info['run_id']}"

    model = run.register_model("mirrored-model", "outputs/model.txt", tags={"stage": "test"})
    assert model.version == 1
    versions = client.search_model_versions("name='mirrored-model'")
    assert [(v.version, v.run_id, v.tags.get("stage")) for v in versions] == [
        ("1", info["run_id"], "test")
    ]
    assert versions[0].source.endswith("/outputs/model.txt")
    again = run.register_model("mirrored-model", "outputs/model.txt")
    assert again.version == 2
    assert len(client.search_model_versions("name='mirrored-model'")) == 2


@pytest.mark.timeout(120)
def test_a_failed_run_ends_failed_in_mlflow(tracked: Any, tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", TRAIN)
    run = Estimator(
        src, entry_script="train.py", script_params={"--fail": True}, user_managed=True
    ).fit()
    assert run.status is RunStatus.FAILED
    found = mlflow_run(tracked, run.id)
    assert found.info.status == "FAILED"
    assert tracked.get_experiment(found.info.experiment_id).name == "train"  # the job's name


STEP = """\
import sys
from fitdock import Run
run = Run.get_context()
for i in range(5):
    run.log("score", float(i) * int(sys.argv[1]), step=i)
"""


@pytest.mark.timeout(180)
def test_a_pipeline_is_a_parent_run_with_its_steps_nested(tracked: Any, tmp_path: Path) -> None:
    from fitdock.pipelines import Pipeline, PythonScriptStep

    src = write_script(tmp_path / "src", STEP, name="step.py")
    first = PythonScriptStep("step.py", name="first", arguments=["1"], source_directory=src)
    second = PythonScriptStep("step.py", name="second", arguments=["2"], source_directory=src)
    second.run_after(first)
    pipeline = Pipeline(None, [second])
    run = pipeline.submit(experiment_name="nested", wait=True)
    assert run.status is RunStatus.COMPLETED, run.error

    parent = mlflow_run(tracked, run.id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["fitdock.kind"] == "pipeline"
    assert tracked.get_experiment(parent.info.experiment_id).name == "nested"
    children = tracked.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    by_step = {child.data.tags["fitdock.run_id"].split("_")[0]: child for child in children}
    assert sorted(by_step) == ["first", "second"]
    for name, factor in (("first", 1), ("second", 2)):
        child = by_step[name]
        assert child.info.status == "FINISHED"
        assert child.data.tags["fitdock.parent_id"] == run.id
        assert history(tracked, child.info.run_id, "score") == [(i, i * factor) for i in range(5)]

    from fitdock.cli import runs_mlflow  # syncing it again finds every run: nothing doubles

    parser = argparse.ArgumentParser()
    runs_mlflow.add(parser.add_subparsers())
    ns = parser.parse_args(["sync-mlflow", run.id])
    assert ns.func(ns) == 0
    assert mlflow_run(tracked, run.id).info.run_id == parent.info.run_id
    assert len(tracked.search_runs([parent.info.experiment_id])) == 3
    for child in children:
        assert len(history(tracked, child.info.run_id, "score")) == 5


HALTING = """\
import os, sys, time
from fitdock import Run
go = sys.argv[1]
run = Run.get_context()
for i in range(50):
    run.log("loss", float(i), step=i)
while not os.path.exists(go):
    time.sleep(0.02)
for i in range(50, 100):
    run.log("loss", float(i), step=i)
run.log_row("curve", x=1, y=2)
open("outputs/model.txt", "w").write("weights")
"""


@pytest.mark.timeout(240)
def test_a_server_killed_mid_run_fails_nothing_and_sync_fills_the_gap(
    tracked: Any, server: Server, tmp_path: Path
) -> None:
    from fitdock.cli import runs_mlflow

    go = tmp_path / "go"
    src = write_script(tmp_path / "src", HALTING)
    estimator = Estimator(src, entry_script="train.py", script_params=[str(go)], user_managed=True)
    run = estimator.fit(wait=False)

    def half_mirrored() -> bool:
        try:
            found = mlflow_run(tracked, run.id)
        except AssertionError:
            return False
        return len(history(tracked, found.info.run_id, "loss")) == 50

    assert wait_until(half_mirrored, 60, interval=0.1), "the first 50 values never reached MLflow"
    server.stop(signal.SIGKILL)  # the server dies mid-run
    go.touch()
    started = time.monotonic()
    run.wait_for_completion()
    assert time.monotonic() - started < 8, "a dead tracking server held the run's end"
    assert run.status is RunStatus.COMPLETED, run.error
    info = run.record["tracking"]
    assert {"metrics", "artifacts", "status"} <= set(info["missing"]), info
    assert (info["metrics_logged"], info["metrics_mirrored"]) == (100, 50)
    assert info["error"], info
    assert "metrics (50 of 100 values, from #51)" in TrackingInfo(**info).describe()

    server.start()
    parser = argparse.ArgumentParser()
    runs_mlflow.add(parser.add_subparsers())
    ns = parser.parse_args(["sync-mlflow", run.id])
    assert ns.func(ns) == 0
    found = mlflow_run(tracked, run.id)
    assert found.info.run_id == info["run_id"]  # the same MLflow run, filled in
    assert history(tracked, found.info.run_id, "loss") == [(i, float(i)) for i in range(100)]
    assert found.info.status == "FINISHED"
    assert {"outputs/model.txt", "tables/curve.json"} <= artifacts(tracked, found.info.run_id)
    synced = run.record["tracking"]
    assert synced["missing"] == [] and synced["synced_at"], synced
    assert ns.func(ns) == 0  # a second sync changes nothing
    assert len(history(tracked, found.info.run_id, "loss")) == 100

    tracked.delete_run(found.info.run_id)  # gone from MLflow: a sync sends the whole run again
    assert ns.func(ns) == 0
    renewed = mlflow_run(tracked, run.id)
    assert renewed.info.run_id != found.info.run_id and renewed.info.status == "FINISHED"
    assert history(tracked, renewed.info.run_id, "loss") == [(i, float(i)) for i in range(100)]
    assert "outputs/model.txt" in artifacts(tracked, renewed.info.run_id)


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_does_not_hold_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in CLIENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # longer than the bound below
    monkeypatch.setattr(tracking_session, "FLUSH_SECONDS", 1.0)
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{silent.getsockname()[1]}")
        src = write_script(
            tmp_path / "src", "from fitdock import Run\nRun.get_context().log('x', 1)\n"
        )
        # supervised here (fit() waits): the patched FLUSH_SECONDS is this process's
        run = Estimator(src, entry_script="train.py", user_managed=True).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    ended = run.record["ended_at"]
    info = run.record["tracking"]
    assert MirrorPart.RUN.value in info["missing"], info
    assert info["metrics_logged"] == 1 and info["metrics_mirrored"] == 0
    assert info["error"].startswith("gave up after 1 s"), info
    held = time.time() - _epoch(ended)
    assert held < 5, f"the run's end waited {held:.1f} s for a silent server"


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
