"""The one process boundary, job side: the program every job runs under.

Run as a script (``python -I -S jobtree.py MODE ...``, started by ``process.py``), so
it imports only the standard library, and little of it: it starts every rank. Two
modes:

``reap``  The job's root (``reap [--relay] [--rank LOGS] -- ...``), in a session of its
          own. It marks itself a child subreaper, so every descendant, however
          orphaned, stays in its tree. It runs the job's command(s) (several,
          split by ``NEXT``, run side by side; one failing stops the others) and
          reads one-line orders from stdin:
          a signal number is sent to the job's user processes (9 to them first,
          then, once their wrappers have recorded it, to every descendant).
          EOF on stdin means the supervisor died: it then
          terminates the tree (SIGTERM, then SIGKILL after ``ORPHAN_GRACE``).
          When the commands have exited, leftovers are killed and the reaper
          exits with the first non-zero status (128 + signal for a signal).
          With ``--rank LOGS`` its one command is the job's only rank: the reaper
          does the rank wrapper's work itself (logs, rank variables, exit record),
          which spares a job of one process an interpreter start.
``rank``  Wraps one rank: maps MPI (or srun) rank variables to RANK/WORLD_SIZE/
          LOCAL_RANK, sends the script's stdout/stderr to ``rank_<r>.stdout.log`` and
          ``.stderr.log``, forwards the signals it gets (from mpirun, say) to the
          script (unless FITDOCK_RANK_FORWARD=0: Slurm signals the script itself),
          and records the exit status in ``rank_<r>.exit.json``.

Orders to the tree spare the rank wrappers (they must live to record exit
codes), so a script receives each signal exactly once.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` adds enums, 3 ms at every rank's start
import os
import select
import sys
import time

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs every rank 3 ms
if TYPE_CHECKING:  # the script modes import as little as possible: they start every rank
    from collections.abc import Sequence

ORPHAN_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when the supervisor is gone
LEFTOVER_GRACE = 0.5  # the same, for processes left behind after the command exits
RANK_MODE = "fitdock-rank"
KILL_RECORD_WAIT = 1.0  # after SIGKILL to the scripts, for their wrappers to record it
RELAY_KILL_WAIT = 5.0  # after relaying SIGKILL, kill what is left here (e.g. a docker client)
NEXT = "--fitdock-next--"  # separates the commands of a job that runs several (one per host)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_PR_SET_CHILD_SUBREAPER = 36


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
    """A rank wrapper: ``python -I -S jobtree.py fitdock-rank ...`` (``process.rank_wrapper_argv``).
    Only there: a launcher's command line holds the words too (``mpirun ... fitdock-rank``),
    and taking it for a wrapper would signal the wrappers, which pass it on a second time."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = handle.read().split(b"\0", 5)
    except OSError:
        return False
    return len(words) > 4 and words[4] == RANK_MODE.encode()


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


def _spawn(
    command: list[str], env: dict[str, str], relay: list[int] | None, logs: str | None = None
) -> int:
    """Start one command: stdin from /dev/null, or (relay) from a pipe we keep the end of;
    with ``logs`` (the only rank), stdout and stderr to that rank's log files."""
    if relay is None:
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        if logs is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            rank = env["RANK"]
            actions.append((os.POSIX_SPAWN_OPEN, 1, f"{logs}rank_{rank}.stdout.log", flags, 0o644))
            actions.append((os.POSIX_SPAWN_OPEN, 2, f"{logs}rank_{rank}.stderr.log", flags, 0o644))
        return os.posix_spawnp(command[0], command, env, file_actions=actions)
    read, write = os.pipe()
    try:
        pid = os.posix_spawnp(
            command[0], command, env, file_actions=[(os.POSIX_SPAWN_DUP2, read, 0)]
        )
    finally:
        os.close(read)
    relay.append(write)
    return pid


