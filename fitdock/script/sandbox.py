"""The sandbox of an Execute Python Script run: what this machine gives, and how to use it.

Standard library only: the job-side runner imports this module outside the sandbox,
asks :func:`choose` what it may have, starts ``wrap(argv, ...)`` and watches it with a
:class:`MemoryWatch`.

    Isolation.BUBBLEWRAP  read-only file system but the working folder (and any extra
                          writable paths), a private /tmp, no network, own PID namespace
    Isolation.NETNS       a private network namespace only (``unshare --net``, as root)
    Isolation.NONE        unisolated

Memory is limited by a resident-memory watchdog, never ``RLIMIT_AS`` (NumPy and OpenBLAS
reserve large virtual memory and fail to import under it).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from fitdock.errors import SandboxError, SpecError

__all__ = ["Isolation", "MemoryWatch", "choose", "clear_probe_cache", "probe", "wrap"]

MODES = ("auto", "strict", "off")
_BWRAP_ROOT = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
_BWRAP_NAMESPACES = ["--unshare-net", "--unshare-pid", "--die-with-parent"]
_PROBE_TIMEOUT_S = 10.0


class Isolation(str, enum.Enum):
    """How a script is isolated, strongest first."""

    BUBBLEWRAP = "bubblewrap"
    NETNS = "netns"
    NONE = "none"


# ---------------------------------------------------------------------------------------------
# What this machine gives
# ---------------------------------------------------------------------------------------------
def _try(argv: list[str]) -> str | None:
    """None when ``argv`` runs and exits 0; else what went wrong, in a few words."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


@functools.cache
def _probe() -> tuple[Isolation, tuple[str, ...]]:
    """The strongest isolation here, and why each stronger one is missing."""
    missing: list[str] = []
    if shutil.which("bwrap") is None:
        missing.append("bubblewrap is not installed (apt-get install bubblewrap)")
    else:
        problem = _try([*_BWRAP_ROOT, *_BWRAP_NAMESPACES, "true"])
        if problem is None:
            return Isolation.BUBBLEWRAP, ()
        missing.append(
            f"bubblewrap cannot make its namespaces here ({problem}; inside a container it "
            "needs a relaxed seccomp profile)"
        )
    if os.geteuid() != 0:
        missing.append("a network namespace (unshare --net) needs root")
    elif shutil.which("unshare") is None:
        missing.append("unshare is not installed (apt-get install util-linux)")
    else:
        problem = _try(["unshare", "--net", "true"])
        if problem is None:
            return Isolation.NETNS, tuple(missing)
        missing.append(f"unshare --net fails here ({problem})")
    return Isolation.NONE, tuple(missing)


def probe() -> Isolation:
    """The strongest isolation this machine gives (tried once per process)."""
    return _probe()[0]


def clear_probe_cache() -> None:
    """Forget what :func:`probe` found (after installing bubblewrap, or in tests)."""
    _probe.cache_clear()


