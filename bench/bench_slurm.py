"""Submit-to-first-rank-running latency on Slurm: fit() against a hand-written sbatch script.

    python bench/bench_slurm.py [--repeat N] [--json PATH]

Starts a private one-node Slurm (tests/slurm_cluster.py; needs root and Debian's slurm-wlm,
munge and libpmix2). Both jobs run the same 2-rank script through ``srun --mpi=pmix``;
each rank writes the wall-clock time at which it started. Latency: from the call
(``fit(wait=False)``, or ``sbatch``) to the first rank's time. Prints `bench (j)` with the
time fitdock adds (target <= 300 ms).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the private cluster lives with the tests

from _common import Report, machine  # noqa: E402
from slurm_cluster import Cluster, missing, slurm_cluster  # noqa: E402

from fitdock import Estimator, Mpi, RunStatus, Slurm  # noqa: E402

TARGET_ADDED_MS = 300.0
STAMP = """\
import os, sys, time
started = time.time()
rank = os.environ.get("RANK") or os.environ["SLURM_PROCID"]
with open(f"{sys.argv[1]}.{rank}", "w") as handle:
    handle.write(repr(started))
"""
HAND_WRITTEN = """\
#!/bin/bash
#SBATCH --ntasks=2
#SBATCH --output={out}
srun --mpi=pmix --ntasks=2 {python} {script} {stamp}
"""


def first_start(stamp: Path, timeout: float = 60) -> float:
    """The earliest rank start written under ``stamp`` (waits for both ranks)."""
    files = [stamp.with_name(f"{stamp.name}.{rank}") for rank in (0, 1)]
    deadline = time.monotonic() + timeout
    while not all(f.exists() and f.stat().st_size for f in files):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no rank started within {timeout} s")
        time.sleep(0.005)
    return min(float(f.read_text()) for f in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    json_path = args.json.resolve() if args.json else None
    report = Report(data={"repeat": args.repeat})
    reason = missing()
    if reason:
        report.emit(f"bench (j) skipped: {reason}")
        report.finish(json_path, machine)
        return 0
    with tempfile.TemporaryDirectory() as scratch, slurm_cluster() as cluster:
        os.environ["SLURM_CONF"] = str(cluster.conf)
        os.environ["FITDOCK_HOME"] = str(Path(scratch) / "home")
        source = Path(scratch) / "src"
        source.mkdir()
        (source / "stamp.py").write_text(STAMP)
        batch = Path(scratch) / "hand.sbatch"
        samples: dict[str, list[float]] = {"fitdock": [], "sbatch": []}
        for index in range(args.repeat + 1):  # the first round warms both up
            for name in ("fitdock", "sbatch") if index % 2 else ("sbatch", "fitdock"):
                stamp = Path(scratch) / f"{name}-{index}"
                if name == "fitdock":
                    latency = fitdock_latency(source, stamp, cluster)
                else:
                    latency = sbatch_latency(source, stamp, batch, cluster)
                if index:
                    samples[name].append(latency)
    fd_ms = statistics.median(samples["fitdock"]) * 1000
    raw_ms = statistics.median(samples["sbatch"]) * 1000
    added = fd_ms - raw_ms
    verdict = report.verdict("j_added_ms", added, TARGET_ADDED_MS)
    report.data.update(samples_s=samples)
    report.emit(
        f"bench (j) Slurm submit -> first rank running, 2 ranks (srun --mpi=pmix): fitdock "
        f"{fd_ms:.1f} ms, hand-written sbatch {raw_ms:.1f} ms, added {added:.1f} ms "
        f"(target <= {TARGET_ADDED_MS:.0f} ms) {verdict}; "
        f"fitdock {_spread(samples['fitdock'])}, sbatch {_spread(samples['sbatch'])}"
    )
    report.finish(json_path, machine)
    return 0


def fitdock_latency(source: Path, stamp: Path, cluster: Cluster) -> float:
    est = Estimator(
        source,
        entry_script="stamp.py",
        script_params=[str(stamp)],
        compute_target=Slurm(),
        distributed_training=Mpi(process_count_per_node=2),
        user_managed=True,
    )
    started = time.time()
    run = est.fit(wait=False)
    latency = first_start(stamp) - started
    run.wait_for_completion()
    assert run.status is RunStatus.COMPLETED, run.error
    cluster.wait_idle()
    return latency


def sbatch_latency(source: Path, stamp: Path, batch: Path, cluster: Cluster) -> float:
    batch.write_text(
        HAND_WRITTEN.format(
            out=f"{stamp}.out", python=sys.executable, script=source / "stamp.py", stamp=stamp
        )
    )
    started = time.time()
    subprocess.run(["sbatch", "--parsable", str(batch)], check=True, capture_output=True)
    latency = first_start(stamp) - started
    cluster.wait_idle()
    return latency


def _spread(values: list[float]) -> str:
    return f"{min(values) * 1000:.0f}..{max(values) * 1000:.0f} ms"


if __name__ == "__main__":
    sys.exit(main())
