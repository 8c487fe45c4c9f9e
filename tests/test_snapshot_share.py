"""Shared snapshots (runs/shared_snapshot.py, runs/overlay.py), with real overlay mounts:
a fit runs in an overlay on the store's tree and ends with a plain folder; the second fit
of the same content reuses the tree; nothing a script does as root reaches the store, the
source or another run; a tampered tree is made again; ``runs gc`` keeps referenced trees,
removes the rest, and releases the overlay of a supervisor killed by SIGKILL. Which
targets may share is a pure decision, tested without mounts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import pid_alive, wait_until, write_script
from test_snapshot import _safety_source, tree

from fitdock import Estimator, RunStatus
from fitdock.cli import main as cli_main
from fitdock.errors import SnapshotError
from fitdock.jobside.common import remove_tree
from fitdock.runs import overlay
from fitdock.runs.shared_snapshot import MIN_BYTES, MIN_FILES, Mode, should_share, store_root
from fitdock.targets.docker import DockerTarget
from fitdock.targets.hosts.target import HostsTarget
from fitdock.targets.local import LocalTarget
from fitdock.targets.slurm.target import SlurmTarget

# Says whether its working folder is an overlay mount, changes its snapshot in every way
# (in place, deleted, a folder made again: opaque, a folder renamed: copied with
# redirect_dir=off), writes an output, and lists what it sees at its end.
SCRIPT = """
import json, os, shutil
cwd = os.getcwd()
kinds = [line.split(" - ")[1].split()[0] for line in open("/proc/self/mountinfo")
         if line.split()[4] == cwd]
with open("pkg/a.txt", "a") as handle:
    handle.write("appended\\n")
os.chmod("pkg/a.txt", 0o600)
os.unlink("b.txt")
shutil.rmtree("again")
os.mkdir("again")
open("again/only.txt", "w").write("only")
shutil.move("moved", "moved2")
open("new.txt", "w").write("new")
open("outputs/result.txt", "w").write("result")
seen = {}
for folder, dirs, files in os.walk(".", followlinks=True):
    dirs[:] = [d for d in dirs if folder != "." or d not in ("outputs", "logs")]
    for name in files:
        path = os.path.join(folder, name)
        seen[os.path.relpath(path)] = open(path).read()
json.dump({"kinds": kinds, "seen": seen}, open("outputs/seen.json", "w"))
"""


def contents(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` by relative path, following links (a flattened snapshot
    links into the store), without the run's outputs/ and logs/."""
    found = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d not in ("outputs", "logs")]
        for name in files:
            path = Path(folder) / name
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def overlays_under(path: Path) -> list[str]:
    return [m.point for m in overlay.overlay_mounts() if m.point.startswith(str(path))]


