"""Execute Python Script (``fitdock.script``): one call, and the scoring service.

    python bench/bench_script.py [--only q|r] [--repeat N] [--repeat-q N] [--requests N]
                                 [--clients N] [--workers N] [--dir FOLDER] [--json PATH]

(q) ``execute_python_script(script, frame, sandbox="auto", environment=this_interpreter())``
    on a 1,000-row frame (bubblewrap where it is installed) against the same work by hand:
    the frame to Parquet, a fresh ``python`` that reads it, calls the same ``azureml_main``
    and writes Parquet, the result read back. Time added, median of ``--repeat-q`` rounds
    (default 5) after a warm-up, the two sides alternating first; target <= 150 ms.

(r) ``fitdock script serve`` (``fitdock.script.serve.serve``, ``--workers`` warm workers,
    default 2, sandboxed as ``auto`` gives) against a plain FastAPI app whose endpoint
    calls the same ``azureml_main`` in-process, without a sandbox; each served by uvicorn
    in its own process on 127.0.0.1. ``--clients`` threads (default 8), each with its own
    ``httpx.Client``, POST the same 100-row frame ``--requests`` times each (default 50)
    per round; ``--repeat`` rounds (default 3, after a warm-up), the two services
    alternating first. Printed: requests per second (median of the rounds) and p50/p99
    latency (over every request), fitdock/plain throughput ratio, target >= 0.5x.

Each line works in a temporary folder (under ``--dir``) with its own ``FITDOCK_HOME``
inside it, removed at the end. Needs the serve extra (fastapi, uvicorn, pandas) and
httpx. The exit status is 0 even on a MISS. See bench/README.md.
"""

# No `from __future__ import annotations`: FastAPI reads plain_app's annotations, which
# name what plain_app imports.
import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import Report, machine

TARGET_R = 0.5
ROWS = 100
Q_ROWS = 1000
TARGET_Q_MS = 150.0
START_LIMIT_S = 60.0
SCRIPT = """\
import pandas as pd


def azureml_main(dataframe1=None, dataframe2=None):
    out = dataframe1.copy()
    out["total"] = out["price"] * out["quantity"]
    out["band"] = pd.cut(out["total"], [-1, 100, 1000, float("inf")], labels=["s", "m", "l"])
    return out[out["quantity"] > 0]
"""


# ---------------------------------------------------------------------------------------------
# (q) one call against a fresh python
# ---------------------------------------------------------------------------------------------
# The fresh-python side: the script's azureml_main on the Parquet file, its result to Parquet.
Q_DRIVER = """\
import sys

import pandas as pd

namespace = {}
exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), namespace)
namespace["azureml_main"](pd.read_parquet(sys.argv[2], use_threads=False)).to_parquet(sys.argv[3])
"""


def q_frame() -> Any:
    """The same columns as (r)'s frame, 1,000 rows."""
    import pandas as pd

    return pd.DataFrame(
        {
            "id": range(Q_ROWS),
            "item": [f"item-{i % 17}" for i in range(Q_ROWS)],
            "price": [1.25 * (i % 40) for i in range(Q_ROWS)],
            "quantity": [i % 9 for i in range(Q_ROWS)],
        }
    )


def q_fitdock(report: Report, frame: Any) -> tuple[float, str]:
    """``execute_python_script`` on ``frame`` in this interpreter: (wall s, the isolation
    the script had)."""
    from fitdock.script.api import execute_python_script, sandbox_of, this_interpreter

    start = time.perf_counter()
    result = execute_python_script(SCRIPT, frame, sandbox="auto", environment=this_interpreter())
    took = time.perf_counter() - start
    if len(result.dataframes) != 1 or "band" not in result.dataframes[0].columns:
        report.warn(f"(q) execute_python_script returned {result.dataframes!r:.200}")
    said = sandbox_of(result.run) if result.run is not None else {}
    return took, str(said.get("isolation"))


def q_fresh(report: Report, scratch: Path, frame: Any) -> float:
    """The same work by hand, in a fresh ``python``; the wall time."""
    import pandas as pd

    source, output = scratch / "input.parquet", scratch / "output.parquet"
    output.unlink(missing_ok=True)
    start = time.perf_counter()
    frame.to_parquet(source)
    argv = [sys.executable, str(scratch / "driver.py"), str(scratch / "score.py")]
    done = subprocess.run([*argv, str(source), str(output)], check=False)
    out = pd.read_parquet(output, use_threads=False) if done.returncode == 0 else None
    took = time.perf_counter() - start
    if out is None or "band" not in out.columns:
        report.warn(f"(q) the fresh python exited {done.returncode}")
    return took


