"""Content hashes of files and folders, with a stat cache so that unchanged files are not
read again.

``hash_tree(root)`` hashes each file's bytes (sha256) and then the sorted list of
(relative posix path, file hash): names and bytes count, times, modes and the root's own
path do not. A folder is walked by ``runs/snapshot.py``'s ``scan``, so with
``ignore_files`` a source directory hashes exactly the files its snapshot holds (minus
what ``.gitignore``/``.amlignore``/``.fitdockignore`` exclude); without it every file
counts. ``.git/``, ``__pycache__/`` and ``.fitdock/`` never count, with or without.
Symbolic links count as their target's content; a missing path raises
``FileNotFoundError``.

The stat cache, ``$FITDOCK_HOME/cache/hashes.sqlite``, keeps one row per absolute path:
(size, mtime_ns, inode, ctime_ns) -> sha256. A file whose stat matches its row is not
read. A file changed within the same timestamp granule as its hashing would keep its
stat (git's "racy" files), so a row is written only for files whose mtime and ctime are
more than ``RACY_NS`` older than the start of the hashing; newer ones are read again next
time. The rows under a folder are read in one query and new rows written in one short
transaction; WAL mode lets processes read while one writes, and a busy timeout bounds
the wait. Any trouble with the database (locked too long, unwritable, corrupt) only
costs reading the files: a corrupt file is moved aside and a fresh one started.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fitdock.runs.layout import CACHE, HASHES
from fitdock.runs.snapshot import Found, scan
from fitdock.shared import fitdock_home

RACY_NS = 2_000_000_000  # a file changed this recently is hashed but not cached
BUSY_S = 1.0  # how long a write waits for another process's transaction
CHUNK = 1 << 20
PARALLEL_BYTES = 16 << 20  # read and hash in threads when the misses hold more than this
SCHEMA = """CREATE TABLE IF NOT EXISTS hashes (
    path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL
) WITHOUT ROWID"""
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26

Key = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns
T = TypeVar("T")


@dataclass(frozen=True)
class TreeHash:
    digest: str  # sha256 hex of the sorted (relative posix path, file sha256) list
    files: dict[str, str]  # relative posix path -> sha256 hex ({"": sha} for a single file)


def hash_file(path: Path) -> str:
    """The sha256 hex of a file's bytes, through the stat cache."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{path} is a folder: use hash_tree")
    return _hashes(os.path.abspath(path), [("", st)], tree=False)[0]


def hash_tree(root: Path, *, ignore_files: bool = True) -> TreeHash:
    """The files below ``root`` and their hashes; a single file is ``{"": sha}``, with its
    own hash as the digest."""
    st = os.stat(root)
    top = os.path.abspath(root)
    if not stat.S_ISDIR(st.st_mode):
        sha = _hashes(top, [("", st)], tree=False)[0]
        return TreeHash(sha, {"": sha})
    return hash_found(top, scan(top, ignore_files=ignore_files))


def hash_found(root: Path | str, found: Found) -> TreeHash:
    """The hash of the files ``scan`` found below the folder ``root``: for a caller that
    has scanned it already (a snapshot checks its limits on the same listing)."""
    top = os.path.abspath(root)
    files = dict(
        sorted(zip((rel for rel, _ in found), _hashes(top, found, tree=True), strict=True))
    )
    listing = "".join(f"{rel}\0{sha}\n" for rel, sha in files.items())
    digest = hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()
    return TreeHash(digest, files)


def hash_path(path: Path) -> str:
    """The digest of a file or of every file of a folder (no ignore files): data."""
    return hash_tree(path, ignore_files=False).digest


# ---------------------------------------------------------------------------------------------
# Hashing, with the cache
# ---------------------------------------------------------------------------------------------
def _hashes(top: str, found: Found, *, tree: bool) -> list[str]:
    """The sha256 of each file found below ``top`` (or of ``top`` itself), reading only
    those whose stat differs from their cached row."""
    start = time.time_ns()
    paths = [os.fsencode(os.path.join(top, rel) if rel else top) for rel, _ in found]
    keys = [_key(st) for _, st in found]
    known = _CACHE.load(os.fsencode(top), tree)
    shas: list[str | None] = [None] * len(paths)
    misses: list[int] = []
    for i, (path, key) in enumerate(zip(paths, keys, strict=True)):
        row = known.get(path)
        if row is not None and row[0] == key:
            shas[i] = row[1]
        else:
            misses.append(i)
    read = _read_all([paths[i] for i in misses], sum(keys[i][0] for i in misses))
    old = start - RACY_NS
    rows = []
    for i, sha in zip(misses, read, strict=True):
        shas[i] = sha
        _, st = found[i]
        if max(st.st_mtime_ns, st.st_ctime_ns) < old:
            rows.append((paths[i], *keys[i], sha))
    seen = set(paths)
    gone = [path for path in known if path not in seen and not os.path.lexists(path)]
    if rows or gone:
        _CACHE.save(rows, gone)
    return [sha for sha in shas if sha is not None]


