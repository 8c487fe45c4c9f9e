"""Content hashes on real files: the stat cache reads only what changed, the ignore files
of the snapshot apply, concurrent processes agree, and a broken cache is only slower."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fitdock.runs import contenthash
from fitdock.runs.contenthash import TreeHash, hash_file, hash_path, hash_tree

HOUR_NS = 3600 * 10**9


def tree(root: Path, files: dict[str, bytes | str]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        path.write_bytes(data)
    return root


def age(root: Path) -> None:
    """Put every file's mtime an hour back, so that a later write changes it whatever
    the filesystem's timestamp granule."""
    for path in [root] if root.is_file() else root.rglob("*"):
        if path.is_file():
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS))


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose bytes were read, through the module's one reading function."""
    seen: list[str] = []
    real = contenthash._read_digest

    def counting(path: bytes) -> str:
        seen.append(os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(contenthash, "_read_digest", counting)
    return seen


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cache files however recent their ctime (which a test cannot put back); ``age``
    keeps the mtimes apart instead."""
    monkeypatch.setattr(contenthash, "RACY_NS", 0)


SOURCE = {
    "train.py": "print('train')\n",
    "pkg/util.py": "X = 1\n",
    "pkg/data.bin": os.urandom(3 << 20),  # more than one read
    ".gitignore": "*.log\n",
    ".amlignore": "scratch/\n",
    "run.log": "noise\n",
    "scratch/notes.txt": "draft\n",
}


def test_digest_is_the_sha256_of_the_sorted_listing(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"b.py": "b", "a/z.py": "z", "a.py": "a"})
    got = hash_tree(src)
    files = {"a.py": sha("a"), "a/z.py": sha("z"), "b.py": sha("b")}
    assert got == TreeHash(sha("".join(f"{rel}\0{h}\n" for rel, h in files.items())), files)
    assert list(got.files) == ["a.py", "a/z.py", "b.py"]
    assert hash_path(src) == got.digest  # no ignore file here


@pytest.mark.usefixtures("trusting")
def test_an_unchanged_tree_is_not_read_again(tmp_path: Path, reads: list[str]) -> None:
    src = tree(tmp_path / "src", SOURCE)
    age(src)
    first = hash_tree(src)
    assert len(reads) == 5  # the ignored run.log and scratch/ are not read at all
    reads.clear()
    assert hash_tree(src) == first
    assert hash_file(src / "pkg/data.bin") == first.files["pkg/data.bin"]
    assert reads == []


@pytest.mark.usefixtures("trusting")
def test_a_changed_byte_changes_that_file_and_the_digest(tmp_path: Path, reads: list[str]) -> None:
    src = tree(tmp_path / "src", SOURCE)
    age(src)
    before = hash_tree(src)
    with open(src / "pkg/data.bin", "r+b") as handle:  # in place: same inode, same size
        handle.seek(1 << 20)
        byte = handle.read(1)
        handle.seek(1 << 20)
        handle.write(bytes([byte[0] ^ 1]))
    reads.clear()
    after = hash_tree(src)
    assert reads == [str(src / "pkg/data.bin")]
    assert after.digest != before.digest
    assert {rel for rel in after.files if after.files[rel] != before.files[rel]} == {"pkg/data.bin"}
    assert after.files["pkg/data.bin"] == sha((src / "pkg/data.bin").read_bytes())


def test_ignored_files_do_not_count(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", SOURCE)
    before = hash_tree(src)
    assert "run.log" not in before.files and "scratch/notes.txt" not in before.files
    whole = hash_path(src)
    (src / "run.log").write_text("other noise\n")
    (src / "scratch/notes.txt").write_text("second draft\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__/train.cpython-311.pyc").write_bytes(b"\0")
    assert hash_tree(src) == before
    assert hash_path(src) != whole  # data: every file counts (but __pycache__)
    assert set(hash_tree(src, ignore_files=False).files) == set(before.files) | {
        "run.log",
        "scratch/notes.txt",
    }


def test_the_same_content_at_another_path_has_the_same_digest(tmp_path: Path) -> None:
    files = {"a.txt": "same", "sub/b.txt": "bytes"}
    one, two = tree(tmp_path / "one", files), tree(tmp_path / "elsewhere/two", files)
    assert hash_tree(one) == hash_tree(two)
    assert hash_path(one / "a.txt") == hash_path(two / "a.txt") == sha("same")
    assert hash_tree(one / "a.txt") == TreeHash(sha("same"), {"": sha("same")})


@pytest.mark.usefixtures("trusting")
def test_a_touch_reads_the_file_again_and_keeps_the_digest(
    tmp_path: Path, reads: list[str]
) -> None:
    src = tree(tmp_path / "src", {"a.txt": "a", "b.txt": "b"})
    age(src)
    before = hash_tree(src)
    os.utime(src / "a.txt")
    reads.clear()
    assert hash_tree(src) == before
    assert reads == [str(src / "a.txt")]


def test_files_changed_in_the_last_seconds_are_not_cached(
    tmp_path: Path, fitdock_home: Path, monkeypatch: pytest.MonkeyPatch, reads: list[str]
) -> None:
    """git's racy files: a write in the same timestamp granule as the hashing would leave
    the stat as it was, so a row is only kept for files older than RACY_NS (2 s; 0.5 s
    here). Back-dating the mtime is not enough: the ctime counts too."""
    monkeypatch.setattr(contenthash, "RACY_NS", 500_000_000)
    src = tree(tmp_path / "src", {"new.txt": "fresh"})
    age(src)
    old = tree(tmp_path / "old", {"old.txt": "x"})
    hash_tree(src)
    hash_tree(src)
    assert reads == [str(src / "new.txt")] * 2
    with sqlite3.connect(fitdock_home / "cache/hashes.sqlite") as con:
        assert con.execute("SELECT count(*) FROM hashes").fetchone() == (0,)
    time.sleep(0.6)
    hash_tree(old)
    reads.clear()
    hash_tree(old)
    assert reads == []


def test_links_missing_paths_and_odd_names(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"real.txt": "content"})
    (src / "link.txt").symlink_to(src / "real.txt")
    (src / "broken").symlink_to(tmp_path / "nowhere")
    (src / os.fsdecode(b"caf\xe9.bin")).write_bytes(b"latin-1 name")
    got = hash_tree(src)
    assert got.files["link.txt"] == got.files["real.txt"] == sha("content")
    assert "broken" not in got.files
    assert hash_tree(src) == got
    assert hash_file(src / "link.txt") == sha("content")
    for call in (hash_tree, hash_path, hash_file):
        with pytest.raises(FileNotFoundError):
            call(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        hash_file(src)


@pytest.mark.usefixtures("trusting")
def test_rows_of_deleted_files_are_dropped(tmp_path: Path, fitdock_home: Path) -> None:
    src = tree(tmp_path / "src", {"a.txt": "a", "b.txt": "b"})
    age(src)
    hash_tree(src)
    (src / "b.txt").unlink()
    assert hash_tree(src).files == {"a.txt": sha("a")}
    with sqlite3.connect(fitdock_home / "cache/hashes.sqlite") as con:
        assert con.execute("SELECT count(*) FROM hashes").fetchone() == (1,)


def test_concurrent_processes_agree(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {f"d{i % 7}/f{i}.bin": os.urandom(i * 97) for i in range(300)})
    age(src)
    expected = hash_tree(src).digest
    home = tmp_path / "shared-home"  # all four start from nothing, together
    code = textwrap.dedent(
        f"""
        from fitdock.runs import contenthash
        contenthash.RACY_NS = 0
        for _ in range(5):
            print(contenthash.hash_tree({str(src)!r}).digest, flush=True)
        """
    )
    env = {**os.environ, "FITDOCK_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert err == b""
        assert out.decode().split() == [expected] * 5
    with sqlite3.connect(home / "cache/hashes.sqlite") as con:
        assert con.execute("SELECT count(*) FROM hashes").fetchone() == (300,)


@pytest.mark.usefixtures("trusting")
def test_a_corrupt_cache_is_set_aside(
    tmp_path: Path, fitdock_home: Path, monkeypatch: pytest.MonkeyPatch, reads: list[str]
) -> None:
    src = tree(tmp_path / "src", {"a.txt": "a", "b.txt": "b"})
    age(src)
    expected = hash_tree(src)
    monkeypatch.setattr(contenthash, "_CACHE", contenthash._StatCache())  # as a new process
    database = fitdock_home / "cache/hashes.sqlite"
    for suffix in ("-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    database.write_bytes(b"not sqlite at all " * 500)
    reads.clear()
    assert hash_tree(src) == expected
    assert reads == [str(src / "a.txt"), str(src / "b.txt")]
    assert (fitdock_home / "cache/hashes.sqlite.corrupt").exists()
    assert hash_tree(src) == expected  # a fresh cache, filled again
    reads.clear()
    assert hash_tree(src) == expected
    assert reads == []


@pytest.mark.usefixtures("trusting")
def test_a_locked_cache_only_costs_reading(
    tmp_path: Path, fitdock_home: Path, monkeypatch: pytest.MonkeyPatch, reads: list[str]
) -> None:
    monkeypatch.setattr(contenthash, "BUSY_S", 0.2)
    src = tree(tmp_path / "src", {"a.txt": "a", "b.txt": "b"})
    age(src)
    assert hash_file(src / "a.txt") == sha("a")  # creates the cache
    database = fitdock_home / "cache/hashes.sqlite"
    with sqlite3.connect(database, isolation_level=None) as con:
        con.execute("BEGIN EXCLUSIVE")  # another process writing, for longer than BUSY_S
        started = time.monotonic()
        assert hash_tree(src).files == {"a.txt": sha("a"), "b.txt": sha("b")}
        assert time.monotonic() - started < 2
        con.execute("ROLLBACK")
        assert con.execute("SELECT count(*) FROM hashes").fetchone() == (1,)  # b.txt: unsaved
    reads.clear()
    hash_tree(src)
    assert reads == [str(src / "b.txt")]
    reads.clear()
    hash_tree(src)
    assert reads == []