def bench_q(report: Report, scratch: Path, args: argparse.Namespace) -> None:
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        report.emit(f"bench (q) skipped: {exc.name} not installed")
        return
    from fitdock.script.sandbox import probe

    (scratch / "score.py").write_text(SCRIPT)
    (scratch / "driver.py").write_text(Q_DRIVER)
    frame = q_frame()
    warm = (q_fitdock(report, frame)[0], q_fresh(report, scratch, frame))  # imports, caches
    fitdock_s: list[float] = []
    fresh_s: list[float] = []
    isolations: set[str] = set()
    for round_number in range(args.repeat_q):
        if round_number % 2:  # drift falls on both sides alike
            fresh_s.append(q_fresh(report, scratch, frame))
        took, isolation = q_fitdock(report, frame)
        fitdock_s.append(took)
        isolations.add(isolation)
        if not round_number % 2:
            fresh_s.append(q_fresh(report, scratch, frame))
    sandbox = ", ".join(sorted(isolations))
    if isolations != {"bubblewrap"}:
        report.warn(
            f"(q) the script ran with isolation {sandbox}, not bubblewrap (this machine: "
            f"{probe().value}; apt-get install bubblewrap)"
        )
    fitdock, fresh = statistics.median(fitdock_s), statistics.median(fresh_s)
    added = (fitdock - fresh) * 1000
    per_round = [(f - p) * 1000 for f, p in zip(fitdock_s, fresh_s, strict=True)]
    best = (min(fitdock_s) - min(fresh_s)) * 1000  # less moved by a busy machine; not judged
    verdict = report.verdict("q_added_ms", added, TARGET_Q_MS)
    report.data["q"] = {
        "rows": Q_ROWS,
        "fitdock_s": fitdock_s,
        "fresh_s": fresh_s,
        "added_ms_per_round": per_round,
        "added_ms_best": best,
        "isolation": sorted(isolations),
        "warm_up_s": {"fitdock": warm[0], "fresh": warm[1]},
    }
    report.emit(
        f"bench (q) execute_python_script on {Q_ROWS:,} rows: {fitdock:.3f} s vs fresh python "
        f"{fresh:.3f} s: added {added:.0f} ms (target <= {TARGET_Q_MS:.0f} ms) {verdict}; "
        f"sandbox {sandbox}, best {best:.0f} ms, per round {min(per_round):.0f}.."
        f"{max(per_round):.0f} ms, warm-up {warm[0]:.3f} s vs {warm[1]:.3f} s"
    )


# ---------------------------------------------------------------------------------------------
# (r) the scoring service
# ---------------------------------------------------------------------------------------------
def frame_rows() -> list[dict[str, Any]]:
    return [
        {"id": i, "item": f"item-{i % 17}", "price": 1.25 * (i % 40), "quantity": i % 9}
        for i in range(ROWS)
    ]