@pytest.fixture
def share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Shared snapshots whatever the size; an overlay a failed test left is unmounted."""
    if os.geteuid() != 0:
        # a skip here; with CI=true (CI runs as root) the CI guard of conftest.py fails it
        pytest.skip("overlay mounts need root")
    monkeypatch.setenv("FITDOCK_SNAPSHOT", "share")
    yield
    for point in overlays_under(tmp_path):
        overlay.unmount(Path(point))


def fit(src: Path, script: str = "train.py", **kwargs: object):  # type: ignore[no-untyped-def]
    return Estimator(src, entry_script=script, user_managed=True, **kwargs).fit()


def test_a_fit_runs_in_an_overlay_and_ends_as_a_plain_folder(
    share: None, tmp_path: Path, fitdock_home: Path
) -> None:
    src = tree(
        tmp_path / "src",
        {
            "pkg/a.txt": "a\n",
            "pkg/keep.txt": "keep",
            "b.txt": "b",
            "again/old.txt": "old",
            "moved/m.txt": "m",
            "outputs/shipped.txt": "shipped",  # moved to the run's outputs/, out of the overlay
        },
    )
    write_script(src, SCRIPT)
    before = contents(src)
    run = fit(src)
    assert run.status is RunStatus.COMPLETED, run.error
    source = run.record["source"]
    assert source["placement"] == "shared" and source["shared"], source
    tree_dir = store_root() / source["shared"] / "tree"
    assert "shared" in run.summary()
    snapshot = run.run_dir / "snapshot"
    assert overlays_under(tmp_path) == [], "the overlay must be gone when the run has ended"
    assert not (run.run_dir / ".snapshot").exists()
    seen = json.loads((run.run_dir / "outputs/seen.json").read_text())
    assert seen["kinds"] == ["overlay"]
    after = {rel: data.decode() for rel, data in contents(snapshot).items()}
    assert after == seen["seen"]
    assert after["pkg/a.txt"] == "a\nappended\n" and "b.txt" not in after
    assert after["again/only.txt"] == "only" and "again/old.txt" not in after
    assert after["moved2/m.txt"] == "m" and "moved/m.txt" not in after
    assert (snapshot / "pkg/keep.txt").is_symlink()  # unchanged: the store's, by a link
    assert (snapshot / "outputs/result.txt").read_text() == "result"
    assert (run.run_dir / "outputs/shipped.txt").read_text() == "shipped"
    assert os.readlink(snapshot / "logs") == "../logs"
    assert contents(src) == before
    assert contents(tree_dir) == before
    assert (tree_dir / "outputs/shipped.txt").read_text() == "shipped"


def test_the_second_fit_of_the_same_content_reuses_the_tree(
    share: None, tmp_path: Path, fitdock_home: Path
) -> None:
    src = write_script(tmp_path / "src", "print(open('data.txt').read())\n")
    (src / "data.txt").write_text("data")
    first = fit(src)
    entry = store_root() / first.record["source"]["shared"]
    made = entry.stat().st_ino
    second = fit(src)
    assert second.status is RunStatus.COMPLETED, second.error
    assert second.record["source"]["shared"] == first.record["source"]["shared"]
    assert entry.stat().st_ino == made
    assert sorted(p.name for p in store_root().iterdir() if p.is_dir()) == [entry.name]
    (src / "data.txt").write_text("other")  # other content: another tree
    third = fit(src)
    assert third.record["source"]["shared"] != first.record["source"]["shared"]
    assert (third.run_dir / "snapshot/data.txt").read_text() == "other"


def test_a_script_as_root_changes_neither_store_nor_source_nor_another_run(
    share: None, tmp_path: Path, fitdock_home: Path
) -> None:
    src = _safety_source(tmp_path / "src")
    source = contents(src)
    first = fit(src)
    assert first.status is RunStatus.COMPLETED, first.error
    key = first.record["source"]["shared"]
    stored = contents(store_root() / key / "tree")
    vandal = fit(src, "x.py")
    assert vandal.status is RunStatus.COMPLETED, vandal.error
    assert vandal.record["source"]["shared"] == key
    changed = contents(vandal.run_dir / "snapshot")
    assert changed["model.bin"].startswith(b"overwritten")
    assert changed["pkg/data.bin"] == b"" and "gone.txt" not in changed
    assert changed["frozen.txt"] == b"thawed"
    assert contents(src) == source
    assert contents(store_root() / key / "tree") == stored == source
    assert contents(first.run_dir / "snapshot") == source
    third = fit(src)  # the store checks out as made: reused
    assert third.record["source"]["shared"] == key
    assert contents(third.run_dir / "snapshot") == source


def test_restarts_keep_the_same_mount(share: None, tmp_path: Path) -> None:
    src = write_script(
        tmp_path / "src",
        """
        import os, sys
        if os.environ["FITDOCK_ATTEMPT"] == "1":
            open("first.txt", "w").write("from attempt 1")
            sys.exit(3)
        print(open("first.txt").read())
        """,
    )
    run = fit(src, max_restarts=1)
    assert run.status is RunStatus.COMPLETED, run.error
    assert len(run.record["attempts"]) == 2
    assert (run.run_dir / "snapshot/first.txt").read_text() == "from attempt 1"


def test_a_tampered_store_tree_is_not_reused(
    share: None, tmp_path: Path, fitdock_home: Path
) -> None:
    src = write_script(tmp_path / "src", "print(open('data.txt').read())\n")
    (src / "data.txt").write_text("data")
    first = fit(src)
    key = first.record["source"]["shared"]
    stored = store_root() / key / "tree/data.txt"
    st = stored.stat()
    stored.write_text("evil")  # same size, times put back: the ctime still tells
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = fit(src)
    assert second.status is RunStatus.COMPLETED, second.error
    assert second.record["source"]["shared"] == key
    assert (second.run_dir / "snapshot/data.txt").read_text() == "data"
    assert stored.read_text() == "data"  # made again in its place; the old one set aside
    assert (first.run_dir / "snapshot/data.txt").read_text() == "data"
    assert [p.name for p in store_root().glob(f"{key}.stale-*")]


def test_gc_keeps_referenced_trees_and_removes_the_rest(
    share: None, tmp_path: Path, fitdock_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = write_script(tmp_path / "one", "print(1)\n")
    two = write_script(tmp_path / "two", "print(2)\n")
    gone, kept = fit(one), fit(two)
    gone_key, kept_key = (r.record["source"]["shared"] for r in (gone, kept))
    remove_tree(gone.run_dir)
    assert cli_main(["runs", "gc", "--dry-run"]) == 0
    assert (store_root() / gone_key).is_dir()
    capsys.readouterr()
    assert cli_main(["runs", "gc"]) == 0
    out = capsys.readouterr().out
    assert f"removed {store_root() / gone_key}\n" in out
    assert not (store_root() / gone_key).exists()
    assert (store_root() / kept_key).is_dir()
    assert (kept.run_dir / "snapshot/train.py").read_text() == "print(2)\n"


KILLED_FIT = """
import sys
from fitdock import Estimator
Estimator(sys.argv[1], entry_script="train.py", user_managed=True).fit()
"""


def test_gc_releases_the_overlay_of_a_killed_supervisor(
    share: None, tmp_path: Path, fitdock_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    src = write_script(
        tmp_path / "src",
        f"""
        import os, time
        open("written.txt", "w").write("by the job")
        open({str(markers / "job")!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    child = subprocess.Popen([sys.executable, "-c", KILLED_FIT, str(src)], env=os.environ.copy())
    try:
        assert wait_until(lambda: (markers / "job").is_file(), 30), "the job never started"
        (run_dir,) = (fitdock_home / "runs").iterdir()
        assert overlays_under(run_dir) == [str(run_dir / "snapshot")]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    job = int((markers / "job").read_text())
    assert wait_until(lambda: not pid_alive(job), 10), "the reaper did not stop the job"
    assert cli_main(["runs", "gc"]) == 0
    assert f"unmounted {run_dir / 'snapshot'}\n" in capsys.readouterr().out
    assert overlays_under(tmp_path) == []
    assert (run_dir / "snapshot/written.txt").read_text() == "by the job"
    assert "time.sleep(60)" in (run_dir / "snapshot/train.py").read_text()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "Failed"


def test_a_refused_mount_falls_back_to_a_copy_and_says_why(
    share: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FITDOCK_HOME", str(tmp_path / "home,with,commas"))
    src = write_script(tmp_path / "src", "print('copied')\n")
    run = fit(src)
    assert run.status is RunStatus.COMPLETED, run.error
    source = run.record["source"]
    assert source["placement"] == "copy" and "shared" not in source
    assert "cannot be an overlay option" in source["share_error"]
    assert not (run.run_dir / "snapshot/train.py").is_symlink()


def test_a_filesystem_the_kernel_refuses_is_copied_to_and_not_tried_again(
    share: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The home folder on an overlay, which the kernel refuses as an upper layer: the fit
    is copied and says why; the next fit in this process copies at once (no new tree)."""
    from fitdock.runs import shared_snapshot

    monkeypatch.setattr(shared_snapshot, "_REFUSED", {})
    layers = {name: tmp_path / name for name in ("lower", "upper", "work", "home")}
    for folder in layers.values():
        folder.mkdir()
    overlay.mount(layers["lower"], layers["upper"], layers["work"], layers["home"])
    try:
        monkeypatch.setenv("FITDOCK_HOME", str(layers["home"]))
        src = write_script(tmp_path / "src", "print('copied')\n")
        first = fit(src)
        assert first.status is RunStatus.COMPLETED, first.error
        source = first.record["source"]
        assert source["placement"] == "copy" and "shared" not in source, source
        assert "refused before" not in source["share_error"], source
        trees = sorted(store_root().iterdir())
        second = fit(src)
        assert second.status is RunStatus.COMPLETED, second.error
        assert "refused before, in this process" in second.record["source"]["share_error"]
        assert sorted(store_root().iterdir()) == trees  # not keyed, nor stored, again
        assert (second.run_dir / "snapshot/train.py").read_text() == "print('copied')\n"
    finally:
        for point in reversed(overlays_under(tmp_path)):
            overlay.unmount(Path(point))


def test_the_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_script(tmp_path / "src", "print('hi')\n")
    monkeypatch.setenv("FITDOCK_SNAPSHOT", "copy")
    run = fit(src)
    assert run.record["source"]["placement"] == "copy" and not store_root().exists()
    monkeypatch.setenv("FITDOCK_SNAPSHOT", "always")
    with pytest.raises(SnapshotError, match="FITDOCK_SNAPSHOT='always'"):
        fit(src)


def test_only_targets_whose_ranks_see_this_machines_mounts_share() -> None:
    assert LocalTarget.ranks_see_local_mounts
    for target in (DockerTarget, HostsTarget, SlurmTarget):
        assert not target.ranks_see_local_mounts, target
        assert not should_share(Mode.SHARE, target.ranks_see_local_mounts, True, 10**6, 1 << 40)
    local = LocalTarget.ranks_see_local_mounts
    assert should_share(Mode.AUTO, local, True, MIN_FILES, 0)
    assert should_share(Mode.AUTO, local, True, 1, MIN_BYTES)
    assert not should_share(Mode.AUTO, local, True, MIN_FILES - 1, MIN_BYTES - 1)
    assert should_share(Mode.SHARE, local, True, 1, 1)
    assert not should_share(Mode.COPY, local, True, 10**6, 1 << 40)
    assert not should_share(Mode.SHARE, local, False, 10**6, 1 << 40)  # cannot mount


def test_flatten_after_an_interruption_is_the_same(share: None, tmp_path: Path) -> None:
    """``release`` killed after its link pass and run again makes the same folder."""
    from fitdock.runs.layout import RunPaths
    from fitdock.runs.shared_snapshot import place_snapshot, release

    src = tree(tmp_path / "src", {"a.txt": "a", "d/b.txt": "b", "d/c.txt": "c"})
    run = RunPaths(tmp_path / "run")
    run.path.mkdir()
    place_snapshot(src, run, 1, 10, local_mounts=True)
    try:
        (run.snapshot / "d/b.txt").unlink()
        (run.snapshot / "d/new.txt").write_text("new")
    finally:
        overlay.unmount(run.snapshot)
    layers = run.path / ".snapshot"
    with contextlib.suppress(ZeroDivisionError):
        overlay._link_missing(
            str(layers / "upper"), os.path.realpath(layers / "lower"), str(run.snapshot)
        )
        (layers / "linked").touch()
        raise ZeroDivisionError  # killed here: whiteouts still in place
    assert release(run)
    assert contents(run.snapshot) == {"a.txt": b"a", "d/c.txt": b"c", "d/new.txt": b"new"}
    assert not layers.exists()
