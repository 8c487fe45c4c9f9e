"""Snapshots: ignore files (nested, negation), .git never copied, limits and clean failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_dirs

from fitdock import Estimator
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
