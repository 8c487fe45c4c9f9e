"""Overlay mounts of shared snapshots, and the plain folder each becomes when its run ends.

A shared snapshot (``runs/shared_snapshot.py``) is an overlayfs mount on ``<run>/snapshot``:
the lower layer is a store tree, never written through the mount; what the job writes
lands in ``<run>/.snapshot/upper`` (a file changed is first copied up whole; a file
deleted leaves a *whiteout*, a character device 0/0; a folder deleted and made again is
*opaque*: the xattr ``trusted.overlay.opaque=y`` hides the lower folder's entries). It is
mounted with ``redirect_dir=off,metacopy=off``, so that the upper layer holds whole files
and plain folders only: a lower folder renamed through the mount is refused (``EXDEV``,
which ``mv`` and ``shutil.move`` answer by copying), never recorded as a redirect into
the store.

The mount must not outlive its run: no reboot keeps it, and no other mount namespace
sees it. ``release`` unmounts it (lazily when a straggler still has its working folder
there: the launcher of a job whose ranks have all exited) and *flattens* the layers into
a plain folder: the upper layer becomes ``snapshot/``, and each entry of the lower tree
that the upper layer lacks (neither changed, nor deleted, nor hidden by an opaque
folder) becomes a relative symbolic link into the store tree. Only folders present in
both layers are walked, so the cost follows what the run changed, not the tree's size.

``flatten`` survives being killed and run again: links are made first (an existing one
is kept), then a marker file says so, then whiteouts and opaque marks are removed, and
last the upper folder is renamed onto the empty mount point in one step.

Mounting is the ``mount(2)`` system call through ctypes: no command line, no shell.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from fitdock.jobside.common import remove_tree

OPAQUE = "trusted.overlay.opaque"
BAD_CHARS = frozenset(",:\\=")  # these separate overlay options: such a path cannot be one
MNT_DETACH = 2
LINKED = "linked"  # <run>/.snapshot/linked: the link pass of a flatten is done
LOWER = "lower"  # <run>/.snapshot/lower: a link to the store tree the overlay is made on
STRICT = ",redirect_dir=off,metacopy=off"


class MountRefused(OSError):
    """The kernel refused the mount itself (no privilege; an upper layer on a filesystem
    that cannot be one, e.g. NFS or an overlay): it will refuse the same mount again."""


@dataclass(frozen=True)
class OverlayMount:
    point: str  # where it is mounted
    lowerdir: str  # the lowerdir option, as the kernel shows it


def option_safe(path: Path) -> bool:
    """Whether ``path`` can be written in the overlay's option string."""
    return not BAD_CHARS & set(os.fspath(path))


def mount(lower: Path, upper: Path, work: Path, point: Path) -> None:
    """Mount an overlay of ``lower`` and ``upper`` on ``point``; ``OSError`` with the
    kernel's errno when it refuses (EPERM without the privilege, EINVAL where the upper
    layer's filesystem cannot be one). A kernel that does not know ``redirect_dir`` or
    ``metacopy`` gets the options without them (its default is off for both)."""
    lower, upper, work, point = (Path(os.path.abspath(p)) for p in (lower, upper, work, point))
    for path in (lower, upper, work, point):
        if not option_safe(path):
            raise OSError(errno.EINVAL, "a path with , : \\ or = cannot be an overlay option", path)
    base = f"lowerdir={lower},upperdir={upper},workdir={work}"
    try:
        _mount(point, base + STRICT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        _mount(point, base)


def _mount(point: Path, options: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    data = os.fsencode(options)
    if libc.mount(b"overlay", os.fsencode(point), b"overlay", 0, data) != 0:
        code = ctypes.get_errno()
        raise MountRefused(code, os.strerror(code), os.fspath(point))


def unmount(point: Path) -> None:
    """Unmount ``point``; lazily (detached now, gone when its last user goes) when a
    process still uses it. Nothing mounted there is not an error."""
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.fsencode(point)
    for flags in (0, MNT_DETACH):
        if libc.umount2(target, flags) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EINVAL:  # not a mount point (any more)
            return
        if code != errno.EBUSY:
            raise OSError(code, os.strerror(code), os.fspath(point))


def overlay_mounts() -> list[OverlayMount]:
    """The overlay mounts this process sees (``/proc/self/mountinfo``)."""
    found = []
    try:
        with open("/proc/self/mountinfo", "rb") as info:
            lines = info.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields, _, tail = line.partition(b" - ")
        parts, after = fields.split(), tail.split()
        if len(parts) < 5 or len(after) < 3 or after[0] != b"overlay":
            continue
        options = dict(_option(item) for item in _unescape(after[2]).split(","))
        found.append(OverlayMount(_unescape(parts[4]), options.get("lowerdir", "")))
    return found


def mounted_at(point: Path) -> bool:
    """Whether an overlay is mounted on ``point``."""
    where = os.path.abspath(point)
    return any(mount.point == where for mount in overlay_mounts())


def _unescape(raw: bytes) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    text = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw)
    return os.fsdecode(text)


def _option(item: str) -> tuple[str, str]:
    name, _, value = item.partition("=")
    return name, value


# ---------------------------------------------------------------------------------------------
# Flattening
# ---------------------------------------------------------------------------------------------
def flatten(layers: Path, point: Path) -> None:
    """Turn an unmounted overlay's layers (``layers/upper``, with ``layers/lower`` linking
    to the lower tree) into a plain folder at ``point``, then remove ``layers``."""
    upper = layers / "upper"
    if upper.is_dir():
        lower = os.path.realpath(layers / LOWER)
        if not (layers / LINKED).exists():
            _link_missing(os.fspath(upper), lower, os.path.realpath(point))
            (layers / LINKED).touch()
        _clear_marks(os.fspath(upper))
        os.rename(upper, point)  # onto the empty mount point, in one step
    _remove(layers)


def _link_missing(upper: str, lower: str, point: str, rel: str = "") -> None:
    """Link every entry of ``lower/rel`` that ``upper/rel`` lacks; recurse into folders in
    both. Links are relative to where the folder will be (``point/rel``)."""
    here, below = os.path.join(upper, rel), os.path.join(lower, rel)
    try:
        with os.scandir(below) as listing:
            entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
    except (FileNotFoundError, NotADirectoryError):
        return
    back = os.path.relpath(below, os.path.join(point, rel))
    for name, is_dir in entries:
        mine = os.path.join(here, name)
        try:
            st = os.lstat(mine)
        except FileNotFoundError:
            os.symlink(os.path.join(back, name), mine)  # unchanged: the store's
            continue
        if is_dir and stat.S_ISDIR(st.st_mode) and not _opaque(mine):
            _link_missing(upper, lower, point, os.path.join(rel, name))


def _clear_marks(upper: str) -> None:
    """Remove whiteouts (deleted files: no link was made for them) and opaque marks from
    the upper layer's real folders (links into the store are not followed)."""
    for folder, dirs, files in os.walk(upper):
        for name in files + dirs:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if _whiteout(st):
                os.unlink(path)
            elif stat.S_ISDIR(st.st_mode) and _opaque(path):
                os.removexattr(path, OPAQUE, follow_symlinks=False)


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _remove(folder: Path) -> None:
    """Remove the layers' folder (the overlay's work folder holds a mode-000 folder)."""
    with contextlib.suppress(FileNotFoundError):
        remove_tree(folder)
