"""Shared snapshots: one stored copy per source content, and an overlay per run on it.

A fit of a large source directory would copy it whole every time (10k files, 200 MB: 2.7 s
on ext4). Where it pays and works, the copy is made once, into the store:
``$FITDOCK_HOME/cache/snapshots/<key>/tree``, where ``<key>`` is the source's content hash
as the snapshot sees it (``contenthash.hash_found`` over the very files ``scan`` found: the
stat cache makes re-keying an unchanged tree cheap). Each run then gets an overlay mount
on ``<run>/snapshot`` (``runs/overlay.py``) whose lower layer is that tree: the job reads
the stored files and its writes land in its own upper layer, so nothing a script does to
its snapshot, as root included, reaches the store, the source or another run. (Hard links
would share inodes, which root can write through; see ``runs/snapshot.py``.)

The store is trusted only as far as it checks out. A tree is made in a temporary folder
beside its place, under a lock per key (concurrent fits of one content make it once),
stored only if the source still hashes the same after the copy, and renamed into place
with ``manifest.json``: the stats of everything in it (size, mode, mtime, ctime). A tree
whose files no longer match its manifest (someone wrote into the store) is set aside and
made again, never reused.

When: ``should_share`` decides (a pure function). Only a privileged process can mount,
and only a target whose ranks see this machine's mounts (``Target.ranks_see_local_mounts``:
the local target; docker, hosts and slurm see the run folder from another mount namespace
or machine and keep copies), and only for trees big enough that a mount beats a copy
(``MIN_FILES`` or ``MIN_BYTES``). ``FITDOCK_SNAPSHOT=copy`` turns sharing off,
``FITDOCK_SNAPSHOT=share`` uses it whatever the size. A mount the kernel refuses falls back
to a copy, and the record says why (``SourceInfo.share_error``); later fits of the process
on that filesystem copy at once (``_REFUSED``).

The end: ``release`` (the supervisor, before the record turns terminal) unmounts the
overlay and flattens it into a plain folder that links into the store for what the run
did not change. ``fitdock runs gc`` releases the overlays of runs whose supervisor died
(``release_orphans``) and removes store trees that no run references (``collect``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from fitdock.errors import SnapshotError
from fitdock.jobside.common import remove_tree
from fitdock.runs import overlay
from fitdock.runs.contenthash import hash_found
from fitdock.runs.layout import (
    CACHE,
    RECORD,
    SNAPSHOT_LAYERS,
    SNAPSHOTS,
    STORE_MANIFEST,
    STORE_TREE,
    RunPaths,
)
from fitdock.runs.snapshot import Found, SnapshotSummary, check_limits, place, scan
from fitdock.runs.store import SupervisorLock
from fitdock.shared import fitdock_home, write_json_atomic

MODE_VARIABLE = "FITDOCK_SNAPSHOT"
# Below both, a copy costs about what keying and mounting do (bench/bench_pipelines.py (n)).
MIN_FILES = 500
MIN_BYTES = 64 * 1024 * 1024
CAP_SYS_ADMIN = 21


class Mode(str, enum.Enum):
    """``FITDOCK_SNAPSHOT``: share where it pays (unset), never, or whatever the size."""

    AUTO = "auto"
    COPY = "copy"
    SHARE = "share"


def mode() -> Mode:
    value = os.environ.get(MODE_VARIABLE, "").strip().lower() or Mode.AUTO.value
    try:
        return Mode(value)
    except ValueError:
        raise SnapshotError(
            f"{MODE_VARIABLE}={value!r}: use copy (no shared snapshots) or share (whatever "
            "the size), or leave it unset"
        ) from None


def should_share(
    chosen: Mode, ranks_see_local_mounts: bool, privileged: bool, files: int, size: int
) -> bool:
    """Whether a snapshot is placed as an overlay on a store tree."""
    if chosen is Mode.COPY or not ranks_see_local_mounts or not privileged:
        return False
    return chosen is Mode.SHARE or files >= MIN_FILES or size >= MIN_BYTES


def privileged() -> bool:
    """Whether this process may mount: root, or ``CAP_SYS_ADMIN`` in its capabilities."""
    if os.geteuid() == 0:
        return True
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


def store_root() -> Path:
    return Path(os.path.abspath(fitdock_home())) / CACHE / SNAPSHOTS


# ---------------------------------------------------------------------------------------------
# Placing a run's snapshot
# ---------------------------------------------------------------------------------------------
def place_snapshot(
    source: Path, run: RunPaths, max_size_mb: float, max_files: int, *, local_mounts: bool
) -> SnapshotSummary:
    """Snapshot ``source`` into ``run``: shared where ``should_share`` says so and the
    kernel agrees, else copied (or cloned) as ``snapshot.snapshot`` does."""
    files = scan(source)
    check_limits(source, files, max_size_mb, max_files)
    size = sum(st.st_size for _, st in files)
    if not should_share(mode(), local_mounts, privileged(), len(files), size):
        return place(source, run.snapshot, files)
    device = os.stat(run.path).st_dev
    refused = _REFUSED.get(device)
    if refused is None:
        try:
            return _share(source, run, files, size)
        except OSError as exc:  # refused by the kernel, a path that cannot be an option, ...
            _undo(run)
            refused = f"{exc.strerror or exc}: {exc.filename}"
            if isinstance(exc, overlay.MountRefused):  # so not again, on this filesystem
                _REFUSED[device] = f"{refused} (refused before, in this process)"
    summary = place(source, run.snapshot, files)
    return dataclasses.replace(summary, share_error=refused)


# The filesystems (by device) on which the kernel refused an overlay's upper layer: later
# fits in this process copy at once, without keying the tree or storing it first.
_REFUSED: dict[int, str] = {}


class _SourceChanged(OSError):
    """The source changed while the store's copy was made: it is not stored."""


