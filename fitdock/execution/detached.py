"""Detached supervision: ``fit(wait=False)`` and ``fitdock run --detach``.

The caller creates the run as usual, then starts its supervisor as a process of its own,
in a session of its own, and returns. Nothing is lost on the way:

* the run's ``supervisor.lock``, taken by the caller, is handed over as the same open
  file (its descriptor is passed to the new process), so it is never free in between and
  a reader never takes the run for lost;
* what the supervisor needs (the spec, the target, the plan, the resume folder) goes to it
  pickled through its stdin, from this process to its child, never through a file;
* that process runs the ordinary ``Supervisor``: it is the reaper's parent and holds the
  reaper's order pipe, so every promise holds as in the caller: deadline and grace,
  cancel (the run's ``cancel`` file, or SIGTERM to the supervisor), fail-fast, the hang
  watchdog, restarts, MLflow mirroring. If it dies, even by SIGKILL, the reaper sees its
  pipe close and stops the job, and the freed lock tells readers the run was lost.

Its own output (a traceback, should it ever fail) is appended to ``logs/launcher.log``;
the record's ``supervisor`` names its pid once it has started.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from fitdock.execution.supervisor import Supervisor, release_snapshot
from fitdock.process import detach
from fitdock.runs.record import ErrorReason, RunError, SupervisorInfo
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir, SupervisorLock
from fitdock.shared import now_iso
from fitdock.specs.job import JobSpec
from fitdock.targets.base import Target
from fitdock.targets.plan import LaunchPlan

# What the new process runs: fitdock from where this process has it, in place of the
# current folder that `-c` puts first (a user's `signal.py` there must not shadow the
# standard library), and without putting that folder on the job's PYTHONPATH. The run's id
# is not on its command line on purpose: the run's processes are gone when its record ends,
# and tests look for them by it.
_BOOT = (
    "import sys; sys.path[0] = sys.argv[1]; "
    "from fitdock.execution.detached import main; sys.exit(main(sys.argv[2:]))"
)
_FITDOCK_PARENT = str(Path(__file__).resolve().parents[2])


class PassedLock(SupervisorLock):
    """The supervisor lock, by a descriptor that can be handed to another process."""

    def fileno(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not held")
        return self._fd

    @classmethod
    def inherited(cls, path: Path, fd: int) -> PassedLock:
        """The lock the starting process held, open here as ``fd``."""
        os.set_inheritable(fd, False)  # the job must not hold it: it would outlive us
        lock = cls(path)
        lock._fd = fd
        return lock


@dataclass(frozen=True)
class Handoff:
    """What the detached supervisor needs besides the run folder."""

    spec: JobSpec
    target: Target
    plan: LaunchPlan
    resume_dir: Path | None


def start(run: RunDir, handoff: Handoff, lock: PassedLock) -> int:
    """Start the detached supervisor of ``run``, hand it ``lock`` and let go of it here;
    the supervisor's pid."""
    data = os.fsencode(run.path) + b"\n" + pickle.dumps(handoff, pickle.HIGHEST_PROTOCOL)
    fd = lock.fileno()
    argv = [sys.executable, "-c", _BOOT, _FITDOCK_PARENT, str(fd)]
    pid = detach(argv, env=os.environ, data=data, log_path=run.launcher_log, keep_fd=fd)
    lock.release()  # the child holds the same open file: the lock stays held
    return pid


def main(argv: list[str]) -> int:
    """The detached supervisor: ``<lock fd>``; on stdin the run folder, a newline and the
    pickled ``Handoff``."""
    fd = int(argv[0])
    folder, _, data = sys.stdin.buffer.read().partition(b"\n")
    _stdin_from_devnull()
    run = RunDir(Path(os.fsdecode(folder)))
    lock = PassedLock.inherited(run.lock_path, fd)
    try:
        handoff: Handoff = pickle.loads(data)
        supervisor = Supervisor(
            run, handoff.spec, lock, handoff.target, handoff.plan, handoff.resume_dir
        )
        stop = _cancel_on_signal(supervisor)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal is no reason to stop
        with run.edit() as record:
            record.supervisor = SupervisorInfo(pid=os.getpid(), host=socket.gethostname())
    except BaseException as exc:
        _fail(run, exc)
        raise
    supervisor.run()
    return 0


def _cancel_on_signal(supervisor: Supervisor) -> Callable[[int, FrameType | None], None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        supervisor.cancel()  # the watch stops the job: SIGTERM, the grace, SIGKILL

    return stop


def _stdin_from_devnull() -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def _fail(run: RunDir, exc: BaseException) -> None:
    """The supervisor could not start: say so in the record (the lock is still ours)."""
    release_snapshot(run)
    with run.edit() as record:
        if not record.status.is_terminal:
            record.status = RunStatus.FAILED
            record.ended_at = now_iso()
            record.error = RunError(
                reason=ErrorReason.SUPERVISOR_ERROR,
                message=f"the detached supervisor could not start: {exc!r}",
            )
