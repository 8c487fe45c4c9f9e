"""Load (issue 15): many fits on one cold environment, many metric lines from many ranks, a
store of thousands of runs, a big pipeline, and the scoring service under concurrent
clients. Sized for CI here; ``bench/bench_load.py`` runs the full sizes and prints figures
(it calls the workloads below with its own sizes)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import write_script

from fitdock import Estimator, Mpi, RunStatus

# ---------------------------------------------------------------------------------------------
# Workloads (bench/bench_load.py runs them at full size)
# ---------------------------------------------------------------------------------------------
RANK_SCRIPT = """
import os
from fitdock import Run
ctx = Run.get_context()
ctx.log("rank", ctx.rank)
with open(os.path.join(ctx.output_dir, f"done{ctx.rank}"), "w") as f:
    f.write(str(ctx.world_size))
"""


def concurrent_fits(src: Path, fits: int) -> list[Any]:
    """``fits`` fits at once, every other one a 2-rank MPI job, on one environment that no
    one has built yet (a virtualenv with no packages: nothing to download)."""
    write_script(src, RANK_SCRIPT)

    def one(i: int) -> Any:
        kwargs: dict[str, Any] = {"distributed_training": Mpi(), "process_count_per_node": 2}
        return Estimator(src, entry_script="train.py", **(kwargs if i % 2 else {})).fit()

    with ThreadPoolExecutor(fits) as pool:
        return list(pool.map(one, range(fits)))


def check_concurrent_fits(runs: list[Any], home: Path) -> None:
    builds = [run.record["environment_build"] for run in runs]
    assert [b["built"] for b in builds].count(True) == 1, builds  # one build, the rest reuse
    assert len({b["venv"] for b in builds}) == 1
    envs = [p for p in (home / "envs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(envs) == 1, envs  # one cache entry
    logs = [run.log_dir / "env-build.log" for run in runs]
    assert sum("uv" in p.read_text() for p in logs if p.exists()) >= 1
    for i, run in enumerate(runs):
        assert run.status is RunStatus.COMPLETED, run.error
        size = 2 if i % 2 else 1
        assert run.record["world_size"] == size
        assert {r["exit_code"] for r in run.record["ranks"].values()} == {0}
        for rank in range(size):
            assert (run.output_dir / f"done{rank}").read_text() == str(size)
        assert sorted(run.get_metrics("rank", as_lists=True)["rank"]) == list(range(size))


METRICS_SCRIPT = """
import sys
from fitdock import Run
ctx = Run.get_context()
for i in range(int(sys.argv[1])):
    ctx.log("loss", i, step=i)
"""


def many_metrics(src: Path, ranks: int, lines: int) -> Any:
    write_script(src, METRICS_SCRIPT)
    return Estimator(
        src,
        entry_script="train.py",
        script_params=[str(lines)],
        user_managed=True,
        process_count_per_node=ranks,
        distributed_training=Mpi(),
    ).fit()


def check_metrics(run: Any, ranks: int, lines: int) -> None:
    """Every line arrived whole, each rank's in its order."""
    assert run.status is RunStatus.COMPLETED, run.error
    seen: dict[int, list[int]] = {rank: [] for rank in range(ranks)}
    with open(run.run_dir / "metrics.jsonl") as handle:
        for number, line in enumerate(handle, 1):
            assert line.endswith("\n"), f"line {number} is torn"
            record = json.loads(line)  # a torn or interleaved line does not parse
            assert record["name"] == "loss" and record["step"] == record["value"]
            seen[record["rank"]].append(record["value"])
    assert {rank: values == list(range(lines)) for rank, values in seen.items()} == {
        rank: True for rank in range(ranks)
    }


def make_store(home: Path, template: dict[str, Any], count: int) -> list[str]:
    """``count`` run folders written directly, with valid records from ``template``."""
    root = home / "runs"
    ids = []
    for i in range(count):
        run_id = f"load_{i:06d}_{random.randrange(16**6):06x}"
        folder = root / run_id
        folder.mkdir(parents=True)
        record = dict(
            template,
            id=run_id,
            name="load",
            created_at=f"2020-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}+00:00",
        )
        (folder / "run.json").write_text(json.dumps(record))
        ids.append(run_id)
    return ids


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


# the `fitdock` command (the console script runs exactly this)
CLI = [sys.executable, "-c", "import sys; from fitdock.cli import main; sys.exit(main())"]


def runs_list_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "runs", "list", *args],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    )


def big_pipeline(work: Path, steps: int, fan_out: int) -> Any:
    """A pipeline of ``steps`` no-op steps: a root, ``fan_out`` branches after it, chains
    after each branch, and one step that needs every chain's end."""
    from fitdock.pipelines import Pipeline, PythonScriptStep, RunConfiguration

    (work / "noop.py").write_text("")
    config = RunConfiguration()

    def step(name: str) -> Any:
        return PythonScriptStep("noop.py", name=name, source_directory=work, runconfig=config)

    root, last = step("root"), step("last")
    per_branch, longer = divmod(steps - 2, fan_out)
    for branch in range(fan_out):
        previous = root
        for depth in range(per_branch + (branch < longer)):
            current = step(f"b{branch:02d}_{depth:02d}")
            current.run_after(previous)
            previous = current
        last.run_after(previous)
    return Pipeline(None, [last])


