"""Run records on disk: atomic writes, lookups, and the lost-supervisor rule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import python_child, wait_until

from fitdock import Run, RunStatus
from fitdock.errors import RunNotFoundError
from fitdock.runs.record import RunRecord, SourceInfo
from fitdock.runs.store import RunDir, SupervisorLock, list_runs, runs_root
from fitdock.shared import now_iso, write_json_atomic


def test_write_json_atomic_leaves_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    for i in range(30):
        write_json_atomic(path, {"i": i, "text": "x" * i})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    assert json.loads(path.read_text()) == {"i": 29, "text": "x" * 29}


def test_write_json_atomic_failure_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json_atomic(path, {"status": "Running"})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        write_json_atomic(path, circular)
    assert json.loads(path.read_text()) == {"status": "Running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


WRITER = """
import sys
from pathlib import Path
from fitdock.runs.store import write_json_atomic
path = Path(sys.argv[1])
for i in range(150):
    write_json_atomic(path, {"i": i, "pad": ["x" * 200] * (1 + i % 50)})
"""


def test_a_reader_never_sees_half_a_record(tmp_path: Path) -> None:
    """A writer in another process rewrites the record while this one reads it."""
    path = tmp_path / "run.json"
    write_json_atomic(path, {"i": -1})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    reads, seen = 0, set()
    try:
        while writer.poll() is None or reads == 0:
            record = json.loads(path.read_text())  # raises on a torn write
            if record["i"] >= 0:
                assert len(record["pad"]) == 1 + record["i"] % 50
            seen.add(record["i"])
            reads += 1
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert json.loads(path.read_text())["i"] == 149
    assert len(seen) > 1, "the reader should have seen the record change"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_unknown_run_id_raises_run_not_found(fitdock_home: Path) -> None:
    with pytest.raises(RunNotFoundError) as info:
        Run("no-such-run")
    assert info.value.run_id == "no-such-run"
    assert str(runs_root()) in str(info.value)
    assert isinstance(info.value, LookupError)


def fake_record(run_id: str, status: RunStatus) -> RunRecord:
    """A record as submit() writes one, for a run that never started anything."""
    return RunRecord(
        id=run_id, name=run_id, status=status, created_at=now_iso(), fitdock_version="test",
        target="local", spec={}, environment_hash="0" * 64, argv=["python", "x.py"],
        commands=[["python", "x.py"]], env={}, cwd="/tmp", world_size=1,
        source=SourceInfo(directory="/tmp"), checkpoint_dir="/tmp/checkpoints",
    )  # fmt: skip


def _fake_run(home: Path, run_id: str, status: RunStatus) -> RunDir:
    run = RunDir(home / "runs" / run_id)
    run.path.mkdir(parents=True)
    run.write(fake_record(run_id, status))
    return run


HOLD_LOCK = """
import sys, time
from pathlib import Path
from fitdock.runs.store import SupervisorLock
lock = SupervisorLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_running_record_with_a_live_supervisor_stays_running(fitdock_home: Path) -> None:
    run = _fake_run(fitdock_home, "live", RunStatus.RUNNING)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run.lock_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert Run("live").status is RunStatus.RUNNING
        assert run.supervisor_alive()
        # The holder dies the hard way: the kernel drops its flock.
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert Run("live").status is RunStatus.FAILED
        error = Run("live").error
        assert error is not None and error["reason"] == "lost_supervisor"
        record = json.loads(run.record_path.read_text())
        assert record["status"] == "Failed", "the verdict must be written back to run.json"
        assert record["ended_at"] is not None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_running_record_without_any_supervisor_reads_as_lost(fitdock_home: Path) -> None:
    _fake_run(fitdock_home, "orphan", RunStatus.RUNNING)
    run = Run("orphan")
    assert run.status is RunStatus.FAILED
    assert run.error == {
        "reason": "lost_supervisor",
        "message": "lost supervisor: the process supervising this run died before it ended",
    }


@pytest.mark.parametrize("status", [s for s in RunStatus if s.is_terminal])
def test_terminal_records_are_never_rewritten(fitdock_home: Path, status: RunStatus) -> None:
    run = _fake_run(fitdock_home, "done", status)
    before = run.record_path.read_bytes()
    assert Run("done").status is status
    assert run.record_path.read_bytes() == before


def test_lock_is_exclusive_between_open_files(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.lock"
    first = SupervisorLock(path)
    assert first.acquire()
    try:
        with SupervisorLock(path, blocking=False) as held:
            assert not held
    finally:
        first.release()
    with SupervisorLock(path, blocking=False) as held:
        assert held


def test_run_list_is_in_creation_order(fitdock_home: Path) -> None:
    assert Run.list() == []
    first = _fake_run(fitdock_home, "b-first", RunStatus.RUNNING)
    time.sleep(0.02)
    _fake_run(fitdock_home, "a-second", RunStatus.COMPLETED)
    with first.edit() as record:  # a later write does not reorder
        record.status = RunStatus.COMPLETED
    (fitdock_home / "runs" / "not-a-run").mkdir()
    assert [run.id for run in Run.list()] == ["b-first", "a-second"]
    assert [d.id for d in list_runs()] == ["b-first", "a-second"]


def test_run_opens_from_another_process(fitdock_home: Path) -> None:
    _fake_run(fitdock_home, "shared", RunStatus.COMPLETED)
    child = python_child("from fitdock import Run; print(Run('shared').status.value)")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "Completed"
    assert os.environ["FITDOCK_HOME"] == str(fitdock_home)


def test_wait_until_helper_times_out() -> None:
    start = time.monotonic()
    assert not wait_until(lambda: False, 0.1)
    assert time.monotonic() - start >= 0.1
