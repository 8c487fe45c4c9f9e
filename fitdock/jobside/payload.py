"""Signed payload files: the pickles that cross between the submitting side and a job.

Stdlib only, imported as ``fitdock.jobside.payload`` by the submitting side and as
``payload`` by a job-side runner from the copy beside it. It frames, signs and verifies
bytes; it never unpickles (the caller does, and only after ``read`` returned).

A payload file::

    fitdock-payload 1\\n                                   magic and format version
    {"chunk":8388608,"kind":"function","length":N,...}\\n  compact JSON header
    <64 hex digits>\\n                                     HMAC-SHA256 signature
    <N body bytes>

The header holds ``kind`` ("function", "arguments", "results"...), ``python`` (the
writer's major.minor), ``length`` (body bytes), ``chunk`` (the chunk size used to hash
the body) and the caller's ``meta`` fields (str or int). The signature is
HMAC-SHA256(key, magic + header line + sha256(chunk 0) + sha256(chunk 1) + ...): the
chunks are hashed in parallel threads, and the kind, length and chunk size are signed.
``write`` replaces the file whole but does not fsync: a file cut short by a crash is refused.

The key (``<home>/secret.key``, 64 hex digits) is per user: the file must be a regular
file owned by the user, mode 0600, in a folder with no group or other permissions.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import stat
import sys
import threading
from pathlib import Path

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: job-side modules import little
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

MAGIC = b"fitdock-payload 1\n"
CHUNK = 8 * 1024 * 1024
MIN_CHUNK, MAX_CHUNK = 64 * 1024, 1024 * 1024 * 1024  # what a reader accepts
HEAD_MAX = 64 * 1024  # magic, header and signature lines together
RESERVED = frozenset({"kind", "python", "length", "chunk"})
HEX = frozenset(b"0123456789abcdefABCDEF")
SIG_LEN = 64  # hex digits of an HMAC-SHA256
WORKERS = max(2, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))


class PayloadError(Exception):
    """A key or payload file refused; the message names the file and what to do."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


def key_path(home: Path) -> Path:
    return home / "secret.key"


def load_key(path: Path, *, create: bool = False, folder: bool = True) -> bytes:
    """The 32-byte key at ``path``, created first (0600, folder 0700) if ``create``.
    ``folder=False`` on the job side, where the key may be one file bound into a
    container whose folders are the engine's."""
    if create and not os.path.lexists(path):
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path.parent, 0o700)
            _create_key(path)
        except OSError as exc:
            raise PayloadError(path, f"cannot create the key file: {exc}") from exc
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        problem = (
            "no key file: the submitting side makes it; a job elsewhere needs a copy, mode 600"
        )
        raise PayloadError(path, problem) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise PayloadError(path, f"the key file is {kind}: put the key file itself there")
    if info.st_uid != os.getuid():
        owner = f"uid {info.st_uid}, not by you (uid {os.getuid()})"
        raise PayloadError(path, f"the key file is owned by {owner}: rm it to make a new key")
    if info.st_mode & 0o077:
        mode = oct(stat.S_IMODE(info.st_mode))[2:]
        raise PayloadError(path, f"others may read the key (mode {mode}): run `chmod 600 {path}`")
    if folder and os.stat(path.parent).st_mode & 0o077:
        raise PayloadError(path, f"its folder is open to others: run `chmod 700 {path.parent}`")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            same, data = os.path.samestat(info, os.fstat(fd)), os.read(fd, 128)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PayloadError(path, f"cannot read the key file: {exc.strerror}") from exc
    if not same:
        raise PayloadError(path, "the key file was replaced while it was read")
    text = data[:-1] if data.endswith(b"\n") else data
    if len(text) != 2 * 32 or not HEX.issuperset(text):
        raise PayloadError(path, f"not a key (64 hex digits): rm {path} to make a new key")
    return bytes.fromhex(text.decode())


