"""Snapshots: ignore files (nested, negation), .git never copied, limits and clean failure;
modes and times kept; nothing a script does to its snapshot reaches the source or another
run's snapshot (clones included, where the filesystem makes them)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_dirs

from fitdock import Estimator, RunStatus
from fitdock.errors import SnapshotError
from fitdock.runs.snapshot import collect, snapshot


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def names(source: Path) -> set[str]:
    return {rel.as_posix() for rel, _ in collect(source)}


def test_gitignore_is_honored_with_nested_folders(tmp_path: Path) -> None:
    src = tree(
        tmp_path / "src",
        {
            "train.py": "",
            ".gitignore": "*.log\ndata/\n",
            "run.log": "",
            "data/big.bin": "",
            "pkg/data/also.bin": "",
            "pkg/mod.py": "",
            "pkg/debug.log": "",
            "pkg/.gitignore": "secret.txt\n/local-only.txt\n",
            "pkg/secret.txt": "",
            "pkg/deeper/secret.txt": "",
            "pkg/deeper/local-only.txt": "",
            "pkg/local-only.txt": "",
            "secret.txt": "",
        },
    )
    assert names(src) == {
        ".gitignore",
        "train.py",
        "pkg/.gitignore",
        "pkg/mod.py",
        "pkg/deeper/local-only.txt",  # '/local-only.txt' is anchored to pkg/
        "secret.txt",  # pkg/.gitignore rules apply below pkg/ only
    }


def test_fitdockignore_is_honored(tmp_path: Path) -> None:
    src = tree(
        tmp_path / "src",
        {
            "train.py": "",
            ".fitdockignore": "notebooks/\n*.ckpt\n",
            "notebooks/a.ipynb": "",
            "model.ckpt": "",
            "sub/.fitdockignore": "scratch.txt\n",
            "sub/scratch.txt": "",
            "sub/keep.txt": "",
        },
    )
    assert names(src) == {".fitdockignore", "train.py", "sub/.fitdockignore", "sub/keep.txt"}


def test_fitdockignore_negation_re_includes_a_gitignored_file(tmp_path: Path) -> None:
    src = tree(
        tmp_path / "src",
        {
            "train.py": "",
            ".gitignore": "*.csv\n",
            ".fitdockignore": "!small.csv\n",
            "small.csv": "",
            "large.csv": "",
        },
    )
    assert names(src) == {".gitignore", ".fitdockignore", "train.py", "small.csv"}


def test_nested_fitdockignore_negation_re_includes_a_file_ignored_above(tmp_path: Path) -> None:
    """As in git, a deeper ignore file overrides the patterns of the folders above it:
    ``git check-ignore`` says ``sub/keep.csv`` is not ignored here."""
    src = tree(
        tmp_path / "src",
        {
            "train.py": "",
            ".gitignore": "*.csv\n",
            "sub/.fitdockignore": "!keep.csv\n",
            "sub/keep.csv": "",
            "sub/drop.csv": "",
        },
    )
    assert names(src) == {".gitignore", "train.py", "sub/.fitdockignore", "sub/keep.csv"}


def test_git_folder_and_caches_are_never_copied(tmp_path: Path) -> None:
    src = tree(
        tmp_path / "src",
        {
            "train.py": "",
            ".fitdockignore": "!.git/\n!__pycache__/\n",
            ".git/HEAD": "ref: refs/heads/main\n",
            ".git/objects/ab/cdef": "",
            "__pycache__/train.cpython-311.pyc": "",
            "sub/.git/config": "",
        },
    )
    copied = names(src)
    assert copied == {".fitdockignore", "train.py"}
    out = tmp_path / "out"
    summary = snapshot(src, out, max_size_mb=1, max_files=10)
    assert summary.files == 2
    assert not (out / ".git").exists()
    assert not (out / "sub").exists()


def test_snapshot_copies_contents_and_counts_bytes(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"train.py": "print(1)\n", "pkg/util.py": "X = 1\n"})
    out = tmp_path / "out"
    summary = snapshot(src, out, max_size_mb=1, max_files=10)
    assert (summary.files, summary.bytes) == (2, len("print(1)\n") + len("X = 1\n"))
    assert (out / "pkg/util.py").read_text() == "X = 1\n"


def test_file_limit_names_the_limit(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {f"f{i}.py": "" for i in range(5)})
    out = tmp_path / "out"
    with pytest.raises(SnapshotError) as info:
        snapshot(src, out, max_size_mb=1, max_files=4)
    assert "5 files, over the limit of 4" in str(info.value)
    assert "max_snapshot_files" in str(info.value)
    assert not out.exists(), "nothing may be copied when over a limit"


def test_size_limit_names_the_limit(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"train.py": "", "weights.bin": "x" * 300_000})
    out = tmp_path / "out"
    with pytest.raises(SnapshotError) as info:
        snapshot(src, out, max_size_mb=0.1, max_files=10)
    assert "0.3 MB, over the limit of 0.1 MB" in str(info.value)
    assert "max_snapshot_size_mb" in str(info.value)
    assert not out.exists()


def test_ignored_files_do_not_count_towards_the_limits(tmp_path: Path) -> None:
    src = tree(
        tmp_path / "src",
        {
            "train.py": "",
            ".fitdockignore": "data/\n",
            **{f"data/{i}.bin": "x" * 1000 for i in range(20)},
        },
    )
    summary = snapshot(src, tmp_path / "out", max_size_mb=0.01, max_files=2)
    assert summary.files == 2


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_snapshot_files": 1}, "over the limit of 1"),
        ({"max_snapshot_size_mb": 0.000001}, "MB, over the limit of 1e-06 MB"),
    ],
)
def test_fit_over_a_limit_leaves_no_run_directory(
    tmp_path: Path, fitdock_home: Path, kwargs: dict, words: str
) -> None:
    src = tree(tmp_path / "src", {"train.py": "print('hi')\n", "util.py": "X = 1\n"})
    est = Estimator(src, entry_script="train.py", user_managed=True, **kwargs)
    with pytest.raises(SnapshotError, match=words):
        est.fit()
    assert run_dirs(fitdock_home) == []


def test_amlignore_is_honored_between_gitignore_and_fitdockignore(tmp_path: Path) -> None:
    src = tree(
        tmp_path / "src",
        {
            "train.py": "",
            ".gitignore": "*.csv\n",
            ".amlignore": "!keep.csv\nazureml-logs/\n*.tmp\n",
            ".fitdockignore": "!wanted.tmp\n",
            "keep.csv": "",
            "drop.csv": "",
            "azureml-logs/x.txt": "",
            "scratch.tmp": "",
            "wanted.tmp": "",
        },
    )
    assert names(src) == {
        ".gitignore",
        ".amlignore",
        ".fitdockignore",
        "train.py",
        "keep.csv",
        "wanted.tmp",
    }


def test_snapshot_keeps_bytes_modes_and_times(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"run.sh": "#!/bin/sh\n", "ro.txt": "frozen", "empty": ""})
    (src / "big.bin").write_bytes(os.urandom(5 << 20))
    (src / "run.sh").chmod(0o750)
    (src / "ro.txt").chmod(0o444)
    os.utime(src / "big.bin", ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    (src / "link.txt").symlink_to(src / "ro.txt")
    (src / "dirlink").symlink_to(src, target_is_directory=True)
    old = os.umask(0o077)  # bits the umask would strip are put back
    try:
        summary = snapshot(src, tmp_path / "out", max_size_mb=10, max_files=10)
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "big.bin",
        "empty",
        "link.txt",
        "ro.txt",
        "run.sh",
    ]
    assert summary.files == 5
    for name in ("run.sh", "ro.txt", "empty", "big.bin"):
        got, want = (out / name).stat(), (src / name).stat()
        assert (out / name).read_bytes() == (src / name).read_bytes()
        assert stat.S_IMODE(got.st_mode) == stat.S_IMODE(want.st_mode), name
        assert got.st_mtime_ns == want.st_mtime_ns, name
    assert (out / "link.txt").is_file() and not (out / "link.txt").is_symlink()
    assert (out / "link.txt").read_text() == "frozen"


def _state(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        path.relative_to(root).as_posix(): (
            path.read_bytes(),
            stat.S_IMODE(path.lstat().st_mode),
            path.lstat().st_mtime_ns,
        )
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


VANDAL = """
import os
# in place, appended, truncated, made writable and then written, deleted, renamed over:
with open("model.bin", "r+b") as handle:
    handle.write(b"overwritten")
