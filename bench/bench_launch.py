"""Launch overhead and timeout precision of fitdock, against the raw tools and its peers.

    python bench/bench_launch.py [--repeat N] [--json PATH]

Everything is measured in one process, in one run, round-robin (one sample of each case
per round, so drift hits every case alike); the medians of the rounds after a warm-up
round are reported. See bench/README.md for what each line means.

The (c) timeout-precision part is in bench/_timeout.py; the job scripts, the report and
fit_within() are in bench/_common.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import FIT_LIMIT_S, SCRIPTS, Report, fit_within, machine, median_ms
from _timeout import bench_timeout

TARGET_ADDED_MS = 25.0  # (a): one extra interpreter start is the floor
TARGET_MPI_ADDED_MS = 40.0  # (b)
# (a) peers: fitdock's no-op fit() against the faster of submitit and TorchX, both asked
# every 10 ms whether their job ended. fitdock starts two interpreters (reaper, script)
# where TorchX's local_cwd starts one: half the faster peer's time is the target.
TARGET_PEER_RATIO = 0.5
WARMUP = 1
PEER_POLL_S = 0.01  # the "polled" peer variants ask this often whether their job ended
TORCHX_WAIT_S = 1.0  # the wait_interval `torchx run` itself passes to Runner.wait()

Case = Callable[[], float]  # runs one job, returns its wall time in seconds


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


def fitdock_case(work: Path, report: Report, ranks: int, launcher: str | None = None) -> Case:
    """``fit()`` of the no-op; with ranks, through ``launcher``, the raw case's own (the
    same launcher on both sides: ``Mpi()`` alone may pick another where Horovod is
    installed, since its launcher must match Horovod's MPI)."""
    from fitdock import Estimator, Mpi, RunStatus

    options: dict[str, Any] = {}
    if ranks > 1:
        options = {"process_count_per_node": ranks, "distributed_training": Mpi(mpirun=launcher)}

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
        from fitdock.distributions.mpi import find_launcher

        return find_launcher(Mpi()).path
    except Exception:  # fitdock's internals moved, or no MPI at all
        beside = Path(sys.executable).parent / "mpiexec"
        return str(beside) if beside.is_file() else None


def raw_mpi_argv(launcher: str, ranks: int) -> tuple[list[str], dict[str, str]]:
    """The raw launch with ``launcher``, in the words its own MPI family takes: fitdock's
    builder of the mpirun line (MPICH: ``-launcher fork``; Open MPI: its own flags, and as
    root its allow-run-as-root variables), so both sides start the same way."""
    from fitdock import Mpi
    from fitdock.distributions.mpi import find_launcher, mpi_argv, mpi_env

    config = Mpi(mpirun=launcher)
    found = find_launcher(config)
    argv = mpi_argv(found, config, ranks, [sys.executable, "noop.py"])
    return argv, {**os.environ, **mpi_env(found)}


def mpiexec_case(work: Path, argv: list[str], env: dict[str, str]) -> Case:
    def run() -> float:
        start = time.perf_counter()
        subprocess.run(argv, cwd=work, check=True, stdin=subprocess.DEVNULL, env=env)
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
        argv, env = raw_mpi_argv(launcher, ranks=2)
        report.data["mpi_launcher"] = launcher
        report.data["mpi_raw_argv"] = argv
        cases["mpiexec"] = mpiexec_case(work, argv, env)
        cases["fitdock_mpi"] = fitdock_case(work, report, ranks=2, launcher=launcher)
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
    """The judged line asks the peers every 10 ms whether their job ended (the fair match:
    fitdock's wait is event-driven); as shipped, their own 1 s polls, is information."""
    heads = ("bench (a) peers, polled every 10 ms:", "bench (a) peers as shipped (no target):")
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
        verdict = report.verdict("a_peer_ratio_polled", ratio, TARGET_PEER_RATIO)
        tail += f" (target <= {TARGET_PEER_RATIO}x) {verdict}"
    else:
        report.data["a_peer_ratio_as_shipped"] = ratio
    report.emit(f"{head} {texts[0]}, {texts[1]}, {tail}")


def report_mpi(report: Report, ms: dict[str, float]) -> None:
    if "fitdock_mpi" not in ms:
        report.emit("bench (b) fit() 2 MPI ranks: skipped: no mpirun/mpiexec found")
        return
    argv = report.data["mpi_raw_argv"]
    raw = " ".join([Path(argv[0]).name, *argv[1 : argv.index(sys.executable)]])
    added = ms["fitdock_mpi"] - ms["mpiexec"]
    verdict = report.verdict("b_added_ms", added, TARGET_MPI_ADDED_MS)
    report.emit(
        f"bench (b) fit() 2 MPI ranks: fitdock {ms['fitdock_mpi']:.1f} ms, "
        f"{raw} {ms['mpiexec']:.1f} ms, added {added:.1f} ms "
        f"(target <= {TARGET_MPI_ADDED_MS:.0f} ms) {verdict}"
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
    report_peers(report, ms, suffix="_polled", judged=True)
    report_peers(report, ms, suffix="", judged=False)
    report_mpi(report, ms)
    report_cold(report, import_s, cold)


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
    return machine()


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
    report.finish(json_path, environment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
