"""One-process runs on the local target: metrics, files, variables, the record, failures."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
from pathlib import Path

import pytest
from helpers import run_dirs, wait_until, write_script

from fitdock import Estimator, Mpi, Run, RunStatus
from fitdock.errors import FitdockError, NotAvailableError, RunFailedError, SnapshotError, SpecError

VARIABLES = [
    "FITDOCK_RUN_ID",
    "FITDOCK_RUN_DIR",
    "FITDOCK_OUTPUT_DIR",
    "FITDOCK_LOG_DIR",
    "FITDOCK_CHECKPOINT_DIR",
    "FITDOCK_RESUME_DIR",
    "FITDOCK_INPUT_TRAIN",
    "SM_CHANNEL_TRAIN",
    "AZUREML_RUN_ID",
    "SM_MODEL_DIR",
    "SM_OUTPUT_DATA_DIR",
    "SM_HOSTS",
    "SM_CURRENT_HOST",
    "SM_NUM_GPUS",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "PYTHONUNBUFFERED",
    "MY_VAR",
]

TRAIN = f"""
import json, os, sys
from fitdock import Run

ctx = Run.get_context()
for step, loss in enumerate([0.9, 0.5, 0.25]):
    ctx.log("loss", loss, step=step)
ctx.log("acc", 0.75)
ctx.log("lr", 0.1)
(ctx.output_dir / "x.txt").write_text("weights")
(ctx.output_dir / "nested").mkdir()
(ctx.output_dir / "nested" / "y.txt").write_text("more")
names = {VARIABLES!r}
with open(ctx.output_dir / "env.json", "w") as f:
    json.dump({{name: os.environ.get(name) for name in names}}, f)
with open(ctx.output_dir / "ctx.json", "w") as f:
    json.dump({{"rank": ctx.rank, "world_size": ctx.world_size, "local_rank": ctx.local_rank,
               "output_dir": str(ctx.output_dir), "checkpoint_dir": str(ctx.checkpoint_dir),
               "resume_dir": ctx.resume_dir and str(ctx.resume_dir), "id": ctx.id,
               "offline": ctx.offline, "argv": sys.argv[1:], "cwd": os.getcwd()}}, f)
print("data:", open(os.path.join(os.environ["FITDOCK_INPUT_TRAIN"], "data.csv")).read().strip())
print("to stderr", file=sys.stderr)
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Estimator, Run, Path]:
    """One completed run shared by the read-only checks below (a fit costs ~0.3 s)."""
    base = tmp_path_factory.mktemp("local")
    mp = pytest.MonkeyPatch()
    mp.setenv("FITDOCK_HOME", str(base / "home"))
    try:
        src = write_script(base / "src", TRAIN)
        (src / "helper.py").write_text("X = 1\n")
        data = base / "data"
        data.mkdir()
        (data / "data.csv").write_text("a,b\n1,2\n")
        est = Estimator(
            src,
            entry_script="train.py",
            script_params={"--epochs": 3},
            user_managed=True,
            inputs={"train": data},
            environment_variables={"MY_VAR": "mine"},
        )
        run = est.fit()
        # Reading the record later needs FITDOCK_HOME too: keep a reopened handle's home.
        return est, Run(run.id, home=base / "home"), base
    finally:
        mp.undo()


def outputs(run: Run, name: str) -> dict:
    return json.loads((run.output_dir / name).read_text())


def test_run_completes(finished: tuple[Estimator, Run, Path]) -> None:
    _, run, _ = finished
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.error is None


def test_metrics_keep_logging_order(finished: tuple[Estimator, Run, Path]) -> None:
    _, run, _ = finished
    metrics = run.get_metrics(as_lists=True)
    assert metrics == {"loss": [0.9, 0.5, 0.25], "acc": [0.75], "lr": [0.1]}
    assert list(metrics) == ["loss", "acc", "lr"]
    assert run.get_metrics() == {"loss": [0.9, 0.5, 0.25], "acc": 0.75, "lr": 0.1}  # Azure's
    assert run.get_metrics("loss") == {"loss": [0.9, 0.5, 0.25]}
    assert run.get_metrics(rank=1) == {}


