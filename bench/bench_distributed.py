"""Distributed jobs through fitdock: DDP throughput against raw torchrun, and fail-fast speed.

    python bench/bench_distributed.py [--repeat N] [--json PATH]

(d) Steady-state samples/s of examples/pytorch_ddp/train.py on 2 gloo ranks, through fitdock
    (``PyTorchConfiguration``) and under raw ``python -m torch.distributed.run``; the two
    alternate which goes first from round to round, so drift hits both alike.
(e) Seconds from one rank's death to the last rank process gone, for 2 local ranks started
    by MPICH, by Open MPI and by torchrun, all through fitdock.

Medians over ``--repeat`` rounds are reported; a missed target prints MISS, and the exit
status is 0 all the same. See bench/README.md for what each line means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import PidWatcher, Report, fit_within, machine

if TYPE_CHECKING:
    from fitdock import Estimator

REPO = Path(__file__).resolve().parents[1]
DDP_EXAMPLE = REPO / "examples" / "pytorch_ddp"
DDP_ARGS = ["--epochs", "2", "--steps-per-epoch", "100", "--warmup-steps", "10"]
RANKS = 2
TARGET_RATIO = 0.98
TARGET_GONE_S = 5.0
DDP_LIMIT_S = 120.0  # a DDP run still going after this is counted as failed
DEATH_LIMIT_S = 30.0  # the same for a (e) run; its ranks are left to fitdock's reaper
OPEN_MPI = "/usr/bin/mpirun"

# Rank 1 waits until the benchmark watches every rank, notes the time and dies; the other
# ranks sleep until they are stopped.
DIE_SCRIPT = """\
import os, sys, time
folder = sys.argv[1]
rank = os.environ.get("RANK", "0")


def put(name, text):
    tmp = os.path.join(folder, "." + name)
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, os.path.join(folder, name))


put("rank_" + rank + ".pid", str(os.getpid()))
if rank == "1":
    end = time.monotonic() + 30
    while not os.path.exists(os.path.join(folder, "watching")) and time.monotonic() < end:
        time.sleep(0.002)
    put("death", repr(time.time()))
    os._exit(1)
time.sleep(3600)
"""


# ---------------------------------------------------------------------------------------------
# Report helpers
# ---------------------------------------------------------------------------------------------
def at_least(report: Report, key: str, value: float, target: float) -> str:
    """Like ``Report.verdict``, for a value that must reach ``target``."""
    ok = value >= target
    report.data.setdefault("checks", {})[key] = {"value": value, "target": target, "ok": ok}
    return "OK" if ok else "MISS"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------------
# (d) DDP throughput
# ---------------------------------------------------------------------------------------------
def read_throughput(path: Path) -> dict[str, Any] | None:
    """The example's throughput.json, if it holds a steady-state rate."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("samples_per_s") else None


def ddp_fitdock(report: Report) -> dict[str, Any] | None:
    """One run of the DDP example through fitdock; its throughput.json."""
    from fitdock import PyTorch, PyTorchConfiguration, RunStatus

    estimator = PyTorch(
        source_directory=DDP_EXAMPLE,
        entry_script="train.py",
        script_params=DDP_ARGS,
        distributed_training=PyTorchConfiguration(
            communication_backend="gloo", process_count=RANKS
        ),
        user_managed=True,
        max_run_duration_seconds=DDP_LIMIT_S,
    )
    run = fit_within(estimator, DDP_LIMIT_S + 10, report).run
    if run is None:
        return None
    if run.status is not RunStatus.COMPLETED:
        report.warn(f"(d) fitdock DDP run {run.id} ended {run.status}: {run.error}")
        return None
    return read_throughput(run.output_dir / "throughput.json")


def raw_environment() -> dict[str, str]:
    """This process's environment without fitdock's or a launcher's variables: offline."""
    names = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITDOCK_") and k not in names}
    env["PYTHONUNBUFFERED"] = "1"  # as fitdock sets it for its jobs
    return env


