"""Signed payloads: pickling, signing and verifying an argument, against a plain pickle.dump.

    python bench/bench_payload.py [--repeat N] [--dir FOLDER] [--json PATH]

(p) a 100 MB NumPy float64 array: ``cloudpickle.dumps(obj, protocol=5)`` +
    ``payload.write`` + ``payload.read`` (fitdock/jobside/payload.py) against
    ``pickle.dump(obj, f, protocol=5)`` to a file in the same folder; best of ``--repeat``
    rounds each (the two alternate within a round), target <= 1.3x. Every sample writes a
    new file, as a run folder's payloads are: the previous sample's file is removed first,
    untimed. The best time of each part (dumps, write, read) is printed after the ratio,
    and a second line compares write and read with a plain write and read of the same
    body in the same rounds: the cost of signing and verifying alone.

Needs numpy and cloudpickle (the line is skipped without them). The exit status is 0 even
on a MISS. See bench/README.md.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

from _common import Report, machine

from fitdock.jobside.payload import key_path, load_key, read, write

SIZE = 100 * 1024 * 1024
TARGET_RATIO = 1.3
REPEAT = 5  # rounds by default (bench_steps.py uses it too)


def bench_p(report: Report, scratch: Path, repeat: int) -> None:
    """Line (p), in ``scratch`` (its key under ``scratch/home``); bench_steps.py calls it too."""
    try:
        import cloudpickle
        import numpy as np
    except ImportError as exc:
        report.emit(f"bench (p) skipped: {exc.name} not installed")
        return
    home = scratch / "home"
    home.mkdir(mode=0o700)
    key = load_key(key_path(home), create=True)
    array = np.random.default_rng(0).random(SIZE // 8)
    signed, plain = scratch / "arguments.payload", scratch / "arguments.pkl"
    parts: dict[str, list[float]] = {"dumps": [], "write": [], "read": [], "total": []}
    baseline: list[float] = []
    raw_io: dict[str, list[float]] = {"write": [], "read": []}  # the same bytes, unsigned
    for _ in range(repeat):
        plain.unlink(missing_ok=True)
        start = time.perf_counter()
        with plain.open("wb") as handle:
            pickle.dump(array, handle, protocol=5)
        baseline.append(time.perf_counter() - start)

        signed.unlink(missing_ok=True)
        t0 = time.perf_counter()
        body = cloudpickle.dumps(array, protocol=5)
        t1 = time.perf_counter()
        write(signed, "arguments", body, key)
        t2 = time.perf_counter()
        _, back = read(signed, "arguments", key)
        t3 = time.perf_counter()
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            parts[name].append(seconds)
        raw_file = scratch / "arguments.raw"
        raw_file.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with raw_file.open("wb") as handle:
            handle.write(body)
        t1 = time.perf_counter()
        with raw_file.open("rb") as handle:
            again = handle.read()
        raw_io["write"].append(t1 - t0)
        raw_io["read"].append(time.perf_counter() - t1)
        del body, back, again
    _, back = read(signed, "arguments", key)
    if not np.array_equal(pickle.loads(back), array):
        report.warn("(p) the array read back differs from the one written")
    best = {name: min(samples) for name, samples in parts.items()}
    raw = min(baseline)
    ratio = best["total"] / raw
    plain_io = {name: min(samples) for name, samples in raw_io.items()}
    report.data["p"] = {"parts_s": parts, "pickle_dump_s": baseline, "plain_io_s": raw_io}
    report.emit(
        f"bench (p) {SIZE // 2**20} MB numpy argument: serialise+sign+verify "
        f"{best['total']:.3f} s vs pickle.dump {raw:.3f} s: ratio {ratio:.2f} "
        f"(target <= {TARGET_RATIO}x) {report.verdict('p_ratio', ratio, TARGET_RATIO)}; "
        f"cloudpickle.dumps {best['dumps']:.3f} s, write {best['write']:.3f} s, "
        f"read {best['read']:.3f} s"
    )
    report.emit(
        f"bench (p) the same body unsigned: write {plain_io['write']:.3f} s "
        f"(payload.write {best['write'] / plain_io['write']:.2f}x), "
        f"read {plain_io['read']:.3f} s (payload.read {best['read'] / plain_io['read']:.2f}x)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=REPEAT, help=f"measured rounds (default {REPEAT})"
    )
    parser.add_argument("--dir", type=Path, help="where to write the files (default: temp dir)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = args.json.resolve() if args.json else None
    report = Report(data={"repeat": args.repeat})
    with tempfile.TemporaryDirectory(prefix="fitdock-bench-p-", dir=args.dir) as tmp:
        bench_p(report, Path(tmp), args.repeat)
    report.finish(json_path, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