def _share(source: Path, run: RunPaths, files: Found, size: int) -> SnapshotSummary:
    key = hash_found(source, files).digest
    with key_lock(key) as _:
        tree = _ensure_tree(source, files, key)
        layers = Path(os.path.abspath(run.path / SNAPSHOT_LAYERS))
        os.makedirs(run.snapshot_upper)
        os.makedirs(run.snapshot_work)
        os.symlink(os.path.relpath(tree, layers), layers / overlay.LOWER)
        run.snapshot.mkdir()
        overlay.mount(tree, run.snapshot_upper, run.snapshot_work, run.snapshot)
    return SnapshotSummary(files=len(files), bytes=size, shared=key)


def _undo(run: RunPaths) -> None:
    """Leave the run as before a failed share: no mount, no layers, no snapshot folder."""
    unmount_run(run)
    with contextlib.suppress(FileNotFoundError):
        remove_tree(run.path / SNAPSHOT_LAYERS)
    with contextlib.suppress(FileNotFoundError, OSError):
        run.snapshot.rmdir()


def _ensure_tree(source: Path, files: Found, key: str) -> Path:
    """The store's tree of ``key``, made now unless an intact one is there (under the key's
    lock)."""
    entry = store_root() / key
    if entry.is_dir():
        if _intact(entry):
            return entry / STORE_TREE
        os.rename(entry, entry.with_name(f"{key}.stale-{secrets.token_hex(4)}"))
    temporary = entry.with_name(f"{key}.tmp-{secrets.token_hex(4)}")
    try:
        place(source, temporary / STORE_TREE, files)
        if hash_found(source, scan(source)).digest != key:
            raise _SourceChanged(0, "the source changed while it was stored", str(source))
        write_json_atomic(temporary / STORE_MANIFEST, _stats(temporary / STORE_TREE))
        os.rename(temporary, entry)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(temporary)
        raise
    return entry / STORE_TREE