def reap_main(argv: list[str], relay_orders: bool = False, rank_logs: str | None = None) -> int:
    """Run the job's command(s); the job ends when all have exited. Its status is the
    first non-zero status, and a command failing stops the others (fail-fast).

    With ``relay_orders`` the commands are themselves reapers (inside containers): orders
    are written to their stdin instead of signalling processes here, and our death closes
    their stdin, which stops them."""
    me = os.getpid()
    _become_subreaper()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: _stop_and_exit(me))
    env = dict(os.environ, FITDOCK_REAPER_PID=str(me))
    logs = None if rank_logs is None else rank_logs.rstrip("/") + "/"
    if logs is not None:
        env.update(rank_env())
    relay: list[int] | None = [] if relay_orders else None
    running: dict[int, int] = {}  # pidfd -> pid
    started = time.time()
    sent: list[int] = []  # the orders passed on: the signals the only rank received
    for command in split_commands(argv):
        try:
            pid = _spawn(command, env, relay, logs)
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
                sent.append(int(line))
                if relay is None:
                    _obey(me, mains, int(line))
                else:
                    _relay(relay, line + b"\n")
                    if int(line) == signal.SIGKILL:  # if the inner reapers cannot, we will
                        kill_at = time.monotonic() + RELAY_KILL_WAIT
        _reap_all()
        for fd, pid in list(running.items()):
            if pid in _EXITED:
                os.close(fd)
                del running[fd]
                if logs is not None:
                    write_exit(logs, env["RANK"], pid, _EXITED[pid], started, sent)
                status = exit_status(_EXITED[pid])
                if status and failed is None:
                    failed = status
                    if running:  # fail-fast across the commands
                        _send(_user_processes(me, mains), signal.SIGTERM)
                        kill_at = time.monotonic() + ORPHAN_GRACE
        if kill_at is not None and running and time.monotonic() >= kill_at:
            _kill_all(me)
    return _finish(me, failed or 0)


def _relay(pipes: list[int], order: bytes) -> None:
    for fd in pipes:
        try:
            os.write(fd, order)
        except OSError:
            pass  # that command has ended


def _obey(me: int, mains: set[int], signum: int) -> None:
    _send(_user_processes(me, mains), signum)
    if signum == signal.SIGKILL:
        _let_wrappers_record(me)
        _kill_all(me)


def _let_wrappers_record(me: int) -> None:
    """After SIGKILL to the ranks' scripts: give their wrappers (spared) a moment to write
    the exit records that say so, before everything left is killed."""
    end = time.monotonic() + KILL_RECORD_WAIT
    while time.monotonic() < end:
        if not any(_is_rank_wrapper(pid) for pid in descendants(me)):
            return
        time.sleep(0.02)
        _reap_all()


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
    """RANK/WORLD_SIZE/LOCAL_RANK from whichever MPI (or torchrun, or srun) started us."""
    rank = _first(
        ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "HOROVOD_RANK", "RANK", "SLURM_PROCID"),
        "0",
    )
    size = _first(
        ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "HOROVOD_SIZE", "WORLD_SIZE", "SLURM_NTASKS"), "1"
    )
    local = _first(
        (
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "MPI_LOCALRANKID",
            "HOROVOD_LOCAL_RANK",
            "LOCAL_RANK",
            "SLURM_LOCALID",
        ),
        rank,
    )
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "")  # e.g. "2", not "2(x3)"
    local_size = _first(
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "HOROVOD_LOCAL_SIZE", "LOCAL_WORLD_SIZE"),
        per_node if per_node.isdigit() else size,
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
    # Under srun, Slurm signals every process of the step, the script too: forwarding would
    # deliver each signal twice (the slurm target sets FITDOCK_RANK_FORWARD=0 there).
    forward = os.environ.get("FITDOCK_RANK_FORWARD") != "0"
    received: list[int] = []
    while True:
        info = signal.sigwaitinfo(blocked)
        if info.si_signo != signal.SIGCHLD:
            received.append(info.si_signo)
            if forward:
                _send([pid], info.si_signo)
            continue
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            break
    return write_exit(logs, rank, pid, status, started, received)


def write_exit(
    logs: str, rank: str, pid: int, status: int, started: float, received: list[int]
) -> int:
    """``rank_<r>.exit.json``: how the rank's script ended (read by the judge, fail-fast
    and the Slurm driver); returns its shell-style exit code."""
    code = exit_status(status)
    signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else "null"
    record = (
        f'{{"rank": {int(rank)}, "exit_code": {code}, "signal": {signum}, "pid": {pid}, '
        f'"host": "{os.uname().nodename}", "started": {started}, "ended": {time.time()}, '
        f'"signals_received": {sorted(set(received))}}}'
    )
    target = f"{logs}rank_{rank}.exit.json"
    with open(target + ".tmp", "w") as handle:
        handle.write(record)
    os.replace(target + ".tmp", target)
    return code


def main(args: list[str]) -> int:
    mode, rest = args[0], args[1:]
    if mode == "reap":
        options = rest[: rest.index("--")]
        rank_logs = options[options.index("--rank") + 1] if "--rank" in options else None
        return reap_main(
            rest[rest.index("--") + 1 :], relay_orders="--relay" in options, rank_logs=rank_logs
        )
    if mode == RANK_MODE:
        return rank_main(rest[0], rest[rest.index("--") + 1 :])
    print(f"jobtree.py: unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