def choose(mode: str) -> tuple[Isolation, list[str]]:
    """The isolation for ``sandbox=mode`` and the warnings to show the user.

    ``auto``: the strongest available, warning about each stronger one that is missing;
    ``strict``: bubblewrap or :class:`SandboxError`; ``off``: none, with a warning.
    """
    if mode not in MODES:
        raise SpecError(
            f"sandbox={mode!r} is not a sandbox mode; use one of {', '.join(MODES)}",
            field="sandbox",
        )
    if mode == "off":
        return Isolation.NONE, ["sandbox off: the script runs unisolated"]
    isolation, missing = _probe()
    if mode == "strict" and isolation is not Isolation.BUBBLEWRAP:
        raise SandboxError(
            f"sandbox='strict' needs bubblewrap: {missing[0]}; install it, or use "
            "sandbox='auto' to run with the isolation this machine has",
            missing=["bubblewrap"],
        )
    warnings = []
    if isolation is not Isolation.BUBBLEWRAP:
        warnings.append(
            f"{missing[0]}: the script can write outside its working folder and see the "
            "host's processes"
        )
    if isolation is Isolation.NONE:
        warnings.append(f"{missing[-1]}: the script can reach the network")
    return isolation, warnings


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def wrap(
    argv: Sequence[str],
    isolation: Isolation,
    workdir: Path,
    writable: Sequence[Path] = (),
    readable: Sequence[Path] = (),
) -> list[str]:
    """The argv that runs ``argv`` under ``isolation``, with ``workdir`` (and ``writable``)
    the only writable folders. The private /tmp is mounted before them, so a working
    folder under /tmp stays visible; ``readable`` paths under /tmp (the interpreter's
    environment, the script, its inputs) are bound back read-only."""
    if isolation is Isolation.NONE:
        return list(argv)
    if isolation is Isolation.NETNS:
        return ["unshare", "--net", "--", *argv]
    work = str(Path(workdir).resolve())
    binds = [work] + [str(Path(path).resolve()) for path in writable]
    command = [*_BWRAP_ROOT, "--tmpfs", "/tmp"]
    # The interpreter that runs inside, and this one's environment, wherever they lie.
    own = [Path(sys.prefix), Path(sys.base_prefix)]
    if argv and os.path.isabs(argv[0]):
        own += [Path(argv[0]).parent, Path(argv[0]).resolve().parent]
    for path in sorted({str(Path(p).resolve()) for p in [*readable, *own]}):
        if path == "/tmp" or path.startswith("/tmp/"):  # elsewhere / is bound already
            command += ["--ro-bind", path, path]
    for path in binds:
        command += ["--bind", path, path]
    return [*command, *_BWRAP_NAMESPACES, "--chdir", work, "--", *argv]


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _tree(root: int) -> list[int]:
    """``root`` and its live descendants, by the parent links under /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0  # gone, a zombie, or a kernel thread


class MemoryWatch:
    """Kills a process tree whose resident memory passes ``memory_mb``.

    A watchdog thread: every ``interval`` seconds it sums VmRSS over ``pid`` and its
    descendants; over the limit it SIGKILLs each of them and sets ``exceeded``. ``peak_mb``
    is the largest sum seen. Not a cgroup: the memory cgroups here (v1) belong to whatever
    started this process, and a watchdog works for any user. Limits: shared pages count once
    per process, and a fast allocator can pass the limit by what it allocates in one interval.
    """

    def __init__(self, pid: int, memory_mb: float, *, interval: float = 0.1) -> None:
        if memory_mb <= 0:
            raise SpecError(f"memory_mb={memory_mb} must be positive", field="memory_mb")
        self.pid = pid
        self.memory_mb = memory_mb
        self.interval = interval
        self.exceeded = False
        self.peak_mb = 0.0
        stat = _stat(pid)
        self._started = stat[2] if stat else None  # tells ``pid`` from a later reuse of it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"memory-watch-{pid}", daemon=True)

    def start(self) -> MemoryWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (the tree is left alone); returns when the thread has ended."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> MemoryWatch:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _root_alive(self) -> bool:
        stat = _stat(self.pid)
        return stat is not None and stat[0] != "Z" and stat[2] == self._started

    def _run(self) -> None:
        while self._root_alive():
            pids = _tree(self.pid)
            used_mb = sum(_rss_kb(pid) for pid in pids) / 1024
            self.peak_mb = max(self.peak_mb, used_mb)
            if used_mb > self.memory_mb:
                self.exceeded = True
                self._kill(pids)
                return
            if self._stop.wait(self.interval):
                return

    def _kill(self, pids: list[int]) -> None:
        """SIGKILL the tree, the root last, and once more whatever it forked meanwhile."""
        for _ in range(3):
            for pid in reversed(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pids = [pid for pid in _tree(self.pid) if _alive(pid)]
            if not pids:
                return
