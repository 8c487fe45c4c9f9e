"""Snapshot a source directory into a run, honoring ``.gitignore``, ``.amlignore`` and
``.fitdockignore``.

Ignore files are read in every folder. In a folder, ``.amlignore`` lines come after
``.gitignore`` lines and ``.fitdockignore`` lines last, so ``!data/small.csv`` in a later
one brings back a file an earlier one ignores. (Azure ML reads ``.amlignore`` *instead of*
``.gitignore`` when a folder has both; fitdock honours both.) ``.git/``, ``__pycache__/``
and ``.fitdock/`` are never copied, nor fitdock's home folder where it lies inside.
``runs/contenthash.py`` hashes exactly these files.

How files are placed, and why
-----------------------------
Nothing a script does to its snapshot (write in place, truncate, chmod, delete, as root
too) may reach the source, another run's snapshot or anything fitdock keeps. That rules
out hard links to shared files: a link shares the inode, so a write through one name is
a write through every name, and root ignores the read-only bits that would stop it.

* **Shared** (``runs/shared_snapshot.py``) where a mount is possible and pays: a
  privileged process, a target whose ranks see this machine's mounts (local), a tree of
  ``MIN_FILES`` files or ``MIN_BYTES`` and more. The files are placed once per content, by
  this module, into ``$FITDOCK_HOME/cache/snapshots/<key>/tree``; each run's snapshot is an
  overlay mount on that tree, whose writes go to a layer of the run's own (the store is
  never written through the mount, as root included), flattened into a plain folder when
  the run ends. On ext4 the second fit of an unchanged 10k-file, 200 MB tree costs 0.2 s
  (keying through the stat cache, checking the stored tree, one mount) instead of a 2.7 s
  copy. Everywhere else (docker, hosts, slurm; a refused mount; a small tree) the files are
  placed into the run itself, as follows.
* **Reflinks** (``FICLONE``) where the filesystem has them: btrfs, XFS made with
  ``reflink=1`` (the default since xfsprogs 5.1), bcachefs, and others. A clone shares the
  source's blocks copy-on-write: no data is copied, so a snapshot costs file creation
  alone, whatever the bytes (10k files, 200 MB on XFS: 0.18 s, first time and every time);
  a write to the clone gets blocks of its own and never reaches the source.
* **A copy** everywhere else (ext4, tmpfs, a source on another filesystem than the run
  folder): ``os.copy_file_range``, which copies inside the kernel (and lets NFS copy on the
  server), from the one ``stat`` the walk made; read/write where it is refused. It runs
  at the speed of ``cp -r`` (10k files, 200 MB on tmpfs: 0.17 s against 0.14 s; on a disk
  both wait on the disk), the second time as the first.

Each file keeps its mode and times (like ``shutil.copy2``, without extended attributes).
Symbolic links to files are copied as files; links to folders and special files are left
out, as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pathspec

from fitdock._units import human_size
from fitdock.errors import SnapshotError
from fitdock.shared import fitdock_home, pause_at, storage_error

IGNORE_FILES = (".gitignore", ".amlignore", ".fitdockignore")
ALWAYS_IGNORED = {".git", "__pycache__", ".fitdock"}
FICLONE = getattr(fcntl, "FICLONE", 0x40049409)  # Linux's ioctl; fcntl names it from 3.12
# Errors that mean "this way of placing bytes does not work here", not "this file is bad".
UNSUPPORTED = {errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOTTY}
UNSUPPORTED |= {errno.ENOSYS, errno.EBADF, errno.EPERM}
CHUNK = 1 << 20
READ = os.O_RDONLY | os.O_CLOEXEC
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

Found = list[tuple[str, os.stat_result]]  # (path relative to the root, posix; its stat)


@dataclass(frozen=True)
class SnapshotSummary:
    files: int
    bytes: int
    cloned: int = 0  # files placed by reflink (no bytes copied)
    shared: str | None = None  # the store key, when an overlay on a shared tree holds them
    share_error: str | None = None  # why sharing was tried but a copy made instead

    def __str__(self) -> str:
        shared = " (shared)" if self.shared else ""
        return f"{self.files} files, {human_size(self.bytes)}{shared}"


# ---------------------------------------------------------------------------------------------
# Which files
# ---------------------------------------------------------------------------------------------
def _spec_for(folder: str) -> pathspec.PathSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        try:
            with open(os.path.join(folder, name), errors="replace") as handle:
                lines += handle.read().splitlines()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def _ignored(specs: list[tuple[str, pathspec.PathSpec]], rel: str, is_dir: bool) -> bool:
    """As git decides: the innermost ignore file with a matching line wins, so a ``!`` line
    in a subfolder brings back a file that a folder above ignores. ``rel`` is relative to
    the root; each spec's base is a prefix of it (``""`` or ``"sub/"``)."""
    for base, rules in reversed(specs):
        verdict = rules.check_file(rel[len(base) :] + ("/" if is_dir else "")).include
        if verdict is not None:
            return verdict
    return False


def scan(root: Path | str, *, ignore_files: bool = True) -> Found:
    """The files below ``root`` with one ``stat`` each, in a stable order (each folder's
    files by name, then its folders by name). With ``ignore_files`` the ignore files'
    rules apply; the always-ignored folders are left out either way. A folder that cannot
    be listed is skipped, as ``os.walk`` does."""
    found: Found = []
    top = os.fspath(root)
    home = os.path.abspath(fitdock_home())  # never fitdock's own files, wherever they are
    inside = os.path.relpath(home, os.path.abspath(top))
    skip = "" if inside.startswith("..") or inside == "." else inside + "/"
    _scan(top, "", [], ignore_files, found, skip)
    return found