def ddp_raw(scratch: Path, report: Report) -> dict[str, Any] | None:
    """One run of the DDP example under raw torchrun, in a fresh folder (offline mode writes
    ./outputs and ./checkpoints there); its throughput.json."""
    cwd = Path(tempfile.mkdtemp(prefix="raw-", dir=scratch))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    argv += ["--nproc-per-node", str(RANKS), str(DDP_EXAMPLE / "train.py"), *DDP_ARGS]
    with open(cwd / "torchrun.log", "wb") as log:
        try:
            done = subprocess.run(
                argv,
                cwd=cwd,
                env=raw_environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=DDP_LIMIT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            report.warn(f"(d) raw torchrun still running after {DDP_LIMIT_S:g} s (see {cwd})")
            return None
    if done.returncode != 0:
        report.warn(f"(d) raw torchrun exited {done.returncode} (see {cwd / 'torchrun.log'})")
        return None
    return read_throughput(cwd / "outputs" / "throughput.json")


def bench_ddp(scratch: Path, report: Report, repeat: int) -> None:
    cases: dict[str, Callable[[], dict[str, Any] | None]] = {
        "fitdock": lambda: ddp_fitdock(report),
        "raw": lambda: ddp_raw(scratch, report),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    ratios: list[float] = []
    for round_ in range(repeat):
        order = list(cases) if round_ % 2 == 0 else list(reversed(cases))
        got = {name: cases[name]() for name in order}
        for name, found in got.items():
            if found is not None:
                runs[name].append({**found, "round": round_})
        if got["fitdock"] and got["raw"]:
            ratios.append(got["fitdock"]["samples_per_s"] / got["raw"]["samples_per_s"])
    rates = {name: [run["samples_per_s"] for run in found] for name, found in runs.items()}
    report.data["ddp"] = {"runs": runs, "round_ratios": ratios, "args": DDP_ARGS}
    report_ddp(report, rates, ratios)


def report_ddp(report: Report, rates: dict[str, list[float]], ratios: list[float]) -> None:
    head = "bench (d) DDP samples/s:"
    fitdock, raw = median(rates["fitdock"]), median(rates["raw"])
    if fitdock is None or raw is None:
        report.emit(f"{head} no result (see the warnings) (target >= {TARGET_RATIO}) MISS")
        at_least(report, "d_ratio", 0.0, TARGET_RATIO)
        return
    ratio = fitdock / raw
    verdict = at_least(report, "d_ratio", ratio, TARGET_RATIO)
    spread = ""
    if ratios:
        spread = f"; per round: median {median(ratios):.3f}, {min(ratios):.3f}..{max(ratios):.3f}"
    report.data["ddp"]["median"] = {"fitdock": fitdock, "raw": raw, "ratio": ratio}
    report.emit(
        f"{head} fitdock {fitdock:.1f}, raw torchrun {raw:.1f}, ratio {ratio:.3f} "
        f"(target >= {TARGET_RATIO}) {verdict}{spread}"
    )


# ---------------------------------------------------------------------------------------------
# (e) rank death -> last rank gone
# ---------------------------------------------------------------------------------------------
class RankWatcher(PidWatcher):
    """Wait for every rank's pid file, open a pidfd on each, tell rank 1 to die (the
    ``watching`` file) and stamp, with time.time(), the moment each rank exits."""

    def __init__(self, folder: Path, ranks: int) -> None:
        self.folder = folder
        self.ranks = ranks
        super().__init__(DEATH_LIMIT_S, time.time)

    def pids(self) -> list[int]:
        return self.read_pid_files([self.folder / f"rank_{rank}.pid" for rank in range(self.ranks)])

    def watching(self) -> None:
        (self.folder / "watching").touch()


def death_estimator(work: Path, folder: Path, launcher: str) -> Estimator:
    from fitdock import Estimator, Mpi, PyTorchConfiguration
    from fitdock.distributions.mpi import Flavor, find_launcher

    if launcher == "torchrun":
        dist: Any = PyTorchConfiguration(communication_backend="gloo", process_count=RANKS)
        options: dict[str, Any] = {"distributed_training": dist}
    else:
        # MPICH named, not Mpi() alone: where Horovod is built against Open MPI, Mpi() picks
        # Open MPI's mpirun (the launcher of the MPI the job loads) and the case would lie
        mpich = find_launcher(Mpi(), Flavor.MPICH).path if launcher == "mpich" else None
        mpi = Mpi(mpirun=OPEN_MPI if launcher == "openmpi" else mpich)
        options = {"distributed_training": mpi, "process_count_per_node": RANKS}
    return Estimator(
        work,
        entry_script="die.py",
        script_params=[str(folder)],
        user_managed=True,
        max_run_duration_seconds=DEATH_LIMIT_S,
        **options,
    )


def death_run(work: Path, scratch: Path, launcher: str, report: Report) -> dict[str, float]:
    """One job whose rank 1 dies: seconds from its death to the last rank gone, and to the
    return of fit()."""
    from fitdock import RunStatus

    folder = Path(tempfile.mkdtemp(prefix=f"{launcher}-", dir=scratch))
    watcher = RankWatcher(folder, RANKS)
    fitted = fit_within(death_estimator(work, folder, launcher), DEATH_LIMIT_S + 10, report)
    returned = time.time() - (time.perf_counter() - fitted.end)
    gone = watcher.last_exit(timeout=5.0)
    try:
        death = float((folder / "death").read_text())
    except (OSError, ValueError):
        report.warn(f"(e) {launcher}: rank 1 never died (no {folder / 'death'})")
        return {}
    if gone is None:
        report.warn(f"(e) {launcher}: a rank outlived fit(); counted as gone when fit() ended")
        gone = returned
    run = fitted.run
    failed_rank = (run.error or {}).get("rank") if run is not None else None
    if run is not None and (run.status is not RunStatus.FAILED or failed_rank != 1):
        report.warn(f"(e) {launcher}: run {run.id} ended {run.status}, error {run.error}")
    return {"gone_s": gone - death, "fit_returned_s": returned - death}


def death_launchers(report: Report) -> list[str]:
    from fitdock import Mpi
    from fitdock.distributions.mpi import Flavor, find_launcher
    from fitdock.errors import LauncherNotFoundError

    found = ["torchrun"]
    with contextlib.suppress(LauncherNotFoundError):
        if find_launcher(Mpi()).flavor is Flavor.MPICH:
            found.insert(0, "mpich")
    if "mpich" not in found:
        report.emit("bench (e) rank death -> last rank gone, mpich: skipped: no MPICH launcher")
    if shutil.which(OPEN_MPI):
        found.insert(len(found) - 1, "openmpi")
    else:
        report.emit(f"bench (e) rank death -> last rank gone, openmpi: skipped: no {OPEN_MPI}")
    return found


def bench_death(work: Path, scratch: Path, report: Report, repeat: int) -> None:
    (work / "die.py").write_text(DIE_SCRIPT)
    launchers = death_launchers(report)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in launchers}
    for _ in range(repeat):
        for name in launchers:
            result = death_run(work, scratch, name, report)
            if result:
                runs[name].append(result)
    for name in launchers:
        report_death(report, name, runs[name])


def report_death(report: Report, launcher: str, runs: list[dict[str, float]]) -> None:
    head = f"bench (e) rank death -> last rank gone, {launcher}:"
    gone = median([run["gone_s"] for run in runs])
    returned = median([run["fit_returned_s"] for run in runs])
    report.data.setdefault("death", {})[launcher] = {"runs": runs, "gone_s": gone}
    if gone is None or returned is None:
        report.emit(f"{head} no result (see the warnings) (target <= {TARGET_GONE_S:g} s) MISS")
        report.verdict(f"e_{launcher}_gone_s", float("inf"), TARGET_GONE_S)
        return
    verdict = report.verdict(f"e_{launcher}_gone_s", gone, TARGET_GONE_S)
    most = max(run["gone_s"] for run in runs)
    report.emit(
        f"{head} {gone:.2f} s (target <= {TARGET_GONE_S:g} s) {verdict}; "
        f"worst {most:.2f} s, fit() returned at {returned:.2f} s"
    )


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


def environment() -> dict[str, Any]:
    import torch

    return machine(torch=torch.__version__)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = args.json.resolve() if args.json else None
    report = Report(data={"repeat": args.repeat})
    with tempfile.TemporaryDirectory(prefix="fitdock-bench-dist-") as tmp:
        root = Path(tmp)
        os.environ["FITDOCK_HOME"] = str(root / "home")
        work = root / "job"
        work.mkdir()
        bench_ddp(root, report, args.repeat)
        bench_death(work, root, report, args.repeat)
    report.finish(json_path, environment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
