"""Full disks, a read-only home and source files that cannot be read.

``$FITDOCK_HOME`` lies on a tmpfs of 8 MB mounted by the test (root only: mount needs it).
A write that meets the full disk (the snapshot, a rank's log, a metrics line, the
checkpoint copy of a restart, a record write) ends the run Failed, or the submission with
``StorageError``, saying "no space left on <mount>"; run.json always parses; earlier runs
stay readable; freeing the space lets the next run complete.

Unreadable source files: as root, a file's mode does not stop a read, so the test uses a
link to a write-only sysfs attribute, which the kernel refuses to open for reading even to
root: the snapshot fails naming it. A FIFO (an open would wait forever for a writer) and a
dangling link are left out of the snapshot, as before, and the fit completes.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until, write_script

from fitdock import Estimator, Run, RunStatus
from fitdock.errors import SnapshotError, StorageError
from fitdock.runs.layout import RECORD

DONE = "print('done')\n"
LOG = """\
import sys
while True:  # until the disk is full: the write raises, the rank fails
    sys.stdout.write("x" * 65536)
"""
METRICS = """\
from fitdock import Run
run = Run.get_context()
while True:
    run.log("note", "x" * 65536)
"""
CHECKPOINT = """\
import os, sys
folder = os.environ["FITDOCK_CHECKPOINT_DIR"]
if os.environ["FITDOCK_ATTEMPT"] == "1":  # a 5 MB checkpoint, then a failure: a restart
    with open(os.path.join(folder, "state.bin"), "wb") as out:
        out.write(b"c" * 5_000_000)
    sys.exit(3)
print("resumed")
"""
AFTER_GO = """\
import os, sys, time
while not os.path.exists(sys.argv[1]):  # the test says when: after the disk is full
    time.sleep(0.02)
sys.stdout.write("y" * 1_000_000)
"""
FIT = """\
import sys
from fitdock import Estimator
run = Estimator(sys.argv[1], entry_script="train.py", user_managed=True,
                script_params=sys.argv[2:]).fit()
print(run.id, run.status.value)
"""


def _need_root() -> None:
    if os.geteuid() != 0 and os.environ.get("CI", "").strip().lower() != "true":
        pytest.skip("mounting a small tmpfs needs root")


@pytest.fixture
def small_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``$FITDOCK_HOME`` on a tmpfs of 8 MB, unmounted at the end."""
    _need_root()
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        monkeypatch.setenv("FITDOCK_HOME", str(mount / "home"))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> Path:
    """Write ``mount/filler`` until the file system has no block left; return it."""
    filler = mount / "filler"
    with open(filler, "ab", buffering=0) as out:
        for chunk in (1 << 20, 4096, 512):
            try:
                while True:
                    out.write(b"f" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def fit(source: Path, **kwargs: object) -> Run:
    est = Estimator(source, entry_script="train.py", user_managed=True, **kwargs)  # type: ignore[arg-type]
    return est.fit()


def records(mount: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    """Every run.json under the home, parsed (a truncated one would raise here)."""
    root = mount / "home" / "runs"
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob(f"*/{RECORD}"))}


def assert_no_space(run: Run, mount: Path) -> None:
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert f"no space left on {mount}" in run.error["message"], run.error


@pytest.fixture
def earlier(small_home: Path, tmp_path: Path) -> str:
    """A completed run made before the disk fills up."""
    run = fit(write_script(tmp_path / "done", DONE))
    assert run.status is RunStatus.COMPLETED, run.error
    return run.id


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------
def test_a_snapshot_that_fills_the_disk(small_home: Path, earlier: str, tmp_path: Path) -> None:
    source = write_script(tmp_path / "big", DONE)
    (source / "data.bin").write_bytes(b"d" * 10_000_000)  # 10 MB: more than the disk
    with pytest.raises(StorageError, match=f"no space left on {small_home} "):
        fit(source)
    assert list(records(small_home)) == [earlier]
    assert sorted(p.name for p in (small_home / "home" / "runs").iterdir()) == [earlier]
    (source / "data.bin").write_bytes(b"d" * 1_000_000)  # smaller data: room again
    assert fit(source).status is RunStatus.COMPLETED


@pytest.mark.parametrize("script", [LOG, METRICS], ids=["log", "metrics"])
def test_a_job_that_fills_the_disk(
    script: str, small_home: Path, earlier: str, tmp_path: Path
) -> None:
    """The rank's write fails, its stderr and exit record cannot be written either: the
    judge sees the full disk and says so; the reserve lets the record be written."""
    run = fit(write_script(tmp_path / "filler", script))
    assert_no_space(run, small_home)
    assert run.error["reason"] == "no_space"  # type: ignore[index]
    run.get_metrics()  # a metrics file cut mid-line still reads
    assert set(records(small_home)) == {earlier, run.id}
    assert Run(earlier).status is RunStatus.COMPLETED
    for path in (small_home / "home" / "runs" / run.id).rglob("*"):
        if path.is_file() and path.stat().st_size > 1_000_000:
            path.unlink()  # what the job wrote: space freed
    assert fit(tmp_path / "done").status is RunStatus.COMPLETED


