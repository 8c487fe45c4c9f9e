"""The one process boundary: spawn, signal and reap job processes.

Nothing else in fitdock calls ``subprocess`` or ``os.kill``. This file is also
run as a script (``python -I -S process.py MODE ...``), so it imports only the
standard library. Two helper modes run inside the job:

``reap``  The job's root, in a session of its own. It marks itself a child
          subreaper, so every descendant, however orphaned, stays in its tree.
          It runs the job command and reads one-line orders from stdin:
          a signal number is sent to the job's user processes (9 to all of its
          descendants). EOF on stdin means the supervisor died: it then
          terminates the tree (SIGTERM, then SIGKILL after ``ORPHAN_GRACE``).
          When the command exits, leftovers are killed and the reaper exits
          with the command's status (128 + signal for a signal).
``rank``  Wraps one rank: maps MPI rank variables to RANK/WORLD_SIZE/LOCAL_RANK,
          sends the script's stdout/stderr to ``rank_<r>.stdout.log`` and
          ``.stderr.log``, forwards the signals it gets (from mpirun, say) to the
          script, and records the exit status in ``rank_<r>.exit.json``.

Orders to the tree spare the rank wrappers (they must live to record exit
codes), so a script receives each signal exactly once.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs every rank 3 ms
if TYPE_CHECKING:  # the script modes import as little as possible: they start every rank
    from collections.abc import Mapping, Sequence
    from pathlib import Path

ORPHAN_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when the supervisor is gone
LEFTOVER_GRACE = 0.5  # the same, for processes left behind after the command exits
RANK_MODE = "fitdock-rank"
NEXT = "--fitdock-next--"  # separates the commands of a job that runs several (one per host)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_PR_SET_CHILD_SUBREAPER = 36


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
    ) -> None:
        import subprocess

        joined: list[str] = []
        for command in commands:
            joined += [NEXT, *command] if joined else list(command)
        reaper = [python, "-I", "-S", __file__, "reap", "--", *joined]
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
            try:
                self._popen.stdin.close()
            except OSError:
                pass


def rank_wrapper_argv(python: str, log_dir: str | Path) -> list[str]:
    """The argv prefix that runs a command as one rank (see ``rank`` mode)."""
    return [python, "-I", "-S", __file__, RANK_MODE, str(log_dir), "--"]


def capture(argv: Sequence[str], timeout: float = 10.0, cwd: str | None = None) -> tuple[int, str]:
    """Run a short tool command (``mpirun --version``, ``git rev-parse``); return code, output."""
    import subprocess

    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, done.stdout + done.stderr


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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_status(status: int) -> int:
    """A waitpid status as a shell-style code: the exit code, or 128 + signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# ---------------------------------------------------------------------------------------------
