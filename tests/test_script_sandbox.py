"""fitdock.script.sandbox against the real tools: bubblewrap, unshare, /proc, SIGKILL.

Tests that need bubblewrap skip without it (fail with ``CI=true``: scripts/install-system.sh
installs it); those that need a network namespace skip unless root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fitdock.errors import SandboxError, SpecError
from fitdock.script import sandbox
from fitdock.script.sandbox import Isolation, MemoryWatch, choose, wrap

pytestmark = pytest.mark.timeout(60)
PYTHON = sys.executable


@pytest.fixture
def netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("a network namespace (unshare --net) needs root")


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    sandbox.clear_probe_cache()
    yield
    sandbox.clear_probe_cache()


def run(code: str, isolation: Isolation, workdir: Path) -> str:
    argv = wrap([PYTHON, "-c", textwrap.dedent(code)], isolation, workdir)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


CONNECT = """
import errno, socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("connected")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)))
"""


def connect(isolation: Isolation, workdir: Path, port: int) -> str:
    argv = wrap([PYTHON, "-c", CONNECT, str(port)], isolation, workdir)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def test_wrap_builds_argv_lists(tmp_path: Path) -> None:
    argv = ["python3", "-c", "print(1)"]
    assert wrap(argv, Isolation.NONE, tmp_path) == argv
    assert wrap(argv, Isolation.NETNS, tmp_path) == ["unshare", "--net", "--", *argv]
    extra = tmp_path / "extra"
    got = wrap(argv, Isolation.BUBBLEWRAP, tmp_path, writable=[extra])
    assert got[0] == "bwrap" and got[-4:] == ["--", *argv]
    assert got[got.index("--chdir") + 1] == str(tmp_path.resolve())
    binds = [i for i, arg in enumerate(got) if arg == "--bind"]
    assert [got[i + 1] for i in binds] == [str(tmp_path.resolve()), str(extra.resolve())]
    assert got.index("--tmpfs") < binds[0]  # the private /tmp never hides the working folder
    assert {"--unshare-net", "--unshare-pid", "--die-with-parent"} <= set(got)


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------
def test_bubblewrap_has_no_network(bwrap: None, loopback_server: int, tmp_path: Path) -> None:
    assert connect(Isolation.NONE, tmp_path, loopback_server) == "connected"
    assert connect(Isolation.BUBBLEWRAP, tmp_path, loopback_server) in {
        "ECONNREFUSED",
        "ENETUNREACH",
    }


def test_netns_has_no_network(netns: None, loopback_server: int, tmp_path: Path) -> None:
    assert connect(Isolation.NONE, tmp_path, loopback_server) == "connected"
    assert connect(Isolation.NETNS, tmp_path, loopback_server) in {"ECONNREFUSED", "ENETUNREACH"}


# ---------------------------------------------------------------------------------------------
# File system and processes
# ---------------------------------------------------------------------------------------------
def test_bubblewrap_writes_only_the_working_folder(
    bwrap: None, tmp_path: Path, outside: Path
) -> None:
    work, sibling = tmp_path / "work", tmp_path / "sibling"
    work.mkdir()
    sibling.mkdir()
    code = """
    import errno, sys
    for path in sys.argv[1:]:
        try:
            open(path, "w").write("x")
            print("wrote")
        except OSError as exc:
            print(errno.errorcode[exc.errno])
    """
    argv = [PYTHON, "-c", textwrap.dedent(code), "inside.txt"]
    argv += [str(outside / "f.txt"), str(sibling / "f.txt"), str(Path.home() / "f.txt")]
    done = subprocess.run(
        wrap(argv, Isolation.BUBBLEWRAP, work), capture_output=True, text=True, check=True
    )
    inside, root_fs, beside, home = done.stdout.split()
    assert inside == "wrote" and (work / "inside.txt").read_text() == "x"
    assert root_fs in {"EROFS", "EACCES"}
    assert home in {"EROFS", "EACCES", "ENOENT"}
    # The sibling, under the host's /tmp, is hidden by the private /tmp: whatever happened
    # inside, nothing reaches the host.
    assert beside in {"EROFS", "EACCES", "ENOENT", "wrote"}
    assert list(sibling.iterdir()) == [] and list(outside.iterdir()) == []
    assert not (Path.home() / "f.txt").exists()


def test_bubblewrap_extra_writable_folder(bwrap: None, tmp_path: Path, outside: Path) -> None:
    code = "import sys; open(sys.argv[1], 'w').write('y'); print('ok')"
    argv = [PYTHON, "-c", code, str(outside / "out.txt")]
    done = subprocess.run(
        wrap(argv, Isolation.BUBBLEWRAP, tmp_path, writable=[outside]),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "ok" and (outside / "out.txt").read_text() == "y"


def test_bubblewrap_tmp_is_private_and_keeps_a_workdir_under_tmp(bwrap: None) -> None:
    name = f"fitdock-sandbox-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(dir="/tmp") as work:
        code = f"""
        import os
        open("/tmp/{name}", "w").write("x")
        open("kept.txt", "w").write("k")
        print(os.getcwd(), len(os.listdir("/tmp")))
        """
        cwd, _ = run(code, Isolation.BUBBLEWRAP, Path(work)).split()
        assert cwd == str(Path(work).resolve())
        assert (Path(work) / "kept.txt").read_text() == "k"
    assert not Path("/tmp", name).exists()


def test_bubblewrap_has_its_own_pid_namespace(bwrap: None, tmp_path: Path) -> None:
    code = "import os; print(os.getpid(), sum(p.isdigit() for p in os.listdir('/proc')))"
    pid, processes = map(int, run(code, Isolation.BUBBLEWRAP, tmp_path).split())
    assert pid <= 3 and processes <= 3


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
HOG = """
import time
chunks = []
for _ in range(40):
    chunks.append(b"x" * (10 << 20))
    time.sleep(0.02)