def _key(st: os.stat_result) -> Key:
    inode = st.st_ino - (1 << 64) if st.st_ino >= 1 << 63 else st.st_ino  # sqlite is int64
    return st.st_size, st.st_mtime_ns, inode, st.st_ctime_ns


def _read_all(paths: list[bytes], size: int) -> list[str]:
    """Read and hash ``paths``, in threads when there is much to read (file reads and
    sha256 of large buffers release the GIL)."""
    workers = min(4, os.cpu_count() or 1)
    if size < PARALLEL_BYTES or workers < 2 or len(paths) < 2:
        return [_read_digest(path) for path in paths]
    parts = max(1, len(paths) // (workers * 4))
    chunks = [paths[i : i + parts] for i in range(0, len(paths), parts)]
    with ThreadPoolExecutor(workers, thread_name_prefix="fitdock-hash") as pool:
        done = pool.map(lambda chunk: [_read_digest(path) for path in chunk], chunks)
        return [sha for chunk in done for sha in chunk]


_buffers = threading.local()


def _read_digest(path: bytes) -> str:
    """The sha256 hex of a file's bytes: the one place that reads them."""
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while count := os.readv(fd, [buffer]):
            digest.update(view[:count])
    finally:
        os.close(fd)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The stat cache
# ---------------------------------------------------------------------------------------------
class _StatCache:
    """One connection per process (and home), shared by its threads under a lock. Every
    failure is a miss or a lost write, never an error for the caller."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.con: sqlite3.Connection | None = None
        self.owner: tuple[int, Path] | None = None

    def load(self, top: bytes, tree: bool) -> dict[bytes, tuple[Key, str]]:
        """The rows of every path below ``top`` (``tree``), else of ``top`` alone."""
        base = top.rstrip(b"/") + b"/"
        args: tuple[bytes, ...] = (base, base[:-1] + b"0") if tree else (top,)  # "0" > "/"
        sql = "path >= ? AND path < ?" if tree else "path = ?"

        def query(con: sqlite3.Connection) -> dict[bytes, tuple[Key, str]]:
            found = con.execute(
                f"SELECT path, size, mtime_ns, inode, ctime_ns, sha256 FROM hashes WHERE {sql}",
                args,
            ).fetchall()
            return {row[0]: ((row[1], row[2], row[3], row[4]), row[5]) for row in found}

        return self._use(query) or {}

    def save(self, rows: list[tuple[bytes, int, int, int, int, str]], gone: list[bytes]) -> None:
        def write(con: sqlite3.Connection) -> None:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?)", rows)
                con.executemany("DELETE FROM hashes WHERE path = ?", [(path,) for path in gone])
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

        self._use(write)

    def _use(self, action: Callable[[sqlite3.Connection], T]) -> T | None:
        path = fitdock_home() / CACHE / HASHES
        with self.lock:
            try:
                if self.con is None or self.owner != (os.getpid(), path):
                    if self.con is not None and self.owner and self.owner[0] == os.getpid():
                        self.con.close()  # another home (one inherited through fork is left)
                    self.con = None
                    self.con = _open(path)
                    self.owner = (os.getpid(), path)
                return action(self.con)
            except (sqlite3.Error, OSError) as exc:
                if _corrupt(exc):
                    _move_aside(path)
                if not _busy(exc) and self.con is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self.con.close()
                    self.con = None
                return None


def _open(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=BUSY_S, isolation_level=None, check_same_thread=False)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute(SCHEMA)
    except BaseException:
        con.close()
        raise
    return con


def _corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc)
    return isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text
    )


def _busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _move_aside(path: Path) -> None:
    """Keep a corrupt cache for a post-mortem (``hashes.sqlite.corrupt``); the next use
    starts a fresh one."""
    with contextlib.suppress(OSError):
        os.replace(path, path.with_name(path.name + ".corrupt"))
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.unlink(path.with_name(path.name + suffix))


_CACHE = _StatCache()
