"""The job side of a Slurm run: the program the generated sbatch script ``exec``s.

Run as a script (``python -I -S slurmjob.py ...``, copied into ``<run>/slurm/``), so it
imports only the standard library. Each time Slurm starts the batch script (the first
time, and after every requeue) this program runs one *attempt*:

1. Attempt ``n`` is ``SLURM_RESTART_COUNT + 1``. From the second on, the logs of the
   previous attempt move to ``logs/attempt-<n-1>/`` and the run's latest checkpoint is
   copied, read-only, to ``resume/`` (``FITDOCK_RESUME_DIR``), as on every other target.
2. It starts the launch command (``srun ...`` or ``mpirun ...``), output to
   ``logs/launcher.log``, and records ``slurm/attempt-<n>.json``.
3. A stop comes from the time limit (fitdock's own timer at ``--time-limit`` seconds, or
   Slurm's ``--signal=B:USR2@...`` if that comes first) or from SIGTERM (``scancel``,
   preemption). The ranks then get SIGTERM (``scancel --signal=TERM`` reaches every task
   of the job's steps on every node; with ``mpirun`` it goes to mpirun, which passes it
   on), ``--grace`` seconds to save a checkpoint, then the step is killed.
4. It writes ``slurm/attempt-<n>.exit.json`` (outcome, exit code) and, when ``decide``
   says so, requeues the job (``scontrol requeue``): Slurm starts it again, which is
   step 1 of the next attempt.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time

KILL_WAIT = 5.0  # after the grace: the launcher is told to kill the step, then killed itself
POLL = 0.1
COMPLETED, FAILED, TIMEOUT = "completed", "failed", "timeout"
TERMINATED, PREEMPTED = "terminated", "preempted"  # by scancel; by Slurm for another job


def decide(outcome: str, attempt: int, restarts: int, max_requeues: int, max_restarts: int) -> bool:
    """Whether to requeue after an attempt (pure). ``restarts``: how often Slurm has started
    the job again already (preemptions included). A time-out or a preemption requeues while
    ``restarts < max_requeues``; a failure also needs ``attempt <= max_restarts``. A
    cancelled job ends."""
    if restarts >= max_requeues:
        return False
    if outcome in (TIMEOUT, PREEMPTED):
        return True
    return outcome == FAILED and attempt <= max_restarts


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def write_json(path: str, data: dict) -> None:  # type: ignore[type-arg]
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def _writable(func, path, *_):  # type: ignore[no-untyped-def]
    os.chmod(os.path.dirname(path), 0o700)
    func(path)


def archive_logs(logs: str, attempt: int) -> None:
    """Move the files of ``logs/`` (an earlier attempt's) to ``logs/attempt-<attempt>/``."""
    names = [n for n in os.listdir(logs) if os.path.isfile(os.path.join(logs, n))]
    if not names:
        return
    target = os.path.join(logs, f"attempt-{attempt}")
    os.makedirs(target, exist_ok=True)
    for name in names:
        os.replace(os.path.join(logs, name), os.path.join(target, name))


def copy_checkpoint(checkpoints: str, resume: str) -> bool:
    """``resume/`` becomes a read-only copy of ``checkpoints/``; False when there is none."""
    if not os.path.isdir(checkpoints) or not os.listdir(checkpoints):
        return False
    if os.path.exists(resume):
        if sys.version_info >= (3, 12):
            shutil.rmtree(resume, onexc=_writable)
        else:
            shutil.rmtree(resume, onerror=_writable)
    shutil.copytree(checkpoints, resume)
    for folder, _dirs, files in os.walk(resume):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)
    return True


