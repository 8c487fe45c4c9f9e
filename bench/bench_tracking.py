"""(s) MLflow mirroring: a training loop that logs at full speed, mirroring on and off.

    python bench/bench_tracking.py [--values N] [--repeat N] [--dir FOLDER] [--json PATH]

A job logs ``--values`` values (default 20,000) of one metric in a tight loop,
``run.log("loss", v, step=i)``, and writes how long its loop took (``perf_counter``) and
the wall-clock time of its end to ``outputs/loop.json``. The same ``Estimator``
(``user_managed=True``) is fitted ``--repeat`` times (default 7, after one warm-up of each
side) with mirroring off (no ``MLFLOW_TRACKING_URI``) and on (``MLFLOW_TRACKING_URI`` =
an ``mlflow server`` that the bench starts: sqlite store, loopback, ``--workers`` worker
processes, 4 by default as ``mlflow server``'s own default), the two sides alternating
which goes first.

    bench (s) loop throughput: ... on/off = 0.99x (target >= 0.95x) OK
      the loop's values per second with mirroring on over off: the median of each round's
      ratio (the rates printed beside it are the medians of each side); after it, not
      judged, the fastest round of each side, which load from elsewhere moves less.
    bench (s) end to all visible: ... (target <= 2 s) OK
      from the end of the loop to the moment MLflow holds its last value (the mirror sends
      in order, so every value is in by then; the bench checks the count afterwards),
      polled every 0.1 s once the loop has ended; median of the rounds. Beside it, for
      scale: the same values sent by MLflow's own client straight to the same server
      (``log_batch``, 1,000 a call, from a client already connected), which is what the
      server's ingest costs at best.
    bench (s) paced, 10,000 values at 2,000/s (the mirror keeps up): end to all visible ...
      the same with a loop that logs no faster than the server takes values in, as a
      training loop that computes between its log() calls does (3 rounds, no target).

It works in a temporary folder (under ``--dir``) with its own ``FITDOCK_HOME``, removed at
the end. Needs the mlflow extra. The exit status is 0 even on a MISS. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import Report, machine

TARGET_RATIO = 0.95
TARGET_VISIBLE_S = 2.0
VISIBLE_LIMIT_S = 60.0
POLL_S = 0.1  # a poll is a request the server serves between the mirror's
PACED_VALUES, PACED_RATE, PACED_ROUNDS = 10_000, 2_000, 3
LOOP = """\
import json, sys, time
from fitdock import Run
count, rate = int(sys.argv[1]), float(sys.argv[2])  # rate 0: full speed
run = Run.get_context()
start = time.perf_counter()
for i in range(count):
    run.log("loss", 1.0 / (i + 1), step=i)
    if rate and i % 100 == 99:
        time.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
seconds = time.perf_counter() - start
with open("outputs/loop.json", "w") as handle:
    json.dump({"seconds": seconds, "ended": time.time()}, handle)
"""


@contextlib.contextmanager
def mlflow_server(folder: Path, workers: int) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, in a session of its own; its URI."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--default-artifact-root", str(folder / "artifacts"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FITDOCK_", "MLFLOW_"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with (folder / "server.log").open("wb") as log:
        server = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _healthy(uri):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start; see {folder / 'server.log'}")
            time.sleep(0.2)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(15)


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def one_round(estimator: Any, client: Any, tracked: bool, values: int) -> dict[str, float]:
    """One fit; with mirroring on, also when MLflow held the loop's last value."""
    run = estimator.fit(wait=False)
    visible = float("nan")
    if tracked:  # ask MLflow only once the loop is over: the bench's requests stay out of it
        loop_file = run.output_dir / "loop.json"
        deadline = time.monotonic() + VISIBLE_LIMIT_S
        while not loop_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        visible = _last_value_seen(client, run.id, values)
    run.wait_for_completion(raise_on_error=True)
    loop = json.loads((run.output_dir / "loop.json").read_text())
    result = {"rate": values / loop["seconds"], "loop_s": loop["seconds"]}
    if tracked:
        found = _mlflow_run(client, run.id)
        stored = len(client.get_metric_history(found, "loss"))
        if stored != values:
            raise RuntimeError(f"MLflow holds {stored} of {values} values of run {run.id}")
        result["visible_s"] = visible - loop["ended"]
    return result


def _mlflow_run(client: Any, fitdock_id: str) -> Any:
    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(ids, filter_string=f"tags.`fitdock.run_id` = '{fitdock_id}'")
    return found[0].info.run_id if found else None