print("survived", flush=True)
time.sleep(30)
"""


def watch(argv: list[str], memory_mb: float) -> tuple[MemoryWatch, int, float]:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with MemoryWatch(proc.pid, memory_mb) as watcher:
        code = proc.wait(timeout=20)
    proc.communicate()
    return watcher, code, time.monotonic() - start


def test_memory_hog_is_killed() -> None:
    watcher, code, took = watch([PYTHON, "-c", HOG], memory_mb=150)
    assert watcher.exceeded and code == -signal.SIGKILL and took < 10
    assert watcher.peak_mb > 150


def test_memory_hog_is_killed_through_bubblewrap(bwrap: None, tmp_path: Path) -> None:
    argv = wrap([PYTHON, "-c", HOG], Isolation.BUBBLEWRAP, tmp_path)
    watcher, code, took = watch(argv, memory_mb=150)
    assert watcher.exceeded and code != 0 and took < 10


def test_memory_under_the_limit_is_untouched() -> None:
    code = "import time; x = b'x' * (20 << 20); time.sleep(0.5)"
    watcher, rc, _ = watch([PYTHON, "-c", code], memory_mb=150)
    assert rc == 0 and not watcher.exceeded and 20 < watcher.peak_mb < 150


def test_memory_limit_must_be_positive() -> None:
    with pytest.raises(SpecError) as info:
        MemoryWatch(os.getpid(), 0)
    assert info.value.field == "memory_mb"


# ---------------------------------------------------------------------------------------------
# choose()
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_tools(fresh_probe: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_strict_without_bubblewrap_raises(no_tools: None) -> None:
    with pytest.raises(SandboxError, match="bubblewrap") as info:
        choose("strict")
    assert info.value.missing == ["bubblewrap"]


def test_auto_without_tools_warns(no_tools: None) -> None:
    isolation, warnings = choose("auto")
    assert isolation is Isolation.NONE
    assert "bubblewrap is not installed (apt-get install bubblewrap)" in warnings[0]
    assert "network" in warnings[1]


def test_auto_and_strict_with_bubblewrap(bwrap: None, fresh_probe: None) -> None:
    assert sandbox.probe() is Isolation.BUBBLEWRAP
    assert choose("auto") == (Isolation.BUBBLEWRAP, [])
    assert choose("strict") == (Isolation.BUBBLEWRAP, [])


def test_off_warns() -> None:
    assert choose("off") == (Isolation.NONE, ["sandbox off: the script runs unisolated"])


def test_unknown_mode_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="auto, strict, off") as info:
        choose("maybe")
    assert info.value.field == "sandbox"


def test_auto_with_netns_only_warns_about_bubblewrap(
    netns: None, no_tools: None, tmp_path: Path
) -> None:
    for tool in ("unshare", "true"):
        found = shutil.which(tool, path=os.defpath + ":/usr/bin:/bin")
        assert found is not None
        (tmp_path / "empty-path" / tool).symlink_to(found)
    isolation, warnings = choose("auto")
    assert isolation is Isolation.NETNS
    assert warnings == [
        "bubblewrap is not installed (apt-get install bubblewrap): the script can write "
        "outside its working folder and see the host's processes"
    ]


def test_bubblewrap_that_cannot_work_here_is_named(no_tools: None, tmp_path: Path) -> None:
    fake = tmp_path / "empty-path" / "bwrap"  # as in a container with Docker's seccomp profile
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxError, match="No permissions to create new namespace"):
        choose("strict")