# ---------------------------------------------------------------------------------------------
# One attempt
# ---------------------------------------------------------------------------------------------
class Attempt:
    def __init__(self, options: dict, command: list[str]) -> None:  # type: ignore[type-arg]
        self.run_dir = options["run_dir"]
        self.options = options
        self.command = command
        self.job_id = os.environ.get("SLURM_JOB_ID", "")
        self.restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        self.number = self.restarts + 1
        self.stop: str | None = None
        self.stop_detail = ""

    def path(self, *parts: str) -> str:
        return os.path.join(self.run_dir, *parts)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop is None:
            self.stop = TIMEOUT if signum == signal.SIGUSR2 else TERMINATED
            self.stop_detail = f"signal {signal.Signals(signum).name} from Slurm"

    def prepare(self) -> dict[str, str]:
        env = dict(os.environ, FITDOCK_ATTEMPT=str(self.number))
        if self.number > 1:
            archive_logs(self.path("logs"), self.number - 1)
            if copy_checkpoint(self.path("checkpoints"), self.path("resume")):
                env["FITDOCK_RESUME_DIR"] = self.path("resume")
        return env

    def run(self) -> int:
        for signum in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        env = self.prepare()
        started = time.monotonic()
        write_json(
            self.path("slurm", f"attempt-{self.number}.json"),
            {
                "attempt": self.number,
                "job_id": self.job_id,
                "nodes": os.environ.get("SLURM_JOB_NODELIST", ""),
                "batch_host": os.uname().nodename,
                "started_at": now_iso(),
                "resumed": "FITDOCK_RESUME_DIR" in env,
            },
        )
        with open(self.path("logs", "launcher.log"), "ab") as log:
            child = subprocess.Popen(
                self.command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        code = self._watch(child, started)
        outcome = self.stop or (COMPLETED if code == 0 else FAILED)
        if outcome == TERMINATED or (self.stop is None and self._ranks_got_sigterm()):
            # SIGTERM from Slurm, not from us: scancel (the job is completing already) or a
            # preemption (the job still runs: Slurm signals it, then may end it unrequeued)
            state = self._job_state()
            print(f"fitdock: SIGTERM from Slurm; job state {state}", file=sys.stderr, flush=True)
            outcome = PREEMPTED if state == "RUNNING" else TERMINATED
            self.stop_detail = self.stop_detail or "SIGTERM from Slurm"
        requeue = decide(
            outcome,
            self.number,
            self.restarts,
            int(self.options["max_requeues"]),
            int(self.options["max_restarts"]),
        )
        record = {
            "attempt": self.number,
            "outcome": outcome,
            "exit_code": code,
            "detail": self.stop_detail,
            "requeued": requeue,
            "ended_at": now_iso(),
        }
        exit_path = self.path("slurm", f"attempt-{self.number}.exit.json")
        write_json(exit_path, record)
        if requeue:
            failure = self._requeue()  # on success, Slurm requeues the job as this script ends
            if failure:
                write_json(exit_path, {**record, "requeued": False, "requeue_error": failure})
        return code

    def _watch(self, child: subprocess.Popen, started: float) -> int:  # type: ignore[type-arg]
        limit = float(self.options["time_limit"] or 0)
        grace = float(self.options["grace"])
        stopping_at: float | None = None
        killed_at: float | None = None
        while True:
            try:
                return _code(child.wait(POLL))
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if self.stop is None and limit and now - started >= limit:
                self.stop = TIMEOUT
                self.stop_detail = f"exceeded max_run_duration_seconds={limit:g}"
            if self.stop is not None and stopping_at is None:
                stopping_at = now
                self._terminate_ranks(child)
            elif stopping_at is not None and killed_at is None and now - stopping_at >= grace:
                killed_at = now
                child.terminate()  # srun: "forcing job termination" kills the step's tasks
            elif killed_at is not None and now - killed_at >= KILL_WAIT:
                child.kill()

    def _terminate_ranks(self, child: subprocess.Popen) -> None:  # type: ignore[type-arg]
        if self.options["stop"] == "mpirun" or not self.job_id:
            child.send_signal(signal.SIGTERM)
            return
        subprocess.run(
            ["scancel", "--quiet", "--signal=TERM", self.job_id],
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def _ranks_got_sigterm(self) -> bool:
        """True when a rank was sent SIGTERM and none failed before it was (srun's
        --kill-on-bad-exit also sends SIGTERM, to the ranks left after one failed)."""
        exits = []
        logs = self.path("logs")
        for name in os.listdir(logs):
            if name.startswith("rank_") and name.endswith(".exit.json"):
                try:
                    with open(os.path.join(logs, name)) as handle:
                        exits.append(json.load(handle))
                except (OSError, ValueError):
                    continue
        signalled = [e for e in exits if signal.SIGTERM in (e.get("signals_received") or [])]
        failed_alone = [e for e in exits if e["exit_code"] != 0 and e not in signalled]
        return bool(signalled) and not failed_alone

    def _job_state(self) -> str:
        done = subprocess.run(
            ["scontrol", "show", "job", "-o", self.job_id],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        for word in done.stdout.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return ""

    def _requeue(self) -> str:
        """Empty when ``scontrol requeue`` worked, else its message."""
        done = subprocess.run(
            ["scontrol", "requeue", self.job_id],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return ""
        print(f"fitdock: scontrol requeue failed: {done.stderr.strip()}", file=sys.stderr)
        return done.stderr.strip() or f"exit code {done.returncode}"


def _code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    split = argv.index("--")
    options = {
        "time_limit": "0",
        "grace": "30",
        "max_requeues": "3",
        "max_restarts": "0",
        "stop": "scancel",
    }
    words = argv[:split]
    for key, value in zip(words[::2], words[1::2], strict=False):
        options[key.lstrip("-").replace("-", "_")] = value
    if "run_dir" not in options or not argv[split + 1 :]:
        raise SystemExit("usage: slurmjob.py --run-dir DIR [--OPTION VALUE ...] -- COMMAND...")
    return options, argv[split + 1 :]


def main(argv: list[str]) -> int:
    options, command = parse(argv)
    return Attempt(options, command).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
