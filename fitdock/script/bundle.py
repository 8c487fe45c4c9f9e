"""The script bundle: a zip checked whole, then extracted to ``Script Bundle``.

:func:`check_bundle` refuses, before anything is written, an entry that would land
outside the folder (a ``..`` part, an absolute or drive path), a link, device, fifo or
socket, an encrypted entry, two entries that would be one file, more than
:data:`MAX_ENTRIES` entries, more than :data:`MAX_TOTAL_BYTES` uncompressed, or a
compression ratio over :data:`MAX_RATIO`. :func:`extract_bundle` then writes regular files
only, each checked against its declared size. Standard library only: the job side and the
submitting side both import it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path

from fitdock.errors import ScriptBundleError

BUNDLE_FOLDER = "Script Bundle"
MAX_ENTRIES = 10_000
MAX_TOTAL_BYTES = 1 << 30  # 1 GiB uncompressed, all entries together
MAX_RATIO = 200  # uncompressed / compressed, for the archive and for each entry
RATIO_FLOOR = 1 << 20  # the ratio is checked only above 1 MiB uncompressed
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_COMPRESSIONS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_SPECIAL = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a fifo",
    stat.S_IFSOCK: "a socket",
}


def check_bundle(zip_path: Path) -> list[zipfile.ZipInfo]:
    """The bundle's entries, once every check passes; :class:`ScriptBundleError` naming
    the first entry refused otherwise (or the file, when it is not a zip)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ScriptBundleError(
            f"the script bundle {zip_path.name!r} is not a readable zip archive ({exc}); "
            "pass a .zip file",
        ) from exc
    if len(infos) > MAX_ENTRIES:
        raise _refuse(
            infos[MAX_ENTRIES],
            f"the bundle has {len(infos):,} entries, more than {MAX_ENTRIES:,}; the first "
            "past the limit is",
        )
    files: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()
    for info in infos:
        parts = entry_parts(info)
        _check_entry(info, parts)
        if parts in files or (not info.is_dir() and parts in folders):
            raise _refuse(info, "two entries would be written to the same path:")
        if info.is_dir():
            folders.add(parts)
        else:
            files.add(parts)
        for depth in range(1, len(parts)):
            if parts[:depth] in files:
                raise _refuse(info, "an entry would go under a file of the bundle:")
            folders.add(parts[:depth])
    _check_sizes(infos)
    return infos


def entry_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path parts inside the folder (backslashes count as separators; empty
    and ``.`` parts are dropped)."""
    return tuple(p for p in info.filename.replace("\\", "/").split("/") if p not in ("", "."))


def _check_entry(info: zipfile.ZipInfo, parts: tuple[str, ...]) -> None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        raise _refuse(info, "an absolute path would be written outside the bundle folder:")
    if ".." in parts:
        raise _refuse(info, "a '..' part would be written outside the bundle folder:")
    if not parts and not info.is_dir():
        raise _refuse(info, "a file entry has no name:")
    kind = _SPECIAL.get(stat.S_IFMT(info.external_attr >> 16))
    if kind is not None:
        raise _refuse(info, f"only files and folders are extracted, not {kind}:")
    if info.flag_bits & 0x1:
        raise _refuse(info, "encrypted entries cannot be extracted:")
    if info.compress_type not in _COMPRESSIONS:
        raise _refuse(info, f"compression method {info.compress_type} is not supported:")


def _check_sizes(infos: list[zipfile.ZipInfo]) -> None:
    total = sum(info.file_size for info in infos)
    if total > MAX_TOTAL_BYTES:
        largest = max(infos, key=lambda info: info.file_size)
        raise _refuse(
            largest,
            f"the bundle declares {total:,} bytes uncompressed, more than "
            f"{MAX_TOTAL_BYTES:,}; the largest entry is",
        )
    for info in infos:
        if info.file_size > RATIO_FLOOR and _ratio(info.file_size, info.compress_size) > MAX_RATIO:
            raise _refuse(info, f"compressed more than {MAX_RATIO}:1 (a zip bomb?):")
    packed = sum(info.compress_size for info in infos)
    if total > RATIO_FLOOR and _ratio(total, packed) > MAX_RATIO:
        worst = max(infos, key=lambda info: _ratio(info.file_size, info.compress_size))
        raise _refuse(
            worst,
            f"the bundle is compressed more than {MAX_RATIO}:1 (a zip bomb?); the most "
            "compressed entry is",
        )


def _ratio(size: int, packed: int) -> float:
    return size / packed if packed else (float("inf") if size else 0.0)


def _refuse(info: zipfile.ZipInfo, why: str) -> ScriptBundleError:
    return ScriptBundleError(f"script bundle refused: {why} {info.filename!r}", entry=info.filename)


def extract_bundle(zip_path: Path, workdir: Path) -> Path:
    """Check the bundle, then extract it into ``workdir / "Script Bundle"`` (which must
    not exist yet) and return that folder, to put on ``sys.path``. Only regular files and
    folders are made; files are created exclusively, never through a link. An entry that
    does not decompress to its declared size and checksum stops the extraction, and the
    folder is removed."""
    infos = check_bundle(zip_path)
    target = workdir / BUNDLE_FOLDER
    workdir.mkdir(parents=True, exist_ok=True)
    target.mkdir()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in infos:
                dest = target.joinpath(*entry_parts(info))
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    _write_entry(archive, info, dest)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def _write_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    written = 0
    try:
        with archive.open(info) as source, os.fdopen(os.open(dest, flags, 0o644), "wb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise _refuse(info, f"decompresses to more than its {info.file_size:,} bytes:")
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise ScriptBundleError(
            f"script bundle refused: {info.filename!r} is damaged or its header lies ({exc})",
            entry=info.filename,
        ) from exc
    if written != info.file_size:
        raise _refuse(info, f"decompresses to {written:,} bytes, not its {info.file_size:,}:")
