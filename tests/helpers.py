"""Helpers shared by the integration tests: process liveness, polling, tiny scripts, docker
containers, and pytest run on a tiny suite."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CONFTEST = Path(__file__).with_name("conftest.py")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    state = stat[stat.rindex(b")") + 2 :].split()[0]
    return state not in (b"Z", b"X")


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= end:
            return bool(predicate())
        time.sleep(interval)


def write_script(folder: Path, text: str, name: str = "train.py") -> Path:
    """Write a dedented script into ``folder`` (created); return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(text))
    return folder


def run_dirs(home: Path) -> list[Path]:
    """Every folder under ``$FITDOCK_HOME/runs`` (none when it does not exist)."""
    root = home / "runs"
    return sorted(root.iterdir()) if root.is_dir() else []


def read_pids(path: Path, count: int = 1, timeout: float = 10.0) -> list[int]:
    """Wait until ``path`` holds ``count`` pids, one per line; return them."""

    def ready() -> bool:
        try:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        except OSError:
            return False
        return len(lines) >= count

    assert wait_until(ready, timeout), f"{path} did not get {count} pid(s) within {timeout} s"
    return [int(ln) for ln in path.read_text().splitlines() if ln.strip()]


def python_child(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` (this interpreter) with the test's environment."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=kwargs.pop("env", dict(os.environ)),
        **kwargs,
    )


@contextlib.contextmanager
def python_child_killed_after(
    code: str, *args: str, **kwargs: Any
) -> Iterator[subprocess.Popen[str]]:
    """``python_child`` for the block; on exit killed if still running, its pipes closed."""
    child = python_child(code, *args, **kwargs)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


# A script prologue that records its pid into $PID_FILE (one line per process).
RECORD_PID = """
import os
with open(os.environ["PID_FILE"], "a") as _f:
    _f.write(f"{os.getpid()}\\n")
"""


def processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``text``, this one excepted."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def containers(run_id: str) -> str:
    """The ids of the docker containers of run ``run_id``, running or not ("" when none)."""
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=fitdock-{run_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def run_inner_suite(
    folder: Path, tests: str, conftest_extra: str, ini: str, ci: str | None
) -> subprocess.CompletedProcess[str]:
    """pytest on a tiny suite made in ``folder``: ``tests`` its one test file, this project's
    conftest.py plus ``conftest_extra`` its conftest, ``ini`` its pytest.ini; ``CI`` set to
    ``ci`` (unset when None)."""
    folder.mkdir(parents=True)
    (folder / "conftest.py").write_text(CONFTEST.read_text() + conftest_extra)
    (folder / "test_inner.py").write_text(tests)
    (folder / "pytest.ini").write_text(ini)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "--strict-markers"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
