"""Looking rather than reading: `runs plot`, `runs compare`, `runs list` (filters, --json,
--metric, thousands of runs) and the status line of a followed run."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import write_script

from fitdock import Estimator
from fitdock.cli import main
from fitdock.execution.status_line import Phase, StatusLine, describe
from fitdock.runs import listing
from fitdock.runs.compare import RunFacts, compare, lower_is_better, script_params
from fitdock.runs.plot import plot_runs
from fitdock.runs.record import RunRecord
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir, runs_root

LEGACY = Path(__file__).parent / "golden" / "legacy" / "local-completed.run.json"
PNG = b"\x89PNG\r\n\x1a\n"
TRAIN = """
import sys
from fitdock import Run

ctx = Run.get_context()
lr = float(sys.argv[sys.argv.index("--lr") + 1])
for step in range(5):
    ctx.log("loss", 1.0 / (1 + lr * step), step=step)
ctx.log("acc", 0.5 + lr)
print("trained with", lr)
"""


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")


def fake_run(
    run_id: str, home: Path | None = None, metrics: list[dict] | None = None, **fields: Any
) -> Path:
    """A run folder with a valid record (fitdock 0.1's, renamed) and ``metrics`` lines."""
    record = json.loads(LEGACY.read_text())
    record.update(id=run_id, name=run_id.split("_")[0], **fields)
    folder = runs_root(home) / run_id
    (folder / "logs").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(record))
    if metrics is not None:
        lines = [json.dumps({"step": None, "rank": 0, "time": 0.0, **m}) for m in metrics]
        (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Two completed runs of one script that differ in --lr, hence in their metrics."""
    base = tmp_path_factory.mktemp("look")
    mp = pytest.MonkeyPatch()
    mp.setenv("FITDOCK_HOME", str(base / "home"))
    try:
        src = write_script(base / "src", TRAIN)
        ids = []
        for lr in (0.1, 0.5):
            run = Estimator(
                src, entry_script="train.py", script_params={"--lr": lr}, user_managed=True
            ).fit()
            assert run.get_status() == "Completed", run.error
            ids.append(run.id)
        return base / "home", ids[0], ids[1]
    finally:
        mp.undo()


# ------------------------------------------------------------------ plot
def test_plot_to_png_draws_one_line_per_run(
    two_runs: tuple[Path, str, str], tmp_path: Path
) -> None:
    home, a, b = two_runs
    out = tmp_path / "curves.png"
    fig = plot_runs([a, b], ["loss"], out=out, home=home)
    assert out.read_bytes()[:8] == PNG
    (axes,) = fig.axes
    assert axes.get_title() == "loss" and axes.get_xlabel() == "step"
    lines = axes.get_lines()
    assert [line.get_label() for line in lines] == [a, b]
    assert list(lines[0].get_xdata()) == [0, 1, 2, 3, 4]
    assert lines[1].get_ydata()[-1] == pytest.approx(1 / 3)
    every = plot_runs([a, b], home=home)  # no metric named: a panel per metric
    assert [ax.get_title() for ax in every.axes] == ["loss", "acc"]
    one = plot_runs(a, "acc", home=home)  # one id, one name: as Run.plot passes them
    assert [line.get_label() for line in one.axes[0].get_lines()] == [a]


def test_plot_draws_a_line_per_rank_when_ranks_logged_separately(tmp_path: Path) -> None:
    values = [{"name": "loss", "value": 1.0 - i / 10, "rank": i % 2} for i in range(8)]
    values += [{"name": "loss", "value": "n/a"}, {"name": "table", "value": {"a": [1]}}]
    fake_run("ranks_1", metrics=values)
    fig = plot_runs(["ranks_1"], out=tmp_path / "ranks.png")
    (axes,) = fig.axes
    assert [line.get_label() for line in axes.get_lines()] == ["rank 0", "rank 1"]
    assert list(axes.get_lines()[1].get_xdata()) == [0, 1, 2, 3]  # no step: the position
    fake_run("ranks_2", metrics=[{"name": "loss", "value": 2.0, "rank": 0}])
    fig = plot_runs(["ranks_1", "ranks_2"])
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["ranks_1 rank 0", "ranks_1 rank 1", "ranks_2"]


def test_plot_in_the_terminal_and_to_a_file_from_the_command(
    two_runs: tuple[Path, str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home, a, b = two_runs
    monkeypatch.setenv("FITDOCK_HOME", str(home))
    code, out, _ = cli(capsys, "runs", "plot", a, b, "--metric", "loss")
    assert code == 0
    assert "loss" in out and "step" in out and a in out and b in out
    assert "\x1b[" not in out  # not a terminal: no colours
    png = tmp_path / "p.png"
    code, out, _ = cli(capsys, "runs", "plot", a, "--out", str(png))
    assert code == 0 and png.read_bytes()[:8] == PNG and str(png) in out
    code, _, err = cli(capsys, "runs", "plot", a, "--metric", "accuracy")
    assert code == 2
    assert "no metric 'accuracy'" in err and "logged: loss, acc" in err


# ------------------------------------------------------------------ compare
def test_compare_shows_what_differs(
    two_runs: tuple[Path, str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home, a, b = two_runs
    monkeypatch.setenv("FITDOCK_HOME", str(home))
    code, out, _ = cli(capsys, "runs", "compare", a, b)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [a, b]
    table = {row.split("  ")[0]: row.split()[-2:] for row in rows}
    assert table["param --lr"] == ["0.1", "0.5"]
    assert table["final loss"] == ["0.714286", "0.333333"]
    assert table["best acc (max)"] == ["0.6", "1"]
    assert "best loss (min)" in table
    for same in ("status", "target", "environment", "name", "ranks"):
        assert same not in table
    code, out, _ = cli(capsys, "runs", "compare", a, b, "--all")
    every = {line.split("  ")[0]: line.split()[-2:] for line in out.splitlines()[1:]}
    assert every["status"] == ["Completed", "Completed"]
    assert every["target"] == ["local", "local"]
    code, out, _ = cli(capsys, "runs", "compare", a, a)
    assert out.strip() == "no differences (--all shows every row)"


def test_compare_rows_are_a_pure_function_of_records_and_metrics() -> None:
    base = json.loads(LEGACY.read_text())
    one = RunFacts({**base, "id": "one"}, {"val_loss": [3.0, 1.0, 2.0], "f1": [0.2, 0.9, 0.5]})
    two = RunFacts({**base, "id": "two", "status": "Failed"}, {"val_loss": [4.0]})
    rows = {row.name: row.values for row in compare([one, two])}
    assert rows == {
        "status": ("Completed", "Failed"),
        "final val_loss": ("2", "4"),
        "best val_loss (min)": ("1", "4"),
        "final f1": ("0.5", "-"),
        "best f1 (max)": ("0.9", "-"),
    }
    assert lower_is_better("RMSE") and lower_is_better("top1_error") and not lower_is_better("acc")
    argv = [
        "--lr",
        "0.1",
        "--fast",
        "--epochs=3",
        "data.csv",
        "-n",
        "-1",
        "--tag",
        "a",
        "--tag",
        "b",
    ]
    assert script_params(argv) == {
        "--lr": "0.1",
        "--fast": "true",
        "--epochs": "3",
        "arg 1": "data.csv",
        "-n": "-1",
        "--tag": "a,b",
    }


# ------------------------------------------------------------------ list
@pytest.fixture
def listed(fitdock_home: Path) -> dt.datetime:
    now = dt.datetime.now(dt.timezone.utc)
    ago = lambda **kw: iso(now - dt.timedelta(**kw))  # noqa: E731
    fake_run(
        "old_1",
        created_at=ago(days=5),
        started_at=ago(days=5),
        ended_at=ago(days=5, seconds=-90),
        metrics=[{"name": "loss", "value": 0.5}, {"name": "loss", "value": 0.25}],
    )
    fake_run(
        "bad_1",
        status="Failed",
        created_at=ago(hours=3),
        started_at=ago(hours=3),
        ended_at=ago(hours=3, seconds=-5),
        target="docker",
    )
    fake_run(
        "new_1",
        created_at=ago(minutes=30),
        started_at=ago(minutes=30),
        ended_at=ago(minutes=28),
        metrics=[{"name": "loss", "value": 0.125}],
    )
    # a live-looking run whose supervisor is gone: listed as Failed (lost supervisor)
    fake_run(
        "lost_1",
        status="Running",
        created_at=ago(minutes=1),
        started_at=ago(minutes=1),
        ended_at=None,
    )
    return now


def ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:]]


def test_list_shows_duration_target_ranks_and_a_metric(
    listed: dt.datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "runs", "list", "--metric", "loss")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "STATUS", "TARGET", "RANKS", "STARTED", "DURATION", "loss"]
    assert ids(out) == ["old_1", "bad_1", "new_1", "lost_1"]
    by_id = {row.split()[0]: row.split() for row in rows}
    assert by_id["old_1"][1:4] == ["Completed", "local", "2"]
    assert by_id["old_1"][-3:] == ["1m", "30s", "0.25"]
    assert by_id["new_1"][-3:] == ["2m", "00s", "0.125"]
    assert by_id["bad_1"][1:3] == ["Failed", "docker"] and by_id["bad_1"][-3:] == ["5.0", "s", "-"]
    assert by_id["lost_1"][1] == "Failed"
    assert ids(cli(capsys, "runs", "list", "--limit", "2")[1]) == ["new_1", "lost_1"]


def test_list_filters(listed: dt.datetime, capsys: pytest.CaptureFixture[str]) -> None:
    assert ids(cli(capsys, "runs", "list", "--status", "failed")[1]) == ["bad_1", "lost_1"]
    both = cli(capsys, "runs", "list", "--status", "Completed", "--status", "FAILED")[1]
    assert len(ids(both)) == 4
    assert ids(cli(capsys, "runs", "list", "--since", "2h")[1]) == ["new_1", "lost_1"]
    assert ids(cli(capsys, "runs", "list", "--since", "1w")[1]) == [
        "old_1",
        "bad_1",
        "new_1",
        "lost_1",
    ]
    day = (listed - dt.timedelta(days=1)).astimezone().date().isoformat()
    assert ids(cli(capsys, "runs", "list", "--since", day)[1]) == ["bad_1", "new_1", "lost_1"]
    assert ids(cli(capsys, "runs", "list", "--name", "NEW")[1]) == ["new_1"]
    assert ids(cli(capsys, "runs", "list", "--name", "nothing")[1]) == []
    code, _, err = cli(capsys, "runs", "list", "--since", "yesterday")
    assert code == 2 and "2h, 3d" in err
    code, _, err = cli(capsys, "runs", "list", "--status", "done")
    assert code == 2 and "Completed" in err


def test_list_as_json(listed: dt.datetime, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        capsys, "runs", "list", "--json", "--metric", "loss", "--status", "completed"
    )
    assert code == 0
    items = json.loads(out)
    assert [item["id"] for item in items] == ["old_1", "new_1"]
    old = items[0]
    assert old["status"] == "Completed" and old["target"] == "local" and old["ranks"] == 2
    assert old["duration_seconds"] == pytest.approx(90, abs=0.01)
    assert old["metrics"] == {"loss": 0.25}
    assert "metrics" not in json.loads(cli(capsys, "runs", "list", "--json")[1])[0]


def test_last_value_reads_backwards_from_the_end(tmp_path: Path) -> None:
    lines = [{"name": "loss", "value": 9.0}] + [{"name": "lr", "value": i} for i in range(3000)]
    folder = fake_run("tail_1", metrics=lines)
    assert listing.last_value(folder, "lr", block=256) == 2999
    assert listing.last_value(folder, "loss", block=256) == 9.0  # many blocks back
    assert listing.last_value(folder, "acc", block=256) is None
    with open(folder / "metrics.jsonl", "a") as handle:
        handle.write('{"name": "lr", "val')  # a line being written
    assert listing.last_value(folder, "lr") == 2999
    assert listing.last_value(tmp_path, "lr") is None


def test_list_of_2000_runs_is_fast_and_reads_only_the_shown_metrics(
    fitdock_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    record = json.loads(LEGACY.read_text())
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    metrics = "".join(json.dumps({"name": "loss", "value": i, "rank": 0}) + "\n" for i in range(50))
    for n in range(2000):
        folder = runs_root() / f"bulk_{n:04d}"
        folder.mkdir(parents=True)
        when = iso(start + dt.timedelta(minutes=n))
        record.update(id=folder.name, name="bulk", created_at=when, started_at=when, ended_at=when)
        (folder / "run.json").write_text(json.dumps(record))
        (folder / "metrics.jsonl").write_text(metrics)
    read: list[Path] = []
    real = listing.last_value

    def counted(run_dir: Path, name: str, block: int = listing.TAIL_BLOCK) -> Any:
        read.append(run_dir)
        return real(run_dir, name, block)

    monkeypatch.setattr(listing, "last_value", counted)
    monkeypatch.setattr(listing, "read_points", lambda *a: pytest.fail("read a whole metrics file"))
    began = time.perf_counter()
    code, out, _ = cli(capsys, "runs", "list", "--metric", "loss", "--since", "2026-01-01")
    took = time.perf_counter() - began
    assert code == 0
    assert ids(out) == [f"bulk_{n:04d}" for n in range(1980, 2000)]
    assert sorted(path.name for path in read) == ids(out)
    assert took < 2.0, f"listing 2000 runs took {took:.2f} s"
    began = time.perf_counter()
    items = json.loads(cli(capsys, "runs", "list", "--limit", "0", "--json")[1])
    assert len(items) == 2000 and time.perf_counter() - began < 2.0


# ------------------------------------------------------------------ status line
def edit(run: RunDir, **fields: Any) -> None:
    record = json.loads(run.record_path.read_text())
    record.update(fields)
    run.record_path.write_text(json.dumps(record))


def test_status_line_prints_plain_lines_per_phase(fitdock_home: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    run = RunDir(fake_run("train_1", status="Preparing", started_at=None, ended_at=None))
    spec = {**json.loads(run.record_path.read_text())["spec"], "max_run_duration_seconds": 600}
    edit(run, spec=spec)
    out = io.StringIO()
    before = StatusLine(out=out, label="run train_1", live=False)  # before the run exists
    before.phase(Phase.RESOLVING)
    before.phase(Phase.SNAPSHOT, "3 files")
    before.close()
    line = StatusLine(run, out, live=False, clock=lambda: now.timestamp())
    line.pump()
    (run.logs / "env-build.log").write_text("Resolved 12 packages\n")
    line.pump()  # the same phase: no new line
    edit(run, status="Queued", slurm={"job_id": "42", "reason": "Priority"})
    line.refresh()
    started = iso(now - dt.timedelta(seconds=65))
    edit(run, status="Running", started_at=started, slurm=None, attempt=1)
    (run.logs / "rank_0.stdout.log").write_text("epoch 1\n")
    line.refresh()
    line.pump()
    assert line.render() == "run train_1 · running · 1m 05s elapsed, 8m 55s left"
    line.refresh()
    (run.logs / "rank_0.stdout.log").write_text("epoch 1\nepoch 2\n")
    edit(run, status="Completed", ended_at=iso(now))
    line.pump(final=True)
    assert out.getvalue().splitlines() == [
        "fitdock: run train_1: resolving",
        "fitdock: run train_1: snapshot (3 files)",
        "fitdock: run train_1: building the environment",
        "fitdock: run train_1: queued (on Slurm, job 42, Priority)",
        "fitdock: run train_1: running (limit 10m 00s)",
        "[rank 0] epoch 1",
        "[rank 0] epoch 2",
        "fitdock: run train_1: ended (Completed after 1m 05s)",
    ]


def test_a_fit_shows_every_phase_from_resolving_to_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fit(show_output=True) with output that is not a terminal: one plain line a phase."""
    # long enough for a follower that reads the record every 0.1 s to see it running
    src = write_script(tmp_path / "src", "import time\ntime.sleep(1.5)\nprint('trained')\n")
    run = Estimator(src, entry_script="train.py", user_managed=True).fit(show_output=True)
    assert run.status is RunStatus.COMPLETED
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("fitdock:")]
    phases = [line.split(": ", 2)[2] for line in lines]
    assert phases[:2] == ["resolving", f"snapshot ({src})"]
    assert lines[0].startswith("fitdock: job train:")
    assert "running" in phases and phases[-1].startswith("ended (Completed after")
    assert phases.index("running") > phases.index(f"snapshot ({src})")