def _create_key(path: Path) -> None:
    """Write a new key under a temporary name, then link it into place: a concurrent creator
    sees no key or a whole one, and the first link wins (the others read its key)."""
    tmp, fd = _temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32).hex().encode() + b"\n")  # = secrets.token_bytes
            os.fsync(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _temp(path: Path) -> tuple[Path, int]:
    """A new file beside ``path``, mode 0600, open for writing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    return tmp, os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)


def write(
    path: Path,
    kind: str,
    body: bytes | memoryview,
    key: bytes,
    meta: Mapping[str, str | int] | None = None,
) -> None:
    """Sign ``body`` and write it at ``path``, atomically (temp file, then replace), 0600."""
    view = memoryview(body).cast("B")
    header: dict[str, object] = dict(meta or {})
    bad = sorted(k for k, v in header.items() if k in RESERVED or type(v) not in (str, int))
    if bad:
        raise PayloadError(path, f"meta fields {bad} are reserved or not str -> str/int")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    header.update(kind=kind, python=version, length=len(view), chunk=CHUNK)
    head = MAGIC + json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    start = len(head) + SIG_LEN + 1
    tmp, fd = _temp(path)
    try:
        try:
            _pwrite(fd, head + b"0" * SIG_LEN + b"\n", 0)  # the signature goes in last
            digests = _digests(view, CHUNK, lambda: _pwrite(fd, view, start))
            _pwrite(fd, _sign(key, head, digests).encode(), len(head))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read(path: Path, kind: str, key: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and body of the payload at ``path``, once its kind, length and
    signature are checked. Raises PayloadError on any doubt."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise PayloadError(path, f"cannot open the payload: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PayloadError(path, "not a regular file")
        size = info.st_size
        data = os.pread(fd, HEAD_MAX, 0)
        head, header = _parse_head(path, data, kind)
        sig = data[len(head) : len(head) + SIG_LEN + 1]
        if len(sig) != SIG_LEN + 1 or sig[-1:] != b"\n" or not HEX.issuperset(sig[:-1]):
            raise PayloadError(path, "the signature line (line 3) is missing or malformed")
        start, length = len(head) + len(sig), header["length"]
        if size < start + length:
            held = max(0, size - start)
            raise PayloadError(path, f"truncated: {held} of {length} body bytes are there")
        if size > start + length:
            raise PayloadError(path, f"has trailing bytes: {size - start - length} after the body")
        body = os.pread(fd, length, start)
        while len(body) < length:  # one read returns at most 2 GiB
            more = os.pread(fd, length - len(body), start + len(body))
            if not more:
                raise PayloadError(path, "truncated while it was read")
            body += more
    finally:
        os.close(fd)
    digests = _digests(memoryview(body), header["chunk"])
    if not hmac.compare_digest(sig[:-1], _sign(key, head, digests).encode()):
        problem = "signature does not match: the file was changed or signed with another key"
        raise PayloadError(path, problem)
    return header, body


def _parse_head(path: Path, data: bytes, kind: str) -> tuple[bytes, dict[str, Any]]:
    """The magic and header lines (as bytes, for the MAC) and the header, checked."""
    if not data.startswith(MAGIC):
        first = data.split(b"\n", 1)[0][:40]
        raise PayloadError(path, f"not a fitdock payload (version 1): first line {first!r}")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise PayloadError(path, "the header line (line 2) is missing or too long")
    try:
        header = json.loads(data[len(MAGIC) : end])
    except ValueError as exc:
        raise PayloadError(path, f"the header (line 2) is not JSON: {exc}") from None
    if not isinstance(header, dict) or not all(
        type(header.get(k)) is t for k, t in (("kind", str), ("length", int), ("chunk", int))
    ):
        raise PayloadError(path, "the header (line 2) lacks kind, length or chunk")
    if header["kind"] != kind:
        raise PayloadError(path, f"holds a {header['kind']!r} payload, not the {kind!r} expected")
    if header["length"] < 0 or not MIN_CHUNK <= header["chunk"] <= MAX_CHUNK:
        raise PayloadError(path, "the header (line 2) has a bad length or chunk size")
    return data[: end + 1], header


def _sign(key: bytes, head: bytes, digests: list[bytes]) -> str:
    return hmac.new(key, head + b"".join(digests), hashlib.sha256).hexdigest()


def _digests(view: memoryview, chunk: int, io: Callable[[], None] | None = None) -> list[bytes]:
    """The sha256 of each chunk, hashed by threads (hashlib releases the GIL) while this one
    first runs ``io`` (writing the body). Not concurrent.futures: it imports logging."""
    parts = [view[offset : offset + chunk] for offset in range(0, len(view), chunk)]
    out, todo, lock = [b""] * len(parts), iter(range(len(parts))), threading.Lock()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            while not errors:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                out[i] = hashlib.sha256(parts[i]).digest()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(min(WORKERS, len(parts)) - 1)]
    for thread in threads:
        thread.start()
    try:
        if io is not None:
            io()
        run()
    except BaseException as exc:
        errors.append(exc)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return out


def _pwrite(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done