def _last_value_seen(client: Any, fitdock_id: str, values: int) -> float:
    """The wall-clock time at which MLflow first showed the loop's last value."""
    last = 1.0 / values
    deadline = time.monotonic() + VISIBLE_LIMIT_S
    run_id = None
    while time.monotonic() < deadline:
        run_id = run_id or _mlflow_run(client, fitdock_id)
        if run_id is not None:
            metric = client.get_run(run_id).data.metrics.get("loss")
            if metric is not None and abs(metric - last) < 1e-12:
                return time.time()
        time.sleep(POLL_S)
    raise RuntimeError(f"the last value of run {fitdock_id} never reached MLflow")


def mlflow_floor(client: Any, values: int) -> float:
    """Seconds for MLflow's own client to log the same values, 1,000 a call."""
    from mlflow.entities import Metric

    experiment = client.create_experiment(f"floor-{time.time_ns()}")
    run_id = client.create_run(experiment).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric("loss", 1.0 / (i + 1), now, i) for i in range(values)]
    start = time.perf_counter()
    for first in range(0, values, 1000):
        client.log_batch(run_id, metrics=metrics[first : first + 1000])
    return time.perf_counter() - start


def line_s(report: Report, scratch: Path, args: argparse.Namespace) -> None:
    from mlflow import MlflowClient

    from fitdock import Estimator

    src = scratch / "src"
    src.mkdir()
    (src / "train.py").write_text(LOOP)
    estimator = Estimator(
        src, entry_script="train.py", script_params=[str(args.values), "0"], user_managed=True
    )
    paced = Estimator(
        src, entry_script="train.py", user_managed=True,
        script_params=[str(PACED_VALUES), str(PACED_RATE)],
    )  # fmt: skip
    server_dir = scratch / "mlflow"
    server_dir.mkdir()
    with mlflow_server(server_dir, args.workers) as uri:
        client = MlflowClient(uri)
        os.environ.update(MLFLOW_DISABLE_TELEMETRY="true")
        rounds: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for number in range(args.repeat + 1):
            order = (False, True) if number % 2 else (True, False)
            for tracked in order:
                if tracked:
                    os.environ["MLFLOW_TRACKING_URI"] = uri
                else:
                    os.environ.pop("MLFLOW_TRACKING_URI", None)
                result = one_round(estimator, client, tracked, args.values)
                if number:  # the first round warms up (imports, caches)
                    rounds[tracked].append(result)
        paced_rounds = [one_round(paced, client, True, PACED_VALUES) for _ in range(PACED_ROUNDS)]
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        floor = statistics.median(mlflow_floor(client, args.values) for _ in range(3))
    on = statistics.median(r["rate"] for r in rounds[True])
    off = statistics.median(r["rate"] for r in rounds[False])
    # each round's on/off, then the median: load that drifts over the minute falls on both
    pairs = zip(rounds[True], rounds[False], strict=True)
    ratio = statistics.median(on_round["rate"] / off_round["rate"] for on_round, off_round in pairs)
    visible = statistics.median(r["visible_s"] for r in rounds[True])
    report.data["s"] = {
        "on": rounds[True], "off": rounds[False], "floor_s": floor, "paced": paced_rounds
    }  # fmt: skip
    best = max(r["rate"] for r in rounds[True]) / max(r["rate"] for r in rounds[False])
    verdict = report.verdict("s_ratio", -ratio, -TARGET_RATIO)  # higher is better
    report.emit(
        f"bench (s) loop throughput, {args.values:,} log() calls: mirroring on "
        f"{on:,.0f} values/s, off {off:,.0f} values/s, on/off = {ratio:.2f}x "
        f"(target >= {TARGET_RATIO}x) {verdict}; fastest on/fastest off {best:.2f}x"
    )
    verdict = report.verdict("s_visible", visible, TARGET_VISIBLE_S)
    report.emit(
        f"bench (s) end to all visible: {visible:.2f} s after the loop's end, "
        f"{args.values:,} values (MLflow's own log_batch of them: {floor:.2f} s; "
        f"server workers: {args.workers}) "
        f"(target <= {TARGET_VISIBLE_S:g} s) {verdict}"
    )
    paced_visible = statistics.median(r["visible_s"] for r in paced_rounds)
    report.emit(
        f"bench (s) paced, {PACED_VALUES:,} values at {PACED_RATE:,}/s (the mirror keeps up): "
        f"end to all visible {paced_visible:.2f} s (no target)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, default=20_000, help="log() calls (20,000)")
    parser.add_argument("--repeat", type=int, default=7, help="measured rounds (7)")
    parser.add_argument(
        "--workers", type=int, default=4, help="mlflow server worker processes (4, its default)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the scratch folder goes")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(data={"values": args.values, "repeat": args.repeat})
    with tempfile.TemporaryDirectory(prefix="fitdock-bench-s-", dir=args.dir) as tmp:
        scratch = Path(tmp)
        os.environ["FITDOCK_HOME"] = str(scratch / "home")
        line_s(report, scratch, args)
    report.finish(args.json.resolve() if args.json else None, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