@contextlib.contextmanager
def scoring_service(folder: Path, workers: int = 2) -> Iterator[tuple[str, int]]:
    """``fitdock script serve`` as its own process on loopback: its URL and pid."""
    import httpx

    script = folder / "score.py"
    script.write_text(
        "def azureml_main(dataframe1):\n"
        "    out = dataframe1.copy()\n"
        "    out['total'] = out['a'] + out['b']\n"
        "    return out\n"
    )
    with contextlib.closing(__import__("socket").socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [*CLI, "script", "serve", str(script)]
    argv += ["--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(argv, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).json()["idle"] == workers:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("the scoring service did not start")
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


BAD_BODIES: list[Any] = [
    b"{not json",
    {"dataframe1": "rows"},
    {"dataframe1": [{"a": 1, "b": 2}], "extra": 1},
    {"Inputs": {"input1": [[1, 2]]}},
]


def hammer(url: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` clients for ``seconds``: every fourth request a bad one. Good requests
    must all be answered 200 with the right total; the server's RSS is sampled."""
    import httpx

    counts = {"good": 0, "bad": 0, "failed_good": 0, "bad_not_4xx": 0}
    failures: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            i = 0
            while time.monotonic() < end:
                i += 1
                if i % 4 == 0:
                    bad = BAD_BODIES[(number + i) % len(BAD_BODIES)]
                    if isinstance(bad, bytes):
                        got = http.post(
                            "/score", content=bad, headers={"content-type": "application/json"}
                        )
                    else:
                        got = http.post("/score", json=bad)
                    with lock:
                        counts["bad"] += 1
                        counts["bad_not_4xx"] += not 400 <= got.status_code < 500
                    continue
                rows = [{"a": number, "b": i}]
                got = http.post("/score", json={"dataframe1": rows})
                ok = got.status_code == 200 and got.json()["Results"]["output1"] == [
                    {"a": number, "b": i, "total": number + i}
                ]
                with lock:
                    counts["good"] += 1
                    if not ok:
                        counts["failed_good"] += 1
                        failures.append(f"{got.status_code} {got.text[:200]}")

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return {**counts, "failures": failures[:5]}


# ---------------------------------------------------------------------------------------------
# Tests (CI sizes)
# ---------------------------------------------------------------------------------------------
@pytest.mark.mpi
def test_eight_concurrent_fits_share_one_cold_environment(
    tmp_path: Path, fitdock_home: Path
) -> None:
    runs = concurrent_fits(tmp_path / "src", 8)
    check_concurrent_fits(runs, fitdock_home)


@pytest.mark.mpi
def test_four_ranks_logging_metrics_lose_and_tear_no_line(tmp_path: Path) -> None:
    run = many_metrics(tmp_path / "src", ranks=4, lines=20_000)
    check_metrics(run, ranks=4, lines=20_000)


def test_a_store_of_thousands_of_runs_lists_correctly(tmp_path: Path, fitdock_home: Path) -> None:
    src = write_script(tmp_path / "src", "print('hi')\n")
    first = Estimator(src, entry_script="train.py", user_managed=True).fit()
    assert first.status is RunStatus.COMPLETED
    template = json.loads((first.run_dir / "run.json").read_text())
    ids = make_store(fitdock_home, template, 2_000)
    took, runs = timed(lambda: __import__("fitdock").Run.list())
    assert [run.id for run in runs] == [*ids, first.id]  # oldest first
    assert took < 5, took  # bench/bench_load.py holds the 1 s target at 5,000 runs
    took, shown = timed(lambda: runs_list_cli("--json", "--limit", "5"))
    assert [item["id"] for item in json.loads(shown.stdout)] == [*ids[-4:], first.id]
    assert took < 5, took
    every = json.loads(runs_list_cli("--json", "--limit", "0").stdout)
    assert len(every) == 2_001 and {item["status"] for item in every} == {"Completed"}
    # the listing keeps summaries in a cache: a record that changes is read again
    changed = fitdock_home / "runs" / ids[7] / "run.json"
    changed.write_text(json.dumps({**json.loads(changed.read_text()), "status": "Failed"}))
    failed = json.loads(runs_list_cli("--json", "--limit", "0", "--status", "Failed").stdout)
    assert [item["id"] for item in failed] == [ids[7]]


@pytest.mark.timeout(240)
def test_a_wide_pipeline_completes_then_is_reused_whole(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    pipeline = big_pipeline(tmp_path / "work", steps=100, fan_out=25)
    run = pipeline.submit(wait=True, max_concurrency=4, regenerate_outputs=True)
    assert run.status.value == "Completed", run.error
    assert len(run.record.steps) == 100
    assert not any(state.reused for state in run.record.steps.values())
    again = pipeline.submit(wait=True)
    assert again.status.value == "Completed"
    assert sum(1 for state in again.record.steps.values() if state.reused) == 100


def test_the_scoring_service_under_concurrent_clients(tmp_path: Path) -> None:
    with scoring_service(tmp_path) as (url, pid):
        hammer(url, clients=8, seconds=1.0)  # warm up: the first answers load pandas
        before = rss_kib(pid)
        counts = hammer(url, clients=8, seconds=5.0)
        after = rss_kib(pid)
    assert counts["failed_good"] == 0, counts
    assert counts["bad_not_4xx"] == 0, counts
    assert counts["good"] > 20 and counts["bad"] > 5, counts
    assert after - before < 20 * 1024, (before, after)  # KiB: flat, not growing per request