# Process tree (read from /proc)
# ---------------------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    children = _children_map()
    found: list[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _is_rank_wrapper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return RANK_MODE.encode() in handle.read().split(b"\0")
    except OSError:
        return False


def _user_processes(root: int, mains: set[int]) -> list[int]:
    """Descendants of ``root`` without the rank wrappers and the launcher processes above
    them; with no wrappers in the tree, every descendant."""
    children = _children_map()
    everything: list[int] = []
    stack = list(children.get(root, []))
    wrappers: list[int] = []
    while stack:
        pid = stack.pop()
        everything.append(pid)
        if _is_rank_wrapper(pid):
            wrappers.append(pid)
        stack.extend(children.get(pid, []))
    if not wrappers:
        return everything
    under: list[int] = []
    stack = [child for pid in wrappers for child in children.get(pid, [])]
    while stack:
        pid = stack.pop()
        under.append(pid)
        stack.extend(children.get(pid, []))
    # Orphans re-parented to the reaper (their wrapper died) are user processes too.
    orphans = [p for p in children.get(root, []) if p not in mains and p not in wrappers]
    return under + orphans


def _send(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # already gone


# ---------------------------------------------------------------------------------------------
# reap mode
# ---------------------------------------------------------------------------------------------
def _become_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


_EXITED: dict[int, int] = {}  # pid -> wait status of every child this reaper has reaped


def _reap_all() -> None:
    """Reap every exited child (orphans re-parented to us included), remembering statuses."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _EXITED[pid] = status


def _stop_tree(me: int, grace: float) -> None:
    _send(descendants(me), signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        _reap_all()
        if not descendants(me):
            return
        time.sleep(0.05)
    _kill_all(me)


def _kill_all(me: int) -> None:
    for _ in range(20):  # a process may fork while being killed: repeat until none is left
        left = descendants(me)
        if not left:
            return
        _send(left, signal.SIGKILL)
        time.sleep(0.02)
        _reap_all()


def split_commands(argv: list[str]) -> list[list[str]]:
    """``a b NEXT c d`` -> ``[[a, b], [c, d]]``: the reaper can run several commands."""
    commands: list[list[str]] = [[]]
    for word in argv:
        if word == NEXT:
            commands.append([])
        else:
            commands[-1].append(word)
    return [command for command in commands if command]


def reap_main(argv: list[str]) -> int:
    """Run the job's command(s); the job ends when all have exited. Its status is the
    first non-zero status, and a command failing stops the others (fail-fast)."""
    me = os.getpid()
    _become_subreaper()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: _stop_and_exit(me))
    env = dict(os.environ, FITDOCK_REAPER_PID=str(me))
    devnull = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    running: dict[int, int] = {}  # pidfd -> pid
    for command in split_commands(argv):
        try:
            pid = os.posix_spawnp(command[0], command, env, file_actions=devnull)
        except OSError as exc:
            print(f"fitdock: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
            _stop_tree(me, LEFTOVER_GRACE)
            return 127
        running[os.pidfd_open(pid)] = pid
    mains = set(running.values())
    control = sys.stdin.fileno()
    pending = b""
    failed: int | None = None
    kill_at: float | None = None
    while running:
        ready, _, _ = select.select([*running, control], [], [], 0.5)
        if control in ready:
            chunk = os.read(control, 4096)
            if not chunk:  # the supervisor is gone
                _stop_tree(me, ORPHAN_GRACE)
                return 137
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _obey(me, mains, int(line))
        _reap_all()
        for fd, pid in list(running.items()):
            if pid in _EXITED:
                os.close(fd)
                del running[fd]
                status = exit_status(_EXITED[pid])
                if status and failed is None:
                    failed = status
                    if running:  # fail-fast across the commands
                        _send(_user_processes(me, mains), signal.SIGTERM)
                        kill_at = time.monotonic() + ORPHAN_GRACE
        if kill_at is not None and running and time.monotonic() >= kill_at:
            _kill_all(me)
    return _finish(me, failed or 0)


def _obey(me: int, mains: set[int], signum: int) -> None:
    if signum == signal.SIGKILL:
        _kill_all(me)
    else:
        _send(_user_processes(me, mains), signum)


def _finish(me: int, code: int) -> int:
    if descendants(me):
        _stop_tree(me, LEFTOVER_GRACE)
    return code


def _stop_and_exit(me: int) -> None:
    _stop_tree(me, ORPHAN_GRACE)
    os._exit(137)


# ---------------------------------------------------------------------------------------------
# rank mode
# ---------------------------------------------------------------------------------------------
def _first(names: Sequence[str], default: str) -> str:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


def rank_env() -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK from whichever MPI (or torchrun) started us."""
    rank = _first(("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "HOROVOD_RANK", "RANK"), "0")
    size = _first(("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "HOROVOD_SIZE", "WORLD_SIZE"), "1")
    local = _first(
        ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "HOROVOD_LOCAL_RANK", "LOCAL_RANK"), rank
    )
    local_size = _first(
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "HOROVOD_LOCAL_SIZE", "LOCAL_WORLD_SIZE"),
        size,
    )
    return {
        "RANK": rank,
        "WORLD_SIZE": size,
        "LOCAL_RANK": local,
        "LOCAL_WORLD_SIZE": local_size,
        "SM_CURRENT_HOST": os.uname().nodename,  # the machine this rank runs on
    }


def rank_main(log_dir: str, argv: list[str]) -> int:
    env = rank_env()
    rank = env["RANK"]
    logs = log_dir.rstrip("/") + "/"
    blocked = {*FORWARDED, signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    out = os.open(f"{logs}rank_{rank}.stdout.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    err = os.open(f"{logs}rank_{rank}.stderr.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    started = time.time()
    pid = os.fork()
    if pid == 0:  # the rank's script
        try:
            os.dup2(out, 1)
            os.dup2(err, 2)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.execvpe(argv[0], argv, {**os.environ, **env})
        except OSError as exc:
            os.write(2, f"fitdock: cannot run {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127)
    os.close(out)
    os.close(err)
    while True:
        info = signal.sigwaitinfo(blocked)
        if info.si_signo != signal.SIGCHLD:
            _send([pid], info.si_signo)
            continue
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            break
    code = exit_status(status)
    signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else "null"
    record = (
        f'{{"rank": {int(rank)}, "exit_code": {code}, "signal": {signum}, "pid": {pid}, '
        f'"host": "{os.uname().nodename}", "started": {started}, "ended": {time.time()}}}'
    )
    target = f"{logs}rank_{rank}.exit.json"
    with open(target + ".tmp", "w") as handle:
        handle.write(record)
    os.replace(target + ".tmp", target)
    return code


def main(args: list[str]) -> int:
    mode, rest = args[0], args[1:]
    if mode == "reap":
        return reap_main(rest[rest.index("--") + 1 :])
    if mode == RANK_MODE:
        return rank_main(rest[0], rest[rest.index("--") + 1 :])
    print(f"process.py: unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
