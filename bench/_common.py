"""What bench_launch.py's parts share: the job scripts, the report, and fit() with a time limit."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fitdock import Estimator, Run

FIT_LIMIT_S = 30.0  # a fit() still running after this is counted as hung, and left behind

SLEEP_SCRIPT = """\
import os, signal, sys, time
{trap}
pid_file = sys.argv[1]
with open(pid_file + ".tmp", "w") as handle:
    print(os.getpid(), os.getppid(), os.environ.get("FITDOCK_REAPER_PID", ""), file=handle)
os.replace(pid_file + ".tmp", pid_file)
while True:
    time.sleep(3600)
"""
SCRIPTS = {
    "noop.py": "",
    "sleep_obey.py": SLEEP_SCRIPT.format(trap="# SIGTERM keeps its default action: exit"),
    "sleep_trap.py": SLEEP_SCRIPT.format(trap="signal.signal(signal.SIGTERM, lambda *_: None)"),
}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
@dataclass
class Report:
    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def emit(self, text: str) -> None:
        print(text, flush=True)
        self.data.setdefault("lines", []).append(text)

    def verdict(self, key: str, value: float, target: float) -> str:
        ok = value <= target
        self.data.setdefault("checks", {})[key] = {"value": value, "target": target, "ok": ok}
        return "OK" if ok else "MISS"

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def finish(self, json_path: Path | None, environment: Callable[[], dict[str, Any]]) -> None:
        """Print the warnings; with ``--json``, write every number and the machine."""
        for text in self.warnings:
            self.emit(f"bench warning: {text}")
        if json_path is not None:
            self.data.update(environment=environment(), warnings=self.warnings)
            json_path.write_text(json.dumps(self.data, indent=2) + "\n")


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


@dataclass
class Fitted:
    """One fit(): the run (None if fit() hung) and perf_counter() before and after it."""

    run: Run | None
    start: float
    end: float


def fit_within(estimator: Estimator, limit: float, report: Report) -> Fitted:
    """fit() in a daemon thread, so that a job that never ends cannot hang the benchmark."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["run"] = estimator.fit()
        except BaseException as exc:  # re-raised below, in the benchmark's thread
            box["error"] = exc
        box["end"] = time.perf_counter()

    thread = threading.Thread(target=call, name="bench-fit", daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(limit)
    if "error" in box:
        raise box["error"]
    if thread.is_alive():
        report.warn(f"{estimator!r}: fit() still running after {limit:g} s; counted as {limit:g} s")
        return Fitted(None, start, start + limit)
    return Fitted(box["run"], start, box["end"])


# ---------------------------------------------------------------------------------------------
# Watching processes exit
# ---------------------------------------------------------------------------------------------
class PidWatcher:
    """In a thread: get the pids to watch (``pids()``, which may wait for pid files), call
    ``watching()``, then stamp with ``clock`` the moment each of those processes exits."""

    def __init__(self, limit: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.clock = clock
        self.exits: dict[int, float] = {}
        self.pending = 0
        self._thread = threading.Thread(target=self._watch, name="bench-watch", daemon=True)
        self._thread.start()

    def pids(self) -> list[int]:
        raise NotImplementedError

    def watching(self) -> None:
        """Called once the pidfds are open (a script may wait for this to die)."""

    def read_pid_files(self, files: list[Path]) -> list[int]:
        """The pids written in ``files`` (all of them), waiting up to ``limit`` for them."""
        end = time.monotonic() + self.limit
        while time.monotonic() < end:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return [int(word) for path in files for word in path.read_text().split()]
            time.sleep(0.002)
        return []

    def _watch(self) -> None:
        fds: dict[int, int] = {}
        pids = self.pids()
        for pid in pids:
            try:
                fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                self.exits[pid] = self.clock()
        self.watching()
        while fds:
            ready, _, _ = select.select(list(fds), [], [], self.limit)
            if not ready:
                break
            now = self.clock()
            for fd in ready:
                self.exits[fds.pop(fd)] = now
                os.close(fd)
        self.pending = len(fds) if pids else 1
        for fd in fds:
            os.close(fd)

    def last_exit(self, timeout: float) -> float | None:
        """When the last watched process exited; None if one is unaccounted for."""
        self._thread.join(timeout)
        if self._thread.is_alive() or self.pending or not self.exits:
            return None
        return max(self.exits.values())


def machine(**extra: Any) -> dict[str, Any]:
    """What the numbers were measured on (for --json)."""
    from fitdock import __version__

    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "fitdock": __version__,
        **extra,
    }
