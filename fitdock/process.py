"""The one process boundary, supervisor side: start, signal and wait for job processes.

Nothing else in fitdock calls ``subprocess`` or ``os.kill``. A job runs under
``jobtree.py`` (its reaper, and a rank wrapper per rank), a stdlib-only program
that this module starts; see that module for what happens inside the job. Short
tool commands (``mpirun --version``, ``git rev-parse``) and file transfers through
a launch agent also run here.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from fitdock.jobside import jobtree
from fitdock.jobside.jobtree import NEXT, RANK_MODE

__all__ = [
    "NEXT",
    "RANK_MODE",
    "JobProcess",
    "capture",
    "detach",
    "rank_wrapper_argv",
    "split_commands",
    "stream",
    "tool",
    "transfer",
]
split_commands = jobtree.split_commands


# ---------------------------------------------------------------------------------------------
# Supervisor side
# ---------------------------------------------------------------------------------------------
class JobProcess:
    """A running job: the reaper process and the command(s) it runs (several run side
    by side, e.g. one torchrun per host)."""

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        *,
        env: Mapping[str, str],
        cwd: str | Path,
        log_path: str | Path,
        python: str = sys.executable,
        relay_orders: bool = False,
        rank_logs: str | None = None,
    ) -> None:
        """``relay_orders``: the commands are reapers themselves (one in a container, say):
        orders go to their stdin (see ``jobtree``). ``rank_logs``: the one command is the
        job's only rank, and the reaper keeps its logs and exit record there."""
        import subprocess

        joined: list[str] = []
        for command in commands:
            joined += [NEXT, *command] if joined else list(command)
        mode = ["reap", "--relay"] if relay_orders else ["reap"]
        if rank_logs is not None:
            mode += ["--rank", rank_logs]
        reaper = [python, "-I", "-S", jobtree.__file__, *mode, "--", *joined]
        with open(log_path, "ab") as log:
            self._popen = subprocess.Popen(
                reaper,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=str(cwd),
                start_new_session=True,
                close_fds=True,
            )
        self.pid = self._popen.pid
        self._pidfd = os.pidfd_open(self.pid) if hasattr(os, "pidfd_open") else None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the job's user processes (SIGKILL: to every process)."""
        stdin = self._popen.stdin
        if stdin is None or self._popen.poll() is not None:
            return
        try:
            stdin.write(f"{int(signum)}\n".encode())
            stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the reaper has just exited

    def wait(self, timeout: float | None) -> int | None:
        """The reaper's exit status, or ``None`` if it is still running after ``timeout``."""
        if self._pidfd is not None and self._popen.returncode is None:
            select.select([self._pidfd], [], [], timeout)
            return self._popen.poll()
        try:
            return self._popen.wait(timeout)
        except Exception:  # subprocess.TimeoutExpired
            return None

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._popen.stdin is not None:
            with contextlib.suppress(OSError):
                self._popen.stdin.close()


def detach(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    data: bytes,
    log_path: str | Path,
    keep_fd: int,
) -> int:
    """Start a program that outlives this process (a detached run's supervisor), in a
    session of its own: ``data`` goes to its stdin, which is then closed; its output is
    appended to ``log_path``; the descriptor ``keep_fd`` stays open in it, at the same
    number. Returns its pid; a daemon thread reaps it should it end while we live."""
    import subprocess
    import threading

    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
            pass_fds=(keep_fd,),
        )
    threading.Thread(target=child.wait, name=f"fitdock-detached-{child.pid}", daemon=True).start()
    if child.stdin is not None:  # always, with stdin=PIPE
        with contextlib.suppress(BrokenPipeError), child.stdin:
            child.stdin.write(data)
    return child.pid


def reaper_argv(python: str, jobtree_path: str, rank_logs: str | None = None) -> list[str]:
    """The argv prefix of a reaper that runs elsewhere (in a container): it reads orders from
    its stdin and stops the job when stdin closes (``rank_logs``: see ``JobProcess``)."""
    rank = ["--rank", rank_logs] if rank_logs is not None else []
    return [python, "-I", "-S", jobtree_path, "reap", *rank, "--"]


def rank_wrapper_argv(
    python: str, log_dir: str | Path, jobtree_path: str | Path = jobtree.__file__
) -> list[str]:
    """The argv prefix that runs a command as one rank (see ``rank`` mode); ``jobtree_path``:
    a copy of ``jobtree.py`` where the job runs (a Slurm run keeps one in its folder)."""
    return [python, "-I", "-S", str(jobtree_path), RANK_MODE, str(log_dir), "--"]


def capture(argv: Sequence[str], timeout: float = 10.0, cwd: str | None = None) -> tuple[int, str]:
    """Run a short tool command (``mpirun --version``, ``git rev-parse``); return code, output."""
    code, out, err = tool(argv, timeout=timeout, cwd=cwd)
    return code, out + err


def tool(
    argv: Sequence[str],
    *,
    timeout: float = 10.0,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run a short tool command (``sbatch``, ``scontrol``); return code, stdout, stderr.
    A missing program or a time-out gives code 127 and the reason as stderr."""
    import subprocess

    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=None if env is None else dict(env),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def transfer(
    argv: Sequence[str],
    *,
    stdin: Path | None = None,
    stdout: Path | None = None,
    timeout: float = 600,
) -> tuple[int, str]:
    """Run a file-transfer command with a file as its stdin or stdout (staging a run to a
    host through its launch agent); return the exit code and stderr."""
    import subprocess

    source = open(stdin, "rb") if stdin else subprocess.DEVNULL  # noqa: SIM115 - closed below
    sink = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    try:
        done = subprocess.run(
            list(argv),
            stdin=source,
            stdout=sink,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    finally:
        for handle in (source, sink):
            if not isinstance(handle, int):
                handle.close()
    return done.returncode, done.stderr.decode(errors="replace")


def stream(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    logs: Sequence[Path] = (),
    cwd: str | Path | None = None,
) -> int:
    """Run a long tool command (a package install) to its end, appending its stdout and
    stderr, as they come, to each file in ``logs``; return its exit code (127 if it cannot
    start, 128 + signal if a signal ended it). It runs under the reaper, so it and its
    children stop when this process dies, even by SIGKILL."""
    import subprocess

    reaper = [sys.executable, "-I", "-S", jobtree.__file__, "reap", "--", *argv]
    sinks = [open(path, "ab") for path in logs]  # noqa: SIM115 - closed below
    try:
        with subprocess.Popen(
            reaper,
            stdin=subprocess.PIPE,  # held open: EOF tells the reaper that we died
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=None if cwd is None else str(cwd),
        ) as child:
            if child.stdout is not None:  # always, with stdout=PIPE
                out = child.stdout.fileno()
                for chunk in iter(lambda: os.read(out, 65536), b""):
                    _tee(sinks, chunk)
        return child.returncode
    finally:
        for sink in sinks:
            sink.close()


def _tee(sinks: Sequence[BinaryIO], chunk: bytes) -> None:
    for sink in sinks:
        sink.write(chunk)
        sink.flush()