def test_file_names_and_download(finished: tuple[Estimator, Run, Path], tmp_path: Path) -> None:
    _, run, _ = finished
    files = run.get_file_names()
    for name in (
        "outputs/x.txt",
        "outputs/nested/y.txt",
        "logs/rank_0.stdout.log",
        "logs/rank_0.stderr.log",
        "logs/rank_0.exit.json",
    ):
        assert name in files
    assert files == sorted(files)
    target = run.download_file("outputs/x.txt", tmp_path / "down" / "x-copy.txt")
    assert target == tmp_path / "down" / "x-copy.txt"
    assert target.read_text() == "weights"
    into_dir = run.download_file("outputs/nested/y.txt", tmp_path / "down")
    assert into_dir == tmp_path / "down" / "y.txt"
    assert into_dir.read_text() == "more"
    with pytest.raises(FileNotFoundError, match="get_file_names"):
        run.download_file("outputs/missing.txt", tmp_path)
    with pytest.raises(FileNotFoundError):
        run.download_file("run.json", tmp_path)  # only outputs/, logs/, checkpoints/


def test_logs_per_stream(finished: tuple[Estimator, Run, Path]) -> None:
    _, run, _ = finished
    assert (run.log_dir / "rank_0.stdout.log").read_text() == "data: a,b\n1,2\n"
    assert (run.log_dir / "rank_0.stderr.log").read_text() == "to stderr\n"


def test_variables_given_to_the_script(finished: tuple[Estimator, Run, Path]) -> None:
    _, run, _ = finished
    env = outputs(run, "env.json")
    run_dir = run.run_dir
    view = str(run_dir / "inputs" / "train")
    assert env == {
        "FITDOCK_RUN_ID": run.id,
        "FITDOCK_RUN_DIR": str(run_dir),
        "FITDOCK_OUTPUT_DIR": str(run.output_dir),
        "FITDOCK_LOG_DIR": str(run.log_dir),
        "FITDOCK_CHECKPOINT_DIR": str(run.checkpoint_dir),
        "FITDOCK_RESUME_DIR": None,
        "FITDOCK_INPUT_TRAIN": view,
        "SM_CHANNEL_TRAIN": view,
        "AZUREML_RUN_ID": run.id,
        "SM_MODEL_DIR": str(run.output_dir / "model"),
        "SM_OUTPUT_DATA_DIR": str(run.output_dir / "data"),
        "SM_HOSTS": json.dumps([socket.gethostname()]),
        "SM_CURRENT_HOST": socket.gethostname(),
        "SM_NUM_GPUS": "0",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "PYTHONUNBUFFERED": "1",
        "MY_VAR": "mine",
    }
    assert (run.output_dir / "model").is_dir()
    assert (run.output_dir / "data").is_dir()
    assert Path(view).is_symlink()


def test_run_context_inside_the_script(finished: tuple[Estimator, Run, Path]) -> None:
    _, run, _ = finished
    ctx = outputs(run, "ctx.json")
    assert ctx == {
        "rank": 0,
        "world_size": 1,
        "local_rank": 0,
        "output_dir": str(run.output_dir),
        "checkpoint_dir": str(run.checkpoint_dir),
        "resume_dir": None,
        "id": run.id,
        "offline": False,
        "argv": ["--epochs", "3"],
        "cwd": str(run.snapshot_dir),
    }


def test_run_record_fields(finished: tuple[Estimator, Run, Path]) -> None:
    est, run, base = finished
    record = run.record
    assert record["id"] == run.id
    assert record["status"] == "Completed"
    created, started, ended = (
        dt.datetime.fromisoformat(record[key]) for key in ("created_at", "started_at", "ended_at")
    )
    assert created <= started <= ended
    assert ended - created < dt.timedelta(seconds=30)
    assert record["exit_code"] == 0
    assert record["world_size"] == 1
    assert record["target"] == "local"
    assert set(record["ranks"]) == {"0"}
    assert record["ranks"]["0"]["exit_code"] == 0
    assert record["ranks"]["0"]["signal"] is None
    assert record["ranks"]["0"]["host"] == os.uname().nodename
    assert record["argv"][-4:] == [sys.executable, "train.py", "--epochs", "3"]
    assert record["cwd"] == str(run.snapshot_dir)
    assert record["environment_hash"] == est.environment.hash()
    assert record["source"]["directory"] == str(base / "src")
    assert record["source"]["files"] == 2
    assert record["source"]["bytes"] == sum(p.stat().st_size for p in (base / "src").iterdir())
    assert record["resume"] is None
    assert record["error"] is None
    assert record["supervisor"]["pid"] == os.getpid()