def test_a_checkpoint_copy_that_fills_the_disk(
    small_home: Path, earlier: str, tmp_path: Path
) -> None:
    run = fit(write_script(tmp_path / "ckpt", CHECKPOINT), max_restarts=1)
    assert_no_space(run, small_home)
    assert str(small_home / "home" / "runs" / run.id / "resume") in run.error["message"]  # type: ignore[index]
    assert set(records(small_home)) == {earlier, run.id}
    Run(run.id).get_metrics()
    (small_home / "home" / "runs" / run.id / "checkpoints" / "state.bin").unlink()
    assert fit(tmp_path / "done").status is RunStatus.COMPLETED


def child(
    source: Path, home: Path, pause: str, pause_dir: Path, *args: str
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "FITDOCK_HOME": str(home),
        "FITDOCK_TEST_PAUSE_AT": pause,
        "FITDOCK_TEST_PAUSE_DIR": str(pause_dir),
    }
    return subprocess.Popen(
        [sys.executable, "-c", FIT, str(source), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=pause_dir,
    )


@pytest.mark.parametrize("pause", ["record", "launch"])
def test_a_record_write_on_a_full_disk(
    pause: str, small_home: Path, earlier: str, tmp_path: Path
) -> None:
    """The disk fills just before a record write: the first one (no run yet: the
    submission fails saying why, and leaves nothing), or the one after the launch: the
    space kept aside for records takes it, the job then writes into the full disk, fails,
    and the run ends Failed saying why (that record write is taken by the reserve too)."""
    source = write_script(tmp_path / "src", AFTER_GO)
    go = tmp_path / "go"
    proc = child(source, small_home / "home", pause, tmp_path, str(go))
    marker = tmp_path / pause
    assert wait_until(lambda: marker.exists() or proc.poll() is not None, 60)
    assert marker.exists(), proc.communicate()[1]
    filler = fill(small_home)
    marker.unlink()  # go on
    if pause == "launch":
        go.touch()  # the job writes
    out, err = proc.communicate(timeout=120)
    if pause == "record":
        assert proc.returncode != 0
        assert f"StorageError: no space left on {small_home} " in err
        assert list(records(small_home)) == [earlier]
        assert sorted(p.name for p in (small_home / "home" / "runs").iterdir()) == [earlier]
    else:
        assert proc.returncode == 0, err
        run_id, status = out.split()
        assert status == "Failed"
        assert_no_space(Run(run_id), small_home)
        assert set(records(small_home)) == {earlier, run_id}
        assert not (small_home / "home" / "runs" / run_id / ".space-reserve").exists()
    filler.unlink()
    go.touch()
    assert fit(source, script_params=[str(go)]).status is RunStatus.COMPLETED


# ---------------------------------------------------------------------------------------------
# A read-only home, unreadable sources
# ---------------------------------------------------------------------------------------------
def test_a_read_only_home(small_home: Path, earlier: str, tmp_path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_home)], check=True)
    before = sorted(str(p) for p in small_home.rglob("*"))
    with pytest.raises(StorageError, match="read-only file system") as caught:
        fit(tmp_path / "done")
    assert "set FITDOCK_HOME to a writable folder" in str(caught.value)
    assert sorted(str(p) for p in small_home.rglob("*")) == before
    assert Run(earlier).status is RunStatus.COMPLETED
    listed = subprocess.run(
        [sys.executable, "-m", "fitdock.cli", "runs", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0 and earlier in listed.stdout, listed.stderr


def _write_only_file() -> str:
    found = sorted(glob.glob("/sys/bus/*/drivers_probe")) + sorted(glob.glob("/sys/bus/*/uevent"))
    for path in found:
        try:
            open(path).close()
        except PermissionError:
            return path
    pytest.skip("no write-only sysfs attribute here")


def test_a_source_file_that_cannot_be_read(tmp_path: Path, fitdock_home: Path) -> None:
    source = write_script(tmp_path / "src", DONE)
    attribute = _write_only_file()
    (source / "config").symlink_to(attribute)
    with pytest.raises(SnapshotError, match=r"cannot read .*config in source_directory") as caught:
        fit(source)
    assert ".fitdockignore" in str(caught.value)
    assert not (fitdock_home / "runs").exists() or not any((fitdock_home / "runs").iterdir())
    (source / ".fitdockignore").write_text("config\n")
    assert fit(source).status is RunStatus.COMPLETED


def test_fifos_and_dangling_links_are_left_out(tmp_path: Path) -> None:
    source = write_script(tmp_path / "src", DONE)
    os.mkfifo(source / "pipe")  # opening it to read would wait for a writer forever
    (source / "gone").symlink_to(tmp_path / "nothing-here")
    run = fit(source)
    assert run.status is RunStatus.COMPLETED, run.error
    assert sorted(os.listdir(run.record["source"]["directory"])) == ["gone", "pipe", "train.py"]
    assert run.record["source"]["files"] == 1
