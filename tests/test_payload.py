"""Signed payload files (fitdock/jobside/payload.py): the key file's checks, the format's
round trip, and every way a changed, cut, extended or foreign file is refused. Real files
in tmp_path; the concurrency tests race real threads and real ``python -I -S`` processes."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path

import pytest

from fitdock.jobside import payload
from fitdock.jobside.payload import PayloadError, key_path, load_key, read, write

BIG = 20 * 1024 * 1024 + 12345  # three chunks, the last one short
MISMATCH = "signature does not match: the file was changed or signed with another key"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def key(home: Path) -> bytes:
    return load_key(key_path(home), create=True)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def body_start(path: Path) -> int:
    data = path.read_bytes()
    return data.index(b"\n", data.index(b"\n", len(payload.MAGIC)) + 1) + 1


def refused(path: Path, kind: str, key: bytes) -> str:
    with pytest.raises(PayloadError) as caught:
        read(path, kind, key)
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")
    return str(caught.value)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------
def test_round_trip(home: Path, key: bytes) -> None:
    path = home / "f.payload"
    write(path, "function", b"\x80\x05hello", key, meta={"step": "train", "attempt": 2})
    header, body = read(path, "function", key)
    assert body == b"\x80\x05hello"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert header == {
        "kind": "function",
        "python": version,
        "length": 7,
        "chunk": payload.CHUNK,
        "step": "train",
        "attempt": 2,
    }
    lines = path.read_bytes().split(b"\n", 3)
    assert lines[0] + b"\n" == payload.MAGIC
    assert lines[1].startswith(b'{"attempt":2,"chunk":') and b" " not in lines[1]
    assert len(lines[2]) == 64 and lines[3] == b"\x80\x05hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in home.iterdir()) == ["f.payload", "secret.key"]  # no temp


def test_round_trip_memoryview_and_empty(home: Path, key: bytes) -> None:
    doubles = array("d", [1.5, -2.0, 3.25])
    write(home / "a.payload", "arguments", memoryview(doubles), key)
    assert read(home / "a.payload", "arguments", key)[1] == doubles.tobytes()
    write(home / "e.payload", "results", b"", key)
    header, body = read(home / "e.payload", "results", key)
    assert (header["length"], body) == (0, b"")


def test_big_body_over_several_chunks(home: Path, key: bytes) -> None:
    data = os.urandom(BIG)
    path = home / "big.payload"
    write(path, "arguments", data, key)
    header, body = read(path, "arguments", key)
    assert body == data and header["length"] == BIG and BIG // header["chunk"] == 2
    flip(path, body_start(path) + BIG - 1)  # the last byte of the short last chunk
    assert MISMATCH in refused(path, "arguments", key)


def test_write_replaces_whole_or_not_at_all(home: Path, key: bytes) -> None:
    path = home / "r.payload"
    write(path, "results", b"old", key)
    with pytest.raises(TypeError, match="key"):
        write(path, "results", b"new" * 1000, "not bytes", meta={})  # type: ignore[arg-type]
    assert read(path, "results", key)[1] == b"old"
    assert sorted(p.name for p in home.iterdir()) == ["r.payload", "secret.key"]


def test_write_refuses_reserved_or_odd_meta(home: Path, key: bytes) -> None:
    with pytest.raises(PayloadError, match=r"meta fields \['kind', 'ratio'\] are reserved"):
        write(home / "m.payload", "function", b"x", key, meta={"kind": "x", "ratio": 0.5})  # type: ignore[dict-item]
    assert not (home / "m.payload").exists()


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["first", "middle", "chunk edge", "last"])
def test_flipped_body_byte_refused(home: Path, key: bytes, where: str) -> None:
    path = home / "p.payload"
    write(path, "arguments", os.urandom(BIG), key)
    offset = {"first": 0, "middle": BIG // 2, "chunk edge": payload.CHUNK, "last": BIG - 1}
    flip(path, body_start(path) + offset[where])
    assert MISMATCH in refused(path, "arguments", key)


def test_flipped_header_byte_refused(home: Path, key: bytes) -> None:
    path = home / "h.payload"
    write(path, "function", b"body", key, meta={"step": "a"})
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"step":"a"', b'"step":"b"'))
    assert MISMATCH in refused(path, "function", key)
    path.write_bytes(data.replace(b"fitdock-payload 1", b"fitdock-payload 2"))
    assert "not a fitdock payload (version 1)" in refused(path, "function", key)
    path.write_bytes(data.replace(b'{"chunk"', b'{"chunk"!'))
    assert "the header (line 2) is not JSON" in refused(path, "function", key)


def test_kind_mismatch_refused(home: Path, key: bytes) -> None:
    path = home / "k.payload"
    write(path, "results", b"body", key)
    message = refused(path, "function", key)
    assert "holds a 'results' payload, not the 'function' expected" in message
    data = path.read_bytes()  # a kind changed by hand is caught by the signature
    path.write_bytes(data.replace(b'"kind":"results"', b'"kind":"function"'))
    assert MISMATCH in refused(path, "function", key)


def test_truncated_refused(home: Path, key: bytes) -> None:
    path = home / "t.payload"
    write(path, "arguments", b"0123456789", key)
    path.write_bytes(path.read_bytes()[:-3])
    assert "truncated: 7 of 10 body bytes are there" in refused(path, "arguments", key)
    path.write_bytes(path.read_bytes()[:20])
    assert "the header line (line 2) is missing" in refused(path, "arguments", key)


def test_trailing_bytes_refused(home: Path, key: bytes) -> None:
    path = home / "t.payload"
    write(path, "arguments", b"0123456789", key)
    with path.open("ab") as handle:
        handle.write(b"more")
    assert "has trailing bytes: 4 after the body" in refused(path, "arguments", key)


def test_signature_line_removed_refused(home: Path, key: bytes) -> None:
    path = home / "s.payload"
    write(path, "arguments", os.urandom(100), key)
    lines = path.read_bytes().split(b"\n", 3)
    path.write_bytes(b"\n".join([lines[0], lines[1], lines[3]]))
    message = refused(path, "arguments", key)
    assert "the signature line (line 3) is missing or malformed" in message


def test_foreign_key_refused(home: Path, key: bytes, tmp_path: Path) -> None:
    path = home / "f.payload"
    write(path, "results", b"body", key)
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    assert MISMATCH in refused(path, "results", load_key(key_path(other), create=True))


def test_missing_or_odd_files_refused(home: Path, key: bytes) -> None:
    assert "cannot open the payload: No such file" in refused(home / "none", "results", key)
    assert "not a regular file" in refused(home, "results", key)
    (home / "text").write_text("hello\n")
    message = refused(home / "text", "results", key)
    assert "not a fitdock payload (version 1): first line b'hello'" in message


# ---------------------------------------------------------------------------------------------
# The key file
# ---------------------------------------------------------------------------------------------
def test_key_created_private_and_reused(tmp_path: Path) -> None:
    path = key_path(tmp_path / "new" / "home")
    assert path.name == "secret.key"
    with pytest.raises(PayloadError, match="no key file: the submitting side makes it; a job"):
        load_key(path)
    key = load_key(path, create=True)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == key.hex() + "\n"
    assert load_key(path) == key == load_key(path, create=True)
    assert os.listdir(path.parent) == ["secret.key"]  # the temporary name is gone


def test_key_creation_closes_an_open_folder(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    load_key(key_path(tmp_path), create=True)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    assert len(load_key(key_path(tmp_path))) == 32


def test_loose_key_mode_refused(key: bytes, home: Path) -> None:
    path = key_path(home)
    path.chmod(0o644)
    expected = re.escape(f"mode 644): run `chmod 600 {path}`")
    with pytest.raises(PayloadError, match=expected) as caught:
        load_key(path, create=True)
    assert caught.value.path == path


def test_loose_folder_mode_refused(key: bytes, home: Path) -> None:
    home.chmod(0o750)
    with pytest.raises(PayloadError, match=re.escape(f"open to others: run `chmod 700 {home}`")):
        load_key(key_path(home))


def test_symlinked_key_refused(key: bytes, home: Path) -> None:
    elsewhere = home / "real.key"
    key_path(home).rename(elsewhere)
    key_path(home).symlink_to(elsewhere)
    with pytest.raises(
        PayloadError, match="the key file is a symlink: put the key file itself there"
    ):
        load_key(key_path(home), create=True)


@pytest.mark.parametrize(
    "content", [b"", b"abc\n", b"g" * 64 + b"\n", b"ab" * 32 + b"\n\n", b"a b" + b"0" * 61]
)
def test_malformed_key_refused(home: Path, content: bytes) -> None:
    path = key_path(home)
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(PayloadError, match=r"not a key \(64 hex digits\): rm .* to make a new key"):
        load_key(path, create=True)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_key_of_another_user_refused(key: bytes, home: Path) -> None:
    os.chown(key_path(home), 65534, -1)
    with pytest.raises(
        PayloadError, match=r"owned by uid 65534, not by you \(uid 0\): rm it to make a new key"
    ):
        load_key(key_path(home))


def test_concurrent_creation_in_threads_gives_one_key(tmp_path: Path) -> None:
    path = key_path(tmp_path / "home")
    start = threading.Barrier(16)
    keys: list[bytes] = []

    def create() -> None:
        start.wait()
        keys.append(load_key(path, create=True))

    threads = [threading.Thread(target=create) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 16 and set(keys) == {load_key(path)}
    assert os.listdir(path.parent) == ["secret.key"]


def test_concurrent_creation_in_isolated_processes_gives_one_key(tmp_path: Path) -> None:
    """Job-side copies, as a runner imports them: ``payload`` beside the script, under
    ``python -I -S`` (no site-packages, no fitdock)."""
    beside = tmp_path / "job"
    beside.mkdir()
    shutil.copy(payload.__file__, beside / "payload.py")
    path = key_path(tmp_path / "home")
    code = (
        "import sys, time; from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[3]); import payload\n"
        "assert not [m for m in sys.modules if m.startswith('fitdock')], 'fitdock imported'\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "print(payload.load_key(Path(sys.argv[1]), create=True).hex())\n"
    )
    go = str(time.time() + 1.0)  # every process past its start-up, then all at once
    procs = [
        subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", code, str(path), go, str(beside)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outs = [proc.communicate(timeout=30) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 8, [err for _, err in outs]
    assert {out.strip() for out, _ in outs} == {load_key(path).hex()}
    assert os.listdir(path.parent) == ["secret.key"]