def plain_app(script: Path) -> Any:
    """What one writes by hand: FastAPI calling azureml_main in this process."""
    import pandas as pd
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    namespace: dict[str, Any] = {}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    azureml_main = namespace["azureml_main"]
    app = FastAPI()

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        out = azureml_main(pd.DataFrame.from_records(body["dataframe1"]))
        out["band"] = out["band"].astype(str)  # what fitdock's normalize does to categories
        records = out.to_dict(orient="records")
        return JSONResponse({"Results": {"output1": records, "output2": []}})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run_plain_server(script: str, port: int) -> None:
    import uvicorn

    uvicorn.run(plain_app(Path(script)), host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(argv: list[str], port: int, log: Path) -> Iterator[str]:
    """A server process, until it answers /health; its base URL."""
    import httpx

    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{argv[:3]} did not start:\n{tail}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()  # uvicorn shuts down; fitdock's pool stops its workers
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def load(url: str, body: bytes, clients: int, requests: int) -> tuple[float, list[float], dict]:
    """``clients`` threads POST ``body`` ``requests`` times each; (wall s, latencies s,
    one answer), and every status that was not 200 counted in the answer's ``_bad``."""
    import httpx

    latencies: list[list[float]] = [[] for _ in range(clients)]
    bad: list[int] = []
    answer: dict[str, Any] = {}
    barrier = threading.Barrier(clients + 1)
    headers = {"content-type": "application/json"}

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            http.get("/health")  # the connection is open before the clock starts
            barrier.wait()
            for _ in range(requests):
                start = time.perf_counter()
                got = http.post("/score", content=body, headers=headers)
                latencies[number].append(time.perf_counter() - start)
                if got.status_code != 200:
                    bad.append(got.status_code)
                elif not answer:
                    answer.update(got.json())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return wall, [s for one in latencies for s in one], {**answer, "_bad": bad}


def percentile_ms(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000.0


def bench_r(report: Report, scratch: Path, args: argparse.Namespace) -> None:
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import pandas  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        report.emit(f"bench (r) skipped: {exc.name} not installed (pip install 'fitdock[serve]')")
        return
    script = scratch / "score.py"
    script.write_text(SCRIPT)
    body = json.dumps({"dataframe1": frame_rows()}).encode()
    ports = {"fitdock": free_port(), "plain": free_port()}
    serve = (
        f"from fitdock.script.serve import serve; serve({str(script)!r}, "
        f"port={ports['fitdock']}, workers={args.workers}, log_level='warning')"
    )
    argv = {
        "fitdock": [sys.executable, "-c", serve],
        "plain": [sys.executable, __file__, "--plain-server", str(script), str(ports["plain"])],
    }
    wall: dict[str, list[float]] = {"fitdock": [], "plain": []}
    lat: dict[str, list[float]] = {"fitdock": [], "plain": []}
    answers: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        urls = {
            k: stack.enter_context(server(v, ports[k], scratch / f"{k}.log"))
            for k, v in argv.items()
        }
        for url in urls.values():  # warm-up: imports, first connections, caches
            load(url, body, args.clients, 5)
        for round_number in range(args.repeat):
            order = ["fitdock", "plain"] if round_number % 2 == 0 else ["plain", "fitdock"]
            for name in order:
                seconds, samples, answers[name] = load(
                    urls[name], body, args.clients, args.requests
                )
                wall[name].append(seconds)
                lat[name].extend(samples)
                if answers[name]["_bad"]:
                    report.warn(f"(r) {name}: statuses {sorted(set(answers[name]['_bad']))}")
    if answers["fitdock"].get("Results") != answers["plain"].get("Results"):
        report.warn("(r) the two services answered the same request differently")
    per_round = args.clients * args.requests
    rps = {
        name: statistics.median(per_round / s for s in seconds) for name, seconds in wall.items()
    }
    p = {name: (percentile_ms(s, 0.5), percentile_ms(s, 0.99)) for name, s in lat.items()}
    ratio = rps["fitdock"] / rps["plain"]
    ok = ratio >= TARGET_R
    report.data.setdefault("checks", {})["r_ratio"] = {"value": ratio, "target": TARGET_R, "ok": ok}
    report.data["r"] = {
        "wall_s": wall,
        "requests_per_round": per_round,
        "rps": rps,
        "p50_p99_ms": p,
    }
    report.emit(
        f"bench (r) service: fitdock {rps['fitdock']:.0f} req/s (p50 {p['fitdock'][0]:.1f} ms, "
        f"p99 {p['fitdock'][1]:.1f} ms) vs plain FastAPI {rps['plain']:.0f} req/s (p50 "
        f"{p['plain'][0]:.1f} ms, p99 {p['plain'][1]:.1f} ms): ratio {ratio:.2f} (target >= "
        f"{TARGET_R}x) {'OK' if ok else 'MISS'}; {args.clients} clients, {ROWS}-row frame, "
        f"{args.workers} workers"
    )


# ---------------------------------------------------------------------------------------------
# main: one function per line
# ---------------------------------------------------------------------------------------------
LINES: dict[str, Callable[[Report, Path, argparse.Namespace], None]] = {
    "q": bench_q,
    "r": bench_r,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(LINES), help="run these lines")
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--repeat-q", type=int, default=5, help="(q) measured rounds (5)")
    parser.add_argument("--requests", type=int, default=50, help="(r) per client per round")
    parser.add_argument("--clients", type=int, default=8, help="(r) concurrent clients (8)")
    parser.add_argument("--workers", type=int, default=2, help="(r) fitdock workers (2)")
    parser.add_argument("--dir", type=Path, help="where to work (default: the temp dir)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--plain-server", nargs=2, help=argparse.SUPPRESS)  # SCRIPT PORT
    args = parser.parse_args(argv)
    if min(args.repeat, args.repeat_q, args.requests, args.clients, args.workers) < 1:
        parser.error("--repeat, --repeat-q, --requests, --clients and --workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_server:
        run_plain_server(args.plain_server[0], int(args.plain_server[1]))
        return 0
    json_path = args.json.resolve() if args.json else None
    report = Report(data={"repeat": args.repeat, "repeat_q": args.repeat_q})
    for name in args.only or list(LINES):
        with tempfile.TemporaryDirectory(prefix=f"fitdock-bench-{name}-", dir=args.dir) as tmp:
            scratch = Path(tmp)
            os.environ["FITDOCK_HOME"] = str(scratch / "home")
            LINES[name](report, scratch, args)
    report.finish(json_path, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
