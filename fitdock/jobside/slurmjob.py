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
4. It writes ``slurm/attempt-<n>.exit.json`` (outcome, exit code) and, when
   ``common.decide_requeue`` says so, requeues the job (``scontrol requeue``): Slurm
   starts it again, which is step 1 of the next attempt.

The outcomes, the decision, log archiving and the checkpoint copy are ``common.py``'s,
which the supervisor side uses too (copied beside this file into ``<run>/slurm/``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

try:  # imported as fitdock.jobside.slurmjob (tests, the supervisor side)
    from fitdock.jobside import common
except ImportError:  # run as a copied script (-I -S): common.py lies beside it
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # type: ignore[no-redef]

Outcome = common.Outcome

KILL_WAIT = 5.0  # after the grace: the launcher is told to kill the step, then killed itself
POLL = 0.1


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
        self.stop: common.Outcome | None = None
        self.stop_detail = ""

    def path(self, *parts: str) -> str:
        return os.path.join(self.run_dir, *parts)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop is None:
            self.stop = Outcome.TIMED_OUT if signum == signal.SIGUSR2 else Outcome.TERMINATED
            self.stop_detail = f"signal {signal.Signals(signum).name} from Slurm"

    def prepare(self) -> dict[str, str]:
        env = dict(os.environ, FITDOCK_ATTEMPT=str(self.number))
        if self.number > 1:
            common.archive_logs(self.path(common.LOGS), self.number - 1)
            if common.copy_checkpoint(self.path(common.CHECKPOINTS), self.path(common.RESUME)):
                env["FITDOCK_RESUME_DIR"] = self.path(common.RESUME)
        return env

    def run(self) -> int:
        for signum in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        env = self.prepare()
        started = time.monotonic()
        common.write_json_atomic(
            self.path(common.SLURM, f"attempt-{self.number}.json"),
            {
                "attempt": self.number,
                "job_id": self.job_id,
                "nodes": os.environ.get("SLURM_JOB_NODELIST", ""),
                "batch_host": os.uname().nodename,
                "started_at": common.now_iso(),
                "resumed": "FITDOCK_RESUME_DIR" in env,
            },
        )
        with open(self.path(common.LOGS, common.LAUNCHER_LOG), "ab") as log:
            child = subprocess.Popen(
                self.command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        code = self._watch(child, started)
        outcome = self.stop or (Outcome.COMPLETED if code == 0 else Outcome.FAILED)
        if outcome is Outcome.TERMINATED or (self.stop is None and self._ranks_got_sigterm()):
            # SIGTERM from Slurm, not from us: scancel (the job is completing already) or a
            # preemption (the job still runs: Slurm signals it, then may end it unrequeued)
            state = self._job_state()
            print(f"fitdock: SIGTERM from Slurm; job state {state}", file=sys.stderr, flush=True)
            outcome = Outcome.PREEMPTED if state == "RUNNING" else Outcome.TERMINATED
            self.stop_detail = self.stop_detail or "SIGTERM from Slurm"
        requeue = common.decide_requeue(
            outcome,
            self.number,
            self.restarts,
            int(self.options["max_requeues"]),
            int(self.options["max_restarts"]),
        )
        record = {
            "attempt": self.number,
            "outcome": outcome.value,
            "exit_code": code,
            "detail": self.stop_detail,
            "requeued": requeue,
            "ended_at": common.now_iso(),
        }
        exit_path = self.path(common.SLURM, f"attempt-{self.number}.exit.json")
        common.write_json_atomic(exit_path, record)
        if requeue:
            failure = self._requeue()  # on success, Slurm requeues the job as this script ends
            if failure:
                failed = {**record, "requeued": False, "requeue_error": failure}
                common.write_json_atomic(exit_path, failed)
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
                self.stop = Outcome.TIMED_OUT
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
        exits = list(common.read_rank_exits(self.path(common.LOGS)).values())
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
        """Empty when ``scontrol requeue`` worked, else its message. The requeue sends
        SIGTERM to every process of the job, this ``scontrol`` too, often before it has
        read slurmctld's answer: it runs with SIGTERM ignored (inherited through exec)."""
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            done = subprocess.run(
                ["scontrol", "requeue", self.job_id],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
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
