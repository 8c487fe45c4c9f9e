"""Pipelines: the scheduler's overhead and reuse, and the content hashes behind them.

    python bench/bench_pipelines.py [--repeat N] [--dir FOLDER] [--only k|l|n] [--json PATH]

(k) 100 no-op local steps in a chain: time added a step over the same 100 scripts run
    with plain python one after another, target <= 40 ms; Metaflow's local runner on a
    20-step chain as the peer (_pipeline_cases.py)
(m) the same 100-step pipeline submitted again, nothing changed: all 100 reuse decisions,
    target <= 0.5 s (run with k)
(l) 8 independent steps that each sleep 1 s, max_concurrency=8: wall time, target <= 1.3 s;
    Metaflow with --max-workers 8 as the peer
(n) re-keying an unchanged 10k-file, 200 MB source directory (hash_tree through the stat
    cache), target <= 0.3 s, against the first keying; and the snapshot part of a fit of
    that folder as submit makes it for the local target (shared_snapshot.place_snapshot:
    keying, the store, the overlay mount; a copy where it cannot mount), first time (empty
    store, cold stat cache) and second time, against `cp -r` in the same rounds, targets:
    first <= 1.2x cp -r, second <= 0.3 s.

One function per line; main() runs those in LINES (or --only). See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Report, machine
from _pipeline_cases import bench_chain, bench_fan

# (n)
TREE_SIZES = {2048: 6000, 16384: 3000, 65536: 900, 800_000: 100}  # 10,000 files, 200.4 MB
PER_FOLDER = 100
TARGET_REKEY_S = 0.3
TARGET_FIRST_RATIO = 1.2
TARGET_SECOND_S = 0.3


# ---------------------------------------------------------------------------------------------
# (n): content hashes and snapshots of a large source directory
# ---------------------------------------------------------------------------------------------
def make_tree(root: Path) -> tuple[int, int]:
    """Random bytes in files of a few sizes, ``PER_FOLDER`` to a folder; (files, bytes)."""
    sizes = [size for size, count in TREE_SIZES.items() for _ in range(count)]
    random.Random(11).shuffle(sizes)
    for i, size in enumerate(sizes):
        folder = root / f"d{i // PER_FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(size))
    return len(sizes), sum(sizes)


def filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on (the longest mount point above it)."""
    best, kind = "", "?"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, point, fstype, *_ = line.split()
            inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fstype
    return kind


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of ``action`` after flushing earlier writes, so that their writeback does
    not land on this sample."""
    os.sync()
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def snapshot_round(report: Report, src: Path, out: Path, cp_first: bool) -> dict[str, Any]:
    """The snapshot part of two fits of ``src`` as ``submit`` makes it (the limits' scan,
    keying, the store, the mount: ``shared_snapshot.place_snapshot`` for the local target),
    from an empty store and a cold stat cache, and ``cp -r`` of it once; the times. Each
    run's overlay is released (unmounted, flattened) after the round, outside the times."""
    from fitdock.runs import contenthash, shared_snapshot
    from fitdock.runs.layout import RunPaths

    got: dict[str, Any] = {}
    runs = [RunPaths(out / "first"), RunPaths(out / "second")]

    def copy() -> None:
        got["cp"], done = timed(lambda: subprocess.run(["cp", "-r", str(src), str(out / "cp")]))
        if done.returncode:
            report.warn(f"(n) cp -r exited {done.returncode}")

    def fit_snapshot(run: RunPaths) -> Any:
        run.path.mkdir()
        return shared_snapshot.place_snapshot(src, run, 1e6, 10**6, local_mounts=True)

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    shutil.rmtree(Path(os.environ["FITDOCK_HOME"]) / "cache", ignore_errors=True)
    contenthash._CACHE = contenthash._StatCache()  # as a new process: no rows, no link
    try:
        if cp_first:  # drift and writeback fall on both sides alike
            copy()
        got["first"], summary = timed(lambda: fit_snapshot(runs[0]))
        got["second"], again = timed(lambda: fit_snapshot(runs[1]))
        if not cp_first:
            copy()
    finally:
        for run in runs:
            shared_snapshot.release(run)
    got["cloned"] = summary.cloned
    got["shared"] = bool(summary.shared and again.shared)
    got["share_error"] = summary.share_error
    return got


