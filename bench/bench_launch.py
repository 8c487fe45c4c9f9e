"""Launch overhead and timeout precision of fitdock, against the raw tools and its peers.

    python bench/bench_launch.py [--repeat N] [--json PATH]

Everything is measured in one process, in one run, round-robin (one sample of each case
per round, so drift hits every case alike); the medians of the rounds after a warm-up
round are reported. See bench/README.md for what each line means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fitdock import Estimator, Run

TARGET_ADDED_MS = 150.0
TARGET_PEER_RATIO = 0.2
TARGET_TIMEOUT_S = 0.5
MAX_RUN_S = 1.0
GRACE_S = 1.0
WARMUP = 1
PEER_POLL_S = 0.01  # the "polled" peer variants ask this often whether their job ended
TORCHX_WAIT_S = 1.0  # the wait_interval `torchx run` itself passes to Runner.wait()
FIT_LIMIT_S = 30.0  # a fit() still running after this is counted as hung, and left behind
WATCH_LIMIT_S = 30.0  # give up on a (c) process that outlives this

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

Case = Callable[[], float]  # runs one job, returns its wall time in seconds


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


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run in ``folder`` (TorchX's local_cwd scheduler runs jobs in the current directory)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


# ---------------------------------------------------------------------------------------------
# (a), (b): launch cases
# ---------------------------------------------------------------------------------------------
def python_case(work: Path) -> Case:
    def run() -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "noop.py"], cwd=work, check=True)
        return time.perf_counter() - start

    return run


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


def fitdock_case(work: Path, report: Report, ranks: int) -> Case:
    from fitdock import Estimator, Mpi, RunStatus

    options: dict[str, Any] = {}
    if ranks > 1:
        options = {"process_count_per_node": ranks, "distributed_training": Mpi()}

    def case() -> float:
        estimator = Estimator(work, entry_script="noop.py", user_managed=True, **options)
        fitted = fit_within(estimator, FIT_LIMIT_S, report)
        run = fitted.run
        if run is not None and run.status is not RunStatus.COMPLETED:
            error = (run.record.get("error") or {}).get("message")
            report.warn(f"{ranks}-rank no-op run {run.id} ended {run.status}: {error}")
        return fitted.end - fitted.start

    return case


def mpi_launcher() -> str | None:
    """The launcher fitdock would pick for ``Mpi()``: beside this interpreter, else on PATH."""
    try:
        from fitdock import Mpi
        from fitdock.launchers.mpi import find_launcher

        return find_launcher(Mpi()).path
    except Exception:  # fitdock's internals moved, or no MPI at all
        beside = Path(sys.executable).parent / "mpiexec"
        return str(beside) if beside.is_file() else None


def mpiexec_case(work: Path, launcher: str, ranks: int) -> Case:
    argv = [launcher, "-n", str(ranks), "-launcher", "fork", sys.executable, "noop.py"]

    def run() -> float:
        start = time.perf_counter()
        subprocess.run(argv, cwd=work, check=True, stdin=subprocess.DEVNULL)
        return time.perf_counter() - start

    return run


def submitit_cases(work: Path, folder: Path) -> dict[str, Case]:
    import submitit

    executor = submitit.LocalExecutor(folder=folder)
    command = submitit.helpers.CommandFunction([sys.executable, "noop.py"], verbose=False, cwd=work)

    def run(poll: bool) -> float:
        start = time.perf_counter()
        job = executor.submit(command)
        while poll and not job.done():
            time.sleep(PEER_POLL_S)
        job.result()  # without polling first: submitit's own wait, which checks every second
        return time.perf_counter() - start

    return {"submitit": lambda: run(poll=False), "submitit_polled": lambda: run(poll=True)}


def torchx_cases(work: Path, log_dir: Path, stack: contextlib.ExitStack) -> dict[str, Case]:
    from torchx import specs
    from torchx.runner import get_runner

    runner = stack.enter_context(get_runner())
    role = specs.Role(name="noop", image=str(work), entrypoint=sys.executable, args=["noop.py"])
    app = specs.AppDef(name="noop", roles=[role])

    def run(interval: float) -> float:
        start = time.perf_counter()
        handle = runner.run(app, scheduler="local_cwd", cfg={"log_dir": str(log_dir)})
        status = runner.wait(handle, wait_interval=interval)
        elapsed = time.perf_counter() - start
        if status is None or status.state != specs.AppState.SUCCEEDED:
            raise RuntimeError(f"torchx no-op job {handle} ended {status}")
        return elapsed

    return {"torchx": lambda: run(TORCHX_WAIT_S), "torchx_polled": lambda: run(PEER_POLL_S)}


def launch_cases(
    work: Path, scratch: Path, report: Report, stack: contextlib.ExitStack
) -> dict[str, Case]:
    cases = {"python": python_case(work), "fitdock": fitdock_case(work, report, ranks=1)}
    launcher = mpi_launcher()
    if launcher is not None:
        report.data["mpi_launcher"] = launcher
        cases["mpiexec"] = mpiexec_case(work, launcher, ranks=2)
        cases["fitdock_mpi"] = fitdock_case(work, report, ranks=2)
    if installed("submitit"):
        cases.update(submitit_cases(work, scratch / "submitit"))
    if installed("torchx"):
        cases.update(torchx_cases(work, scratch / "torchx", stack))
    return cases


def sample(cases: dict[str, Case], repeat: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Round-robin: every round runs each case once; the first WARMUP rounds are set apart."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    cold: dict[str, float] = {}
    for round_ in range(WARMUP + repeat):
        for name, case in cases.items():
            seconds = case()
            if round_ < WARMUP:
                cold.setdefault(name, seconds)
            else:
                samples[name].append(seconds)
    return samples, cold


# ---------------------------------------------------------------------------------------------
# (a), (b): lines
# ---------------------------------------------------------------------------------------------
def report_noop(report: Report, ms: dict[str, float]) -> None:
    added = ms["fitdock"] - ms["python"]
    verdict = report.verdict("a_added_ms", added, TARGET_ADDED_MS)
    report.emit(
        f"bench (a) fit() no-op: fitdock {ms['fitdock']:.1f} ms, python {ms['python']:.1f} ms, "
        f"added {added:.1f} ms (target <= {TARGET_ADDED_MS:.0f} ms) {verdict}"
    )


def peer_text(ms: dict[str, float], key: str, label: str, module: str) -> str:
    return f"{label} {ms[key]:.1f} ms" if key in ms else f"{label} skipped: {module} not installed"


def report_peers(report: Report, ms: dict[str, float], suffix: str, judged: bool) -> None:
    heads = ("bench (a) peers:", "bench (a) peers, polled every 10 ms (no target):")
    head = heads[0] if judged else heads[1]
    keys = (f"submitit{suffix}", f"torchx{suffix}")
    found = [ms[key] for key in keys if key in ms]
    if not found:
        report.emit(f"{head} skipped: submitit not installed; skipped: torchx not installed")
        return
    ratio = ms["fitdock"] / min(found)
    texts = (
        peer_text(ms, keys[0], "submitit LocalExecutor", "submitit"),
        peer_text(ms, keys[1], "torchx local_cwd", "torchx"),
    )
    tail = f"fitdock/faster peer = {ratio:.2f}x"
    if judged:
        verdict = report.verdict("a_peer_ratio", ratio, TARGET_PEER_RATIO)
        tail += f" (target <= {TARGET_PEER_RATIO}x) {verdict}"
    else:
        report.data["a_peer_ratio_polled"] = ratio
    report.emit(f"{head} {texts[0]}, {texts[1]}, {tail}")


def report_mpi(report: Report, ms: dict[str, float]) -> None:
    if "fitdock_mpi" not in ms:
        report.emit("bench (b) fit() 2 MPI ranks: skipped: no mpirun/mpiexec found")
        return
    name = Path(report.data["mpi_launcher"]).name
    added = ms["fitdock_mpi"] - ms["mpiexec"]
    verdict = report.verdict("b_added_ms", added, TARGET_ADDED_MS)
    report.emit(
        f"bench (b) fit() 2 MPI ranks: fitdock {ms['fitdock_mpi']:.1f} ms, "
        f"{name} -n 2 -launcher fork {ms['mpiexec']:.1f} ms, added {added:.1f} ms "
        f"(target <= {TARGET_ADDED_MS:.0f} ms) {verdict}"
    )


def report_cold(report: Report, import_s: float, cold: dict[str, float]) -> None:
    runs = ", ".join(
        f"first {label} {cold[key] * 1000:.1f} ms"
        for key, label in (("fitdock", "fit()"), ("fitdock_mpi", "2-rank fit()"))
        if key in cold
    )
    report.emit(
        f"bench cold start (not in the medians): import fitdock {import_s * 1000:.1f} ms, {runs}"
    )


def bench_launch(work: Path, scratch: Path, report: Report, repeat: int) -> None:
    start = time.perf_counter()
    from fitdock import Estimator  # noqa: F401 - timed: the first fit() of a process pays it

    import_s = time.perf_counter() - start
    with contextlib.ExitStack() as stack:
        samples, cold = sample(launch_cases(work, scratch, report, stack), repeat)
    ms = {name: median_ms(values) for name, values in samples.items()}
    report.data.update(
        median_ms=ms,
        samples_ms={k: [v * 1000 for v in vs] for k, vs in samples.items()},
        cold_ms={"import_fitdock": import_s * 1000, **{k: v * 1000 for k, v in cold.items()}},
    )
    report_noop(report, ms)
    report_peers(report, ms, suffix="", judged=True)
    report_peers(report, ms, suffix="_polled", judged=False)
    report_mpi(report, ms)
    report_cold(report, import_s, cold)


# ---------------------------------------------------------------------------------------------
# (c): timeout precision
# ---------------------------------------------------------------------------------------------
class ExitWatcher:
    """In a thread: wait for the pid file a sleep script writes (its pid, its rank wrapper's,
    the reaper's) and stamp, with perf_counter(), the moment each of those processes exits."""

    def __init__(self, pid_file: Path) -> None:
        self.pid_file = pid_file
        self.exits: dict[int, float] = {}
        self.pending = 0
        self._thread = threading.Thread(target=self._watch, name="bench-watch", daemon=True)
        self._thread.start()

    def _read_pids(self) -> list[int]:
        end = time.monotonic() + WATCH_LIMIT_S
        while time.monotonic() < end:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return [int(word) for word in self.pid_file.read_text().split()]
            time.sleep(0.002)
        return []

    def _watch(self) -> None:
        fds: dict[int, int] = {}
        for pid in self._read_pids():
            try:
                fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                self.exits[pid] = time.perf_counter()
        while fds:
            ready, _, _ = select.select(list(fds), [], [], WATCH_LIMIT_S)
            if not ready:
                break
            now = time.perf_counter()
            for fd in ready:
                self.exits[fds.pop(fd)] = now
                os.close(fd)
        self.pending = len(fds)
        for fd in fds:
            os.close(fd)

    def last_exit(self, timeout: float) -> float | None:
        """When the last watched process exited; None if one is unaccounted for."""
        self._thread.join(timeout)
        if self._thread.is_alive() or self.pending or not self.exits:
            return None
        return max(self.exits.values())


def timeout_run(work: Path, pid_dir: Path, script: str, report: Report) -> dict[str, float]:
    """One timed-out run: seconds from the deadline (max_run after the call to fit()) to the
    exit of the job's last process, and to fit()'s return."""
    from fitdock import Estimator, RunStatus

    pid_file = pid_dir / f"{Path(script).stem}-{time.monotonic_ns()}.pid"
    estimator = Estimator(
        work,
        entry_script=script,
        script_params=[str(pid_file)],
        user_managed=True,
        max_run_duration_seconds=MAX_RUN_S,
        termination_grace_seconds=GRACE_S,
    )
    watcher = ExitWatcher(pid_file)
    fitted = fit_within(estimator, FIT_LIMIT_S, report)
    deadline = fitted.start + MAX_RUN_S
    gone = watcher.last_exit(timeout=5.0)
    if gone is None:
        report.warn(f"(c) {script}: a job process outlived fit(); counted as gone when fit() ended")
        gone = fitted.end
    result = {"gone_s": gone - deadline, "fit_returned_s": fitted.end - deadline}
    run = fitted.run
    if run is not None:
        if run.status is not RunStatus.TIMED_OUT:
            report.warn(f"(c) {script}: run {run.id} ended {run.status}, not TimedOut")
        result["gone_after_record_deadline_s"] = gone - record_deadline(run)
    return result


def record_deadline(run: Run) -> float:
    """The deadline by the run record: ``started_at`` + max_run, on the perf_counter() clock."""
    started = dt.datetime.fromisoformat(run.record["started_at"]).timestamp()
    return started + MAX_RUN_S - (time.time() - time.perf_counter())


def report_timeout(report: Report, label: str, runs: list[dict[str, float]]) -> None:
    keys = sorted({key for run in runs for key in run})
    median = {key: statistics.median(r[key] for r in runs if key in r) for key in keys}
    report.data.setdefault("timeout", {})[label] = {"median": median, "runs": runs}
    gone = median["gone_s"]
    minus = gone - GRACE_S
    if label == "obeyed":  # ended by the SIGTERM: no grace to subtract, judge the raw delay
        verdict = report.verdict("c_obeyed_gone_s", gone, TARGET_TIMEOUT_S)
        target = f"target: gone <= {TARGET_TIMEOUT_S} s after the deadline, no grace needed"
    else:
        verdict = report.verdict("c_trapped_minus_grace_s", minus, TARGET_TIMEOUT_S)
        target = f"target <= {TARGET_TIMEOUT_S} s"
    report.emit(
        f"bench (c) timeout, SIGTERM {label}: deadline -> last process gone {gone:.3f} s, "
        f"minus grace {minus:.3f} s, fit() returned at {median['fit_returned_s']:.3f} s "
        f"({target}) {verdict}"
    )


def bench_timeout(work: Path, pid_dir: Path, report: Report, repeat: int) -> None:
    pid_dir.mkdir()
    runs: dict[str, list[dict[str, float]]] = {"obeyed": [], "trapped": []}
    for _ in range(repeat):
        runs["obeyed"].append(timeout_run(work, pid_dir, "sleep_obey.py", report))
        runs["trapped"].append(timeout_run(work, pid_dir, "sleep_trap.py", report))
    for label, results in runs.items():
        report_timeout(report, label, results)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def write_scripts(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, text in SCRIPTS.items():
        (folder / name).write_text(text)
    return folder


def environment() -> dict[str, Any]:
    from fitdock import __version__

    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "fitdock": __version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = args.json.resolve() if args.json else None
    report = Report(data={"repeat": args.repeat, "warmup_rounds": WARMUP})
    with tempfile.TemporaryDirectory(prefix="fitdock-bench-") as tmp:
        root = Path(tmp)
        os.environ["FITDOCK_HOME"] = str(root / "home")
        work = write_scripts(root / "job")
        with inside(work):
            bench_launch(work, root, report, args.repeat)
            bench_timeout(work, root / "pids", report, args.repeat)
    for text in report.warnings:
        report.emit(f"bench warning: {text}")
    if json_path is not None:
        report.data.update(environment=environment(), warnings=report.warnings)
        json_path.write_text(json.dumps(report.data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