def test_status_line_live_prints_logs_above_it(two_runs: tuple[Path, str, str]) -> None:
    home, a, _ = two_runs
    out = io.StringIO()
    line = StatusLine(RunDir.find(a, home), out, live=True)
    line.pump(final=True)
    text = out.getvalue()
    assert "[rank 0] trained with 0.1" in text
    assert text.rstrip().splitlines()[-1].startswith(f"fitdock: run {a}: ended (Completed after")


def test_describe_building_stopping_and_the_time_limit() -> None:
    record = RunRecord.model_validate(json.loads(LEGACY.read_text()))
    started = dt.datetime.fromisoformat(record.started_at or "").timestamp()
    record.status, record.ended_at = RunStatus.PREPARING, None
    state = describe(record, started, build_line="Downloading torch (800 MiB)")
    assert state.phase is Phase.BUILDING and "Downloading torch" in state.words(live=True)
    assert state.words(live=False) == "building the environment"
    record.status = RunStatus.RUNNING
    record.spec = {**record.spec, "max_run_duration_seconds": 10}
    assert describe(record, started + 4).clock == "4.0 s elapsed, 6.0 s left"
    late = describe(record, started + 11)
    assert late.phase is Phase.STOPPING and late.detail == "time limit of 10.0 s reached"
    assert describe(record, started + 4, canceling=True).detail == "cancel requested"