def bench_n(report: Report, scratch: Path, repeat: int) -> None:
    from fitdock.runs import contenthash

    src = scratch / "src"
    files, size = make_tree(src)
    cache = Path(os.environ["FITDOCK_HOME"]) / "cache"
    time.sleep(contenthash.RACY_NS / 1e9 + 0.1)  # files this new would not be cached
    first_key, again_key, rounds = [], [], []
    for round_ in range(repeat):
        shutil.rmtree(cache, ignore_errors=True)
        contenthash._CACHE = contenthash._StatCache()  # as a new process: no rows, no link
        took, first = timed(lambda: contenthash.hash_tree(src))
        first_key.append(took)
        took, again = timed(lambda: contenthash.hash_tree(src))
        again_key.append(took)
        if again != first:
            report.warn("(n) the second keying gave another digest")
        rounds.append(snapshot_round(report, src, scratch / "out", cp_first=bool(round_ % 2)))
    shutil.rmtree(scratch / "out", ignore_errors=True)
    first_snap, second_snap, cp = ([got[k] for got in rounds] for k in ("first", "second", "cp"))
    cloned, shared = rounds[-1]["cloned"], rounds[-1]["shared"]
    if rounds[-1]["share_error"]:
        report.warn(f"(n) not shared: {rounds[-1]['share_error']}")

    rekey, key1 = statistics.median(again_key), statistics.median(first_key)
    snap1, snap2, raw = map(statistics.median, (first_snap, second_snap, cp))
    ratio = snap1 / raw
    placed = "shared (overlay on the store)" if shared else "clone" if cloned else "copy"
    how = f"{placed} on {filesystem(scratch)}"
    tree = f"{files}-file {size / 1e6:.1f} MB tree"
    report.emit(
        f"bench (n) re-keying an unchanged {tree}: {rekey:.3f} s (first keying {key1:.3f} s) "
        f"(target <= {TARGET_REKEY_S} s) {report.verdict('n_rekey_s', rekey, TARGET_REKEY_S)}"
    )
    report.emit(
        f"bench (n) snapshot of that tree ({how}): first {snap1:.3f} s, cp -r {raw:.3f} s, "
        f"{ratio:.2f}x (target <= {TARGET_FIRST_RATIO}x) "
        f"{report.verdict('n_first_ratio', ratio, TARGET_FIRST_RATIO)}; second {snap2:.3f} s "
        f"(target <= {TARGET_SECOND_S} s) {report.verdict('n_second_s', snap2, TARGET_SECOND_S)}"
    )
    report.data["n"] = {
        "files": files,
        "bytes": size,
        "filesystem": filesystem(scratch),
        "cloned": cloned,
        "shared": shared,
        "first_keying_s": first_key,
        "rekeying_s": again_key,
        "snapshot_first_s": first_snap,
        "snapshot_second_s": second_snap,
        "cp_r_s": cp,
    }


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
LINES: dict[str, Callable[[Report, Path, int], None]] = {
    "k": bench_chain,  # (k) and (m)
    "l": bench_fan,
    "n": bench_n,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument(
        "--dir", type=Path, help="where to make the trees and FITDOCK_HOME (default: the temp dir)"
    )
    parser.add_argument("--only", action="append", choices=sorted(LINES), help="run these lines")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = args.json.resolve() if args.json else None
    report = Report(data={"repeat": args.repeat})
    for name in args.only or sorted(LINES):
        with tempfile.TemporaryDirectory(prefix=f"fitdock-bench-{name}-", dir=args.dir) as tmp:
            scratch = Path(tmp)
            os.environ["FITDOCK_HOME"] = str(scratch / "home")
            LINES[name](report, scratch, args.repeat)
    report.finish(json_path, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