with open("notes.txt", "a") as handle:
    handle.write("appended by the job\\n")
os.truncate("pkg/data.bin", 0)
os.chmod("pkg/util.py", 0o777)
try:
    handle = open("frozen.txt", "w")  # read-only (0o444): root opens it for writing anyway
except PermissionError:
    os.chmod("frozen.txt", 0o666)
    handle = open("frozen.txt", "w")
with handle:
    handle.write("thawed")
os.utime("train.py", (0, 0))
os.unlink("gone.txt")
os.replace("notes.txt", "pkg/util.py")
print("vandalised as uid", os.geteuid())
"""


def _safety_source(root: Path) -> Path:
    src = tree(
        root,
        {
            "train.py": "print('a run that reads its snapshot')\n",
            "x.py": VANDAL,
            "notes.txt": "notes\n",
            "frozen.txt": "frozen",
            "gone.txt": "soon gone",
            "pkg/util.py": "X = 1\n",
        },
    )
    (src / "model.bin").write_bytes(os.urandom(1 << 20))
    (src / "pkg/data.bin").write_bytes(os.urandom(300_000))
    (src / "frozen.txt").chmod(0o444)
    return src


def _check_a_script_cannot_reach_beyond_its_snapshot(src: Path) -> None:
    source = _state(src)
    first = Estimator(src, entry_script="train.py", user_managed=True).fit()
    assert first.status is RunStatus.COMPLETED, first.error
    kept = _state(first.run_dir / "snapshot")
    vandal = Estimator(src, entry_script="x.py", user_managed=True).fit()
    assert vandal.status is RunStatus.COMPLETED, vandal.error
    changed = _state(vandal.run_dir / "snapshot")
    assert changed["model.bin"][0].startswith(b"overwritten")
    assert changed["pkg/data.bin"][0] == b"" and "gone.txt" not in changed
    assert changed["frozen.txt"][0] == b"thawed"
    assert _state(src) == source
    assert _state(first.run_dir / "snapshot") == kept
    assert {rel: data for rel, (data, _, _) in kept.items()} == {
        rel: data for rel, (data, _, _) in source.items()
    }


def test_a_script_cannot_change_the_source_or_another_runs_snapshot(tmp_path: Path) -> None:
    """Tests run as root here: permissions stop nothing, only separate bytes do."""
    _check_a_script_cannot_reach_beyond_its_snapshot(_safety_source(tmp_path / "src"))


@pytest.fixture
def reflink_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on a reflink filesystem: ``TEST_REFLINK_DIR`` when set, else (as root, with
    xfsprogs: scripts/install-system.sh installs it) a private XFS image mounted through a
    loop device for this test and removed after it."""
    where = os.environ.get("TEST_REFLINK_DIR")
    if where:
        yield Path(where)
        return
    mkfs = shutil.which("mkfs.xfs")
    if os.geteuid() != 0 or mkfs is None:
        pytest.skip("no reflink filesystem: set TEST_REFLINK_DIR, or run as root with xfsprogs")
    image, mount = tmp_path / "xfs.img", tmp_path / "xfs"
    mount.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(320 * 1024 * 1024)  # XFS's smallest comfortable size; sparse
    subprocess.run([mkfs, "-q", "-m", "reflink=1", str(image)], check=True)
    done = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True)
    if done.returncode != 0:
        # a skip here; with CI=true the CI guard of conftest.py makes it a failure
        pytest.skip(f"cannot loop-mount an XFS image: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        image.unlink()


def test_clones_where_the_filesystem_makes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reflink_dir: Path
) -> None:
    """On a reflink filesystem (btrfs, XFS): every file is cloned, and a script that writes
    into its clones changes nothing else."""
    root = reflink_dir / tmp_path.name
    root.mkdir()
    try:
        monkeypatch.setenv("FITDOCK_HOME", str(root / "home"))
        src = _safety_source(root / "src")
        summary = snapshot(src, root / "out", max_size_mb=10, max_files=20)
        assert summary.cloned == summary.files  # every file has bytes
        _check_a_script_cannot_reach_beyond_its_snapshot(src)
    finally:
        shutil.rmtree(root)