def test_snapshot_is_immutable(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", "print('version 1')\n")
    est = Estimator(src, entry_script="train.py", user_managed=True)
    first = est.fit()
    (src / "train.py").write_text("print('version 2')\n")
    (src / "added.py").write_text("")
    assert (first.snapshot_dir / "train.py").read_text() == "print('version 1')\n"
    assert not (first.snapshot_dir / "added.py").exists()
    assert (first.log_dir / "rank_0.stdout.log").read_text() == "version 1\n"
    second = Estimator(src, entry_script="train.py", user_managed=True).fit()
    assert (second.log_dir / "rank_0.stdout.log").read_text() == "version 2\n"
    assert (first.snapshot_dir / "train.py").read_text() == "print('version 1')\n"
    assert first.id != second.id


def test_reopen_and_list(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", "print('hi')\n")
    est = Estimator(src, entry_script="train.py", user_managed=True, experiment_name="exp-1")
    runs = [est.fit(), est.fit()]
    assert all(run.id.startswith("exp-1_") for run in runs)
    assert [r.id for r in Run.list()] == [r.id for r in runs]
    again = Run(runs[0].id)
    assert again.status is RunStatus.COMPLETED
    assert again.record == runs[0].record
    assert repr(again) == f"Run(id={runs[0].id!r}, status=Completed)"


def test_fit_without_wait_returns_while_running(tmp_path: Path) -> None:
    go = tmp_path / "go"
    src = write_script(
        tmp_path / "src",
        f"""
        import os, time
        from pathlib import Path
        Path({str(tmp_path / "started")!r}).touch()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        print("went")
        """,
    )
    run = Estimator(src, entry_script="train.py", user_managed=True).fit(wait=False)
    assert wait_until((tmp_path / "started").exists, 10)
    # the record says Running a moment after the reaper starts: poll, do not race it
    assert wait_until(lambda: run.status is RunStatus.RUNNING, 5)
    assert Run(run.id).status is RunStatus.RUNNING
    assert not run.status.is_terminal
    go.touch()
    record = run.wait_for_completion()
    assert record["status"] == "Completed"
    assert run.status is RunStatus.COMPLETED
    assert (run.log_dir / "rank_0.stdout.log").read_text() == "went\n"


def test_show_output_prints_tagged_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_script(
        tmp_path / "src",
        """
        import sys
        from fitdock import Run
        print("first line")
        print("oops", file=sys.stderr)
        Run.get_context().log("loss", 0.5)
        """,
    )
    run = Estimator(src, entry_script="train.py", user_managed=True).fit(show_output=True)
    assert run.status is RunStatus.COMPLETED
    out = capsys.readouterr().out
    assert "[rank 0] first line\n" in out
    assert "[rank 0:stderr] oops\n" in out
    assert out.count("first line") == 1, "each line is printed once"


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------
FAILING = """
import sys
print("working")
print("Traceback (most recent call last):", file=sys.stderr)
print("ValueError: the data is bad", file=sys.stderr)
sys.exit(3)
"""


def test_failing_script_records_rank_exit_code_and_stderr(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", FAILING)
    run = Estimator(src, entry_script="train.py", user_managed=True).fit()
    assert run.status is RunStatus.FAILED
    error = run.error
    assert error is not None
    assert error["reason"] == "rank_failed"
    assert error["rank"] == 0
    assert error["exit_code"] == 3
    assert error["signal"] is None
    assert error["host"] == os.uname().nodename
    assert error["stderr_tail"].splitlines()[-1] == "ValueError: the data is bad"
    assert error["message"].endswith("failed with exit code 3: ValueError: the data is bad")
    assert run.record["exit_code"] == 3
    assert run.record["ranks"]["0"]["exit_code"] == 3


def test_wait_for_completion_raises_on_a_failed_run(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", FAILING)
    run = Estimator(src, entry_script="train.py", user_managed=True).fit()
    with pytest.raises(RunFailedError) as info:
        run.wait_for_completion(raise_on_error=True)
    assert info.value.run_id == run.id
    assert info.value.status is RunStatus.FAILED
    assert info.value.error == run.error
    assert info.value.error is not None and info.value.error["exit_code"] == 3
    assert "the data is bad" in str(info.value)
    assert isinstance(info.value, FitdockError)
    # raise_on_error=False hands back the record instead
    assert run.wait_for_completion(raise_on_error=False)["status"] == "Failed"
    # a reopened handle raises the same way
    with pytest.raises(RunFailedError):
        Run(run.id).wait_for_completion()


def test_script_killed_by_a_signal(tmp_path: Path) -> None:
    src = write_script(
        tmp_path / "src", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    run = Estimator(src, entry_script="train.py", user_managed=True).fit()
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert (run.error["signal"], run.error["exit_code"]) == (9, 137)
    assert "failed with signal 9" in run.error["message"]


# ---------------------------------------------------------------------------------------------
# Bad inputs: refused before anything is created
# ---------------------------------------------------------------------------------------------
def _estimator(tmp_path: Path, **kwargs: object) -> Estimator:
    src = write_script(tmp_path / "src", "print('hi')\n")
    (src / "other.py").write_text("")
    kwargs.setdefault("user_managed", True)
    return Estimator(src, entry_script="train.py", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "field", "words"),
    [
        (
            {"user_managed": False, "conda_packages": ["numpy=1.26"]},
            NotAvailableError,
            None,
            r"conda_packages \[.numpy=1.26.\]: the local virtualenv builder has no conda solver",
        ),
        (
            {"use_docker": True, "conda_packages": ["numpy=1.26"]},
            NotAvailableError,
            None,
            "conda",
        ),
        (
            {"resume_from": "no-such-run"},
            SpecError,
            "resume_from",
            "'no-such-run' is neither a folder",
        ),
        ({"max_snapshot_files": 1}, SnapshotError, None, "over the limit of 1"),
        (
            {"compute_target": "slurm", "hang_timeout_seconds": 5},
            NotAvailableError,
            None,
            "hang_timeout_seconds is not available on the slurm target",
        ),
        (
            {"compute_target": "moon"},
            SpecError,
            "compute_target",
            "known: docker, hosts, local, slurm",
        ),
        (
            {"node_count": 2, "distributed_training": Mpi()},
            SpecError,
            "node_count",
            "the local target is one machine",
        ),
    ],
    ids=["builder", "docker", "resume", "snapshot", "slurm", "unknown-target", "nodes"],
)
def test_bad_input_is_refused_and_leaves_no_run_directory(
    tmp_path: Path,
    fitdock_home: Path,
    kwargs: dict,
    error: type[Exception],
    field: str | None,
    words: str,
) -> None:
    est = _estimator(tmp_path, **kwargs)
    with pytest.raises(error, match=words) as info:
        est.fit()
    if field is not None:
        assert getattr(info.value, "field", None) == field
    assert run_dirs(fitdock_home) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user_managed": False, "conda_packages": ["numpy=1.26"]},
        {"use_docker": True, "conda_packages": ["numpy=1.26"]},
    ],
)
def test_plan_refuses_what_fit_refuses(tmp_path: Path, fitdock_home: Path, kwargs: dict) -> None:
    with pytest.raises(NotAvailableError):
        _estimator(tmp_path, **kwargs).plan()
    assert not fitdock_home.exists()


# ---------------------------------------------------------------------------------------------
# A fit made from inside another run (a sweep driver run as a job) starts clean
# ---------------------------------------------------------------------------------------------
def test_outer_run_variables_do_not_leak_into_a_new_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outer = tmp_path / "outer-run"
    (outer / "resume").mkdir(parents=True)
    monkeypatch.setenv("FITDOCK_RESUME_DIR", str(outer / "resume"))
    monkeypatch.setenv("FITDOCK_INPUT_STALE", str(outer / "inputs" / "stale"))
    src = write_script(
        tmp_path / "src",
        """
        import json, os
        from fitdock import Run
        ctx = Run.get_context()
        resume = ctx.resume_dir and str(ctx.resume_dir)
        print(json.dumps([resume, os.environ.get("FITDOCK_INPUT_STALE")]))
        """,
    )
    run = Estimator(src, entry_script="train.py", user_managed=True).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    seen = json.loads((run.log_dir / "rank_0.stdout.log").read_text())
    assert seen == [None, None], "the new run did not resume, yet it sees the outer run's folders"


def test_outer_mpi_rank_variables_do_not_change_a_one_process_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit() called from rank 1 of an MPI job: the new one-process run is still rank 0."""
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "2")
    src = write_script(
        tmp_path / "src", "import os\nprint(os.environ['RANK'], os.environ['WORLD_SIZE'])\n"
    )
    run = Estimator(src, entry_script="train.py", user_managed=True).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    assert (run.log_dir / "rank_0.stdout.log").read_text() == "0 1\n"