def _stats(tree: Path) -> list[list[object]]:
    """Every entry below ``tree``: [path, mode, size, mtime_ns, ctime_ns], sorted."""
    found: list[list[object]] = []

    def walk(folder: str, rel: str) -> None:
        with os.scandir(folder) as listing:
            for entry in listing:
                st = entry.stat(follow_symlinks=False)
                path = rel + entry.name
                found.append([path, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, path + "/")

    walk(os.fspath(tree), "")
    return sorted(found)


def _intact(entry: Path) -> bool:
    """Whether the tree still matches its manifest: same entries, sizes, modes, times."""
    try:
        made = json.loads((entry / STORE_MANIFEST).read_text())
        return bool(made == _stats(entry / STORE_TREE))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def key_lock(key: str, blocking: bool = True) -> Iterator[bool]:
    """Hold ``<key>.lock`` in the store (an ``flock``); yields False when ``blocking`` is
    off and another process holds it. A lock file removed (by gc) while waiting for it is
    opened again."""
    path = store_root() / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# The end of a run, and gc
# ---------------------------------------------------------------------------------------------
def release(run: RunPaths) -> bool:
    """Unmount the run's overlay, if any, and flatten it into a plain ``snapshot/``;
    whether there was one. Safe to call again after an interruption."""
    layers = run.path / SNAPSHOT_LAYERS
    if not layers.exists():
        return False
    unmount_run(run)
    overlay.flatten(layers, run.snapshot)
    return True


def unmount_run(run: RunPaths) -> None:
    if overlay.mounted_at(run.snapshot):
        overlay.unmount(run.snapshot)


def release_orphans(runs_root: Path, dry_run: bool = False) -> list[Path]:
    """The snapshots of runs whose supervisor is gone but whose overlay was never released
    (a supervisor killed by SIGKILL), released now unless ``dry_run``."""
    found = []
    folders = sorted(runs_root.glob(f"*/{SNAPSHOT_LAYERS}")) if runs_root.is_dir() else []
    for layers in folders:
        run = RunPaths(layers.parent)
        with SupervisorLock(run.lock_path, blocking=False) as held:
            if held:
                found.append(run.snapshot)
                if not dry_run:
                    release(run)
    return found


def collect(runs_root: Path, dry_run: bool = False) -> list[Path]:
    """What the store holds that nothing uses, removed unless ``dry_run``: trees no run
    references (its record's ``source.shared``, its layers, a mount), trees set aside as
    tampered that no mount can use, and the leftovers of a fit killed while storing."""
    root = store_root()
    if not root.is_dir():
        return []
    found = []
    referenced = _referenced(runs_root)  # a run made later holds a mount before its record
    for path in sorted(root.iterdir()):
        key, _, kind = path.name.partition(".")
        if kind == "lock" or not path.is_dir():
            continue
        with key_lock(key, blocking=False) as held:
            if held and not _used(key, kind, referenced):
                found.append(path)
                if not dry_run:
                    remove_tree(path)
                    if not (root / key).exists():
                        (root / f"{key}.lock").unlink(missing_ok=True)
    return found


def _used(key: str, kind: str, referenced: set[str]) -> bool:
    """Whether a store entry of ``key`` may still be read (asked under the key's lock, so
    that no fit is between making sure of the tree and mounting it)."""
    if kind.startswith("tmp-"):
        return False  # its maker held the lock until it was renamed into place
    mounted = any(f"/{key}/" in mount.lowerdir for mount in overlay.overlay_mounts())
    if kind.startswith("stale-") or mounted:
        return mounted
    return key in referenced


def _referenced(runs_root: Path) -> set[str]:
    """The store keys that runs use: in their records, or in layers not yet flattened."""
    keys: set[str] = set()
    for folder in runs_root.iterdir() if runs_root.is_dir() else ():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            key = json.loads((folder / RECORD).read_text())["source"].get("shared")
            if isinstance(key, str):
                keys.add(key)
        with contextlib.suppress(OSError):
            keys.add(Path(os.readlink(folder / SNAPSHOT_LAYERS / overlay.LOWER)).parent.name)
    return keys
