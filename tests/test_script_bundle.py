"""fitdock.script.bundle: a good bundle extracts and imports; every bad one is refused
before anything is written, naming the entry."""

from __future__ import annotations

import importlib
import os
import stat
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from fitdock.errors import ScriptBundleError, SpecError
from fitdock.script import bundle

HELLO = 'def print_hello(name):\n    return f"Hello {name}"\n'


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def special(name: str, file_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (file_type | 0o777) << 16
    return info


def declare_size(path: Path, name: str, size: int) -> None:
    """Overwrite the uncompressed size the central directory declares for entry ``name``
    (its data stays as it is: a lying header)."""
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x01\x02")
    while start != -1:
        (length,) = struct.unpack_from("<H", data, start + 28)
        if data[start + 46 : start + 46 + length] == name.encode():
            struct.pack_into("<I", data, start + 24, size)
        start = data.find(b"PK\x01\x02", start + 4)
    path.write_bytes(bytes(data))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_a_good_bundle_extracts_and_imports(tmp_path: Path, workdir: Path) -> None:
    zip_path = make_zip(
        tmp_path / "Hello.zip",
        [("Hello.py", HELLO.encode()), ("pkg/", b""), ("pkg/data/table.csv", b"a,b\n1,2\n")],
    )
    folder = bundle.extract_bundle(zip_path, workdir)
    assert folder == workdir / "Script Bundle"
    assert (folder / "pkg" / "data" / "table.csv").read_text() == "a,b\n1,2\n"
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        hello = importlib.import_module("Hello")
        assert hello.print_hello("fitdock") == "Hello fitdock"
        assert Path(hello.__file__).parent == folder
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("Hello", None)


def test_check_bundle_lists_the_entries(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "b.zip", [("a.py", b"x = 1\n"), ("sub/b.py", b"")])
    assert [info.filename for info in bundle.check_bundle(zip_path)] == ["a.py", "sub/b.py"]


def test_backslashes_are_separators(tmp_path: Path, workdir: Path) -> None:
    zip_path = make_zip(tmp_path / "b.zip", [("pkg\\mod.py", b"x = 1\n")])
    assert (bundle.extract_bundle(zip_path, workdir) / "pkg" / "mod.py").is_file()


def ten_thousand_and_one(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for number in range(bundle.MAX_ENTRIES + 1):
            archive.writestr(f"f{number}", b"")
    return path


def bomb(path: Path) -> Path:  # one 20 MiB entry of zeros: about 1000:1
    return make_zip(path, [("zeros.bin", bytes(20 << 20))])


def spread_bomb(path: Path) -> Path:  # 40 entries of exactly 1 MiB: only the archive ratio
    return make_zip(path, [(f"z{n}.bin", bytes(1 << 20)) for n in range(40)])


def declared_over_a_gibibyte(path: Path) -> Path:
    make_zip(path, [("small.py", b"x = 1\n"), ("huge.bin", b"0123456789")])
    declare_size(path, "huge.bin", 1 << 30)  # 1 GiB + 6 bytes in all
    return path


REFUSED: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "zip slip": (lambda p: make_zip(p, [("../evil.py", b"")]), "../evil.py", r"'\.\.'"),
    "zip slip deeper": (
        lambda p: make_zip(p, [("pkg/../../evil.py", b"")]),
        "pkg/../../evil.py",
        r"'\.\.'",
    ),
    "absolute": (lambda p: make_zip(p, [("/abs.py", b"")]), "/abs.py", "absolute"),
    "drive letter": (lambda p: make_zip(p, [("C:/evil.py", b"")]), "C:/evil.py", "absolute"),
    "backslash root": (lambda p: make_zip(p, [("\\evil.py", b"")]), "\\evil.py", "absolute"),
    "symlink": (
        lambda p: make_zip(p, [(special("link.py", stat.S_IFLNK), b"/etc/passwd")]),
        "link.py",
        "symbolic link",
    ),
    "device": (
        lambda p: make_zip(p, [(special("tty", stat.S_IFCHR), b"")]),
        "tty",
        "character device",
    ),
    "fifo": (lambda p: make_zip(p, [(special("pipe", stat.S_IFIFO), b"")]), "pipe", "fifo"),
    "duplicate": (
        lambda p: make_zip(p, [("a.py", b"1"), ("./a.py", b"2")]),
        "./a.py",
        "same path",
    ),
    "file then folder": (
        lambda p: make_zip(p, [("a", b"1"), ("a/b.py", b"2")]),
        "a/b.py",
        "under a file",
    ),
    "10,001 entries": (ten_thousand_and_one, "f10000", "10,001 entries"),
    "bomb": (bomb, "zeros.bin", "200:1"),
    "archive ratio": (spread_bomb, "z0.bin", "200:1"),
    "over 1 GiB declared": (declared_over_a_gibibyte, "huge.bin", "1,073,741,824"),
}


@pytest.mark.parametrize(
    ("build", "entry", "why"),
    [
        *[pytest.param(*case, id=name) for name, case in REFUSED.items()],
        pytest.param(
            lambda p: make_zip(p, [("a.py", b"1"), ("a.py", b"2")]),
            "a.py",
            "same path",
            id="exact duplicate",
            marks=pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning"),
        ),
    ],
)
def test_refused_before_anything_is_written(
    tmp_path: Path, workdir: Path, build: Callable[[Path], Path], entry: str, why: str
) -> None:
    zip_path = build(tmp_path / "bad.zip")
    with pytest.raises(ScriptBundleError, match=why) as caught:
        bundle.extract_bundle(zip_path, workdir)
    assert caught.value.entry == entry
    assert repr(entry) in str(caught.value)
    assert isinstance(caught.value, SpecError)
    assert caught.value.field == "script_bundle"
    assert list(workdir.iterdir()) == []


def test_total_limit_with_incompressible_data(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same limit on real bytes, lowered to 1 MiB so the test stays small."""
    monkeypatch.setattr(bundle, "MAX_TOTAL_BYTES", 1 << 20)
    zip_path = make_zip(tmp_path / "big.zip", [("random.bin", os.urandom((1 << 20) + 1))])
    with pytest.raises(ScriptBundleError, match="uncompressed") as caught:
        bundle.extract_bundle(zip_path, workdir)
    assert caught.value.entry == "random.bin"
    assert list(workdir.iterdir()) == []


def test_small_compressible_files_pass(tmp_path: Path, workdir: Path) -> None:
    """The ratio is checked above 1 MiB only: a small file of zeros is no bomb."""
    zip_path = make_zip(tmp_path / "b.zip", [("blank.txt", bytes(500_000))])
    assert (bundle.extract_bundle(zip_path, workdir) / "blank.txt").stat().st_size == 500_000


def test_not_a_zip(tmp_path: Path, workdir: Path) -> None:
    path = tmp_path / "bundle.zip"
    path.write_text("def print_hello(): pass\n")
    with pytest.raises(ScriptBundleError, match=r"'bundle\.zip' is not a readable zip"):
        bundle.extract_bundle(path, workdir)
    assert list(workdir.iterdir()) == []


def test_a_missing_file_is_refused(tmp_path: Path, workdir: Path) -> None:
    with pytest.raises(ScriptBundleError, match=r"'absent\.zip'"):
        bundle.extract_bundle(tmp_path / "absent.zip", workdir)


@pytest.mark.parametrize(
    ("declared", "why"), [(10, "header lies"), (10_000, "decompresses to 50 bytes, not its 10,000")]
)
def test_a_lying_header_stops_extraction_and_leaves_nothing(
    tmp_path: Path, workdir: Path, declared: int, why: str
) -> None:
    """The checks pass on the declared size; the data is longer (or shorter)."""
    zip_path = make_zip(tmp_path / "liar.zip", [("Hello.py", HELLO.encode())])
    declare_size(zip_path, "Hello.py", declared)
    with pytest.raises(ScriptBundleError, match=why) as caught:
        bundle.extract_bundle(zip_path, workdir)
    assert caught.value.entry == "Hello.py"
    assert list(workdir.iterdir()) == []


def test_never_writes_through_an_existing_folder(tmp_path: Path, workdir: Path) -> None:
    (workdir / "Script Bundle").symlink_to(tmp_path)
    zip_path = make_zip(tmp_path / "b.zip", [("a.py", b"")])
    with pytest.raises(FileExistsError):
        bundle.extract_bundle(zip_path, workdir)
    assert not (tmp_path / "a.py").exists()
