"""fit() with 4 MPI ranks over 2 fake hosts against the same raw mpirun command line.

    python bench/bench_hosts.py [--repeat N] [--json PATH]

The hosts are network namespaces joined by veth pairs (tests/netns.py; needs root and
`ip netns`). The raw command is fitdock's own plan with the rank wrapper taken out:
the same mpirun, host list, agent, MCA parameters and exported variables. Prints
`bench (f)` with the time fitdock adds (target <= 200 ms).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake-host helpers live with the tests

from _common import Report, machine  # noqa: E402
from netns import namespace_hosts, netns_unavailable  # noqa: E402

from fitdock import Estimator, Hosts, Mpi, RunStatus  # noqa: E402
from fitdock.process import RANK_MODE  # noqa: E402

TARGET_ADDED_MS = 200.0
OPEN_MPI = "/usr/bin/mpirun"


def without_wrapper(argv: list[str]) -> list[str]:
    """Drop ``python -I -S jobtree.py fitdock-rank LOGDIR --`` from a planned argv."""
    mode = argv.index(RANK_MODE)
    return argv[: mode - 4] + argv[mode + 3 :]


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    json_path = args.json.resolve() if args.json else None
    report = Report(data={"repeat": args.repeat})
    reason = netns_unavailable() or (None if os.access(OPEN_MPI, os.X_OK) else f"no {OPEN_MPI}")
    if reason:
        report.emit(f"bench (f) skipped: {reason}")
        report.finish(json_path, machine)
        return 0
    with (
        tempfile.TemporaryDirectory() as scratch,
        namespace_hosts(2, resolve_hostnames=False) as net,
    ):
        os.environ["FITDOCK_HOME"] = str(Path(scratch) / "home")
        source = Path(scratch) / "src"
        source.mkdir()
        (source / "noop.py").write_text("")
        target = Hosts(
            [f"{h.address}:2" for h in net.hosts], agent=(str(net.agent),), network=net.subnet
        )
        est = Estimator(
            source, entry_script="noop.py", compute_target=target, node_count=2,
            process_count_per_node=2, distributed_training=Mpi(mpirun=OPEN_MPI), user_managed=True,
        )  # fmt: skip
        plan = est.plan()
        raw = without_wrapper(plan.argv)
        raw[raw.index("--wdir") + 1] = str(source)  # the plan's snapshot exists only in a fit
        env = {**os.environ, **plan.env}

        def fit() -> None:
            run = est.fit()
            assert run.status is RunStatus.COMPLETED, run.error

        def mpirun() -> None:
            subprocess.run(raw, env=env, cwd=source, check=True, capture_output=True)

        fit()  # warm up both
        mpirun()
        fitdock_s: list[float] = []
        raw_s: list[float] = []
        for index in range(args.repeat):
            order = [(fitdock_s, fit), (raw_s, mpirun)]
            for samples, action in order if index % 2 == 0 else reversed(order):
                samples.append(timed(action))
    fd_ms, raw_ms = statistics.median(fitdock_s) * 1000, statistics.median(raw_s) * 1000
    added = fd_ms - raw_ms
    verdict = report.verdict("f_added_ms", added, TARGET_ADDED_MS)
    report.data.update(samples_s={"fitdock": fitdock_s, "raw_mpirun": raw_s})
    report.emit(
        f"bench (f) fit() 4 ranks on 2 namespace hosts: fitdock {fd_ms:.1f} ms, raw mpirun "
        f"{raw_ms:.1f} ms, added {added:.1f} ms (target <= {TARGET_ADDED_MS:.0f} ms) {verdict}"
    )
    report.finish(json_path, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