def _scan(
    top: str,
    rel: str,
    specs: list[tuple[str, pathspec.PathSpec]],
    use: bool,
    found: Found,
    skip: str = "",
) -> None:
    here = os.path.join(top, rel) if rel else top
    try:
        with os.scandir(here) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError:
        return
    spec = _spec_for(here) if use else None
    if spec is not None:
        specs = [*specs, (rel, spec)]
    folders = []
    for entry in entries:
        path = rel + entry.name
        if entry.is_dir():
            own = skip and path + "/" == skip
            if not entry.is_symlink() and entry.name not in ALWAYS_IGNORED and not own:
                folders.append(path)
        elif entry.is_file() and not (specs and _ignored(specs, path, False)):
            try:
                found.append((path, entry.stat()))
            except FileNotFoundError:  # removed (or a link broken) since the listing
                continue
    for path in folders:
        if not (specs and _ignored(specs, path, True)):
            _scan(top, path + "/", specs, use, found, skip)


def collect(source: Path) -> list[tuple[Path, int]]:
    """Files to snapshot, as (path relative to source, size)."""
    return [(Path(rel), st.st_size) for rel, st in scan(source)]


# ---------------------------------------------------------------------------------------------
# Placing them
# ---------------------------------------------------------------------------------------------
def snapshot(source: Path, target: Path, max_size_mb: float, max_files: int) -> SnapshotSummary:
    """Copy ``source`` into ``target`` (which must not exist), checking the limits first;
    by reflink where the filesystem can, else by copy."""
    files = scan(source)
    check_limits(source, files, max_size_mb, max_files)
    return place(source, target, files)


def check_limits(source: Path, files: Found, max_size_mb: float, max_files: int) -> None:
    """``SnapshotError`` when the files found are too many or too large, naming the limit."""
    total = sum(st.st_size for _, st in files)
    if len(files) > max_files:
        raise SnapshotError(
            f"source_directory {source} holds {len(files)} files, over the limit of {max_files}: "
            "list data and build folders in a .fitdockignore (or .gitignore), or raise "
            "max_snapshot_files"
        )
    if total > max_size_mb * 1e6:
        raise SnapshotError(
            f"source_directory {source} holds {total / 1e6:.1f} MB, over the limit of "
            f"{max_size_mb:g} MB: list large files in a .fitdockignore (or .gitignore), pass data "
            "as inputs, or raise max_snapshot_size_mb"
        )


def place(source: Path, target: Path, files: Found) -> SnapshotSummary:
    """Copy (or clone) the files ``scan`` found below ``source`` into ``target``, which
    must not exist."""
    top, into = os.fspath(source) + "/", os.fspath(target) + "/"
    placer = _Placer()
    try:
        target.mkdir(parents=True)
        for folder in sorted({rel.rpartition("/")[0] for rel, _ in files} - {""}):
            os.makedirs(into + folder, exist_ok=True)
        pause_at("snapshot")  # a test hook (fitdock.shared.pause_at); inert otherwise
        for rel, st in files:
            placer.place(top + rel, into + rel, st)
    except _Unreadable as exc:
        raise SnapshotError(
            f"cannot read {exc.filename} in source_directory {source}: {exc.strerror}; list it "
            "in a .fitdockignore (or .gitignore), or make it readable"
        ) from exc
    except OSError as exc:
        raise storage_error(exc, exc.filename or target) from exc
    total = sum(st.st_size for _, st in files)
    return SnapshotSummary(files=len(files), bytes=total, cloned=placer.cloned)


class _Unreadable(OSError):
    """A source file that could not be opened (raised with the source's errno and path)."""


class _Placer:
    """Places files one after another (threads were slower on tmpfs and XFS): clone while
    the filesystem clones, else copy."""

    def __init__(self) -> None:
        self.clone: bool | None = None if sys.platform == "linux" else False  # None: untried
        self.copy_range = hasattr(os, "copy_file_range")
        self.cloned = 0
        self.umask = _umask()

    def place(self, src: str, dst: str, st: os.stat_result) -> None:
        mode = stat.S_IMODE(st.st_mode)
        try:
            fin = os.open(src, READ)
        except OSError as exc:  # as root too: a write-only sysfs file, one removed since
            raise _Unreadable(exc.errno, exc.strerror, src) from exc
        try:
            fout = os.open(dst, CREATE, mode)
            try:
                if st.st_size and not (self.clone is not False and self._clone(fin, fout)):
                    self._copy(fin, fout, st.st_size)
                if mode & self.umask:
                    os.fchmod(fout, mode)
                os.utime(fout, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fout)
        finally:
            os.close(fin)

    def _clone(self, fin: int, fout: int) -> bool:
        try:
            fcntl.ioctl(fout, FICLONE, fin)
        except OSError as exc:
            if exc.errno not in UNSUPPORTED:
                raise
            if self.clone is None:  # never worked here: stop trying
                self.clone = False
            return False
        self.clone = True
        self.cloned += 1
        return True

    def _copy(self, fin: int, fout: int, size: int) -> None:
        done = 0
        if self.copy_range:
            try:
                while done < size:
                    step = os.copy_file_range(fin, fout, size - done)
                    if step == 0:
                        return
                    done += step
                return
            except OSError as exc:
                if exc.errno not in UNSUPPORTED or done:
                    raise
                self.copy_range = False
        while chunk := os.read(fin, CHUNK):
            os.write(fout, chunk)


def _umask() -> int:
    """The process's umask, read without changing it (``/proc``); all bits if unknown, so
    that every file gets an explicit ``fchmod``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o7777
