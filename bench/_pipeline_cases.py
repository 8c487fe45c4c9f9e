"""Lines (k), (l) and (m) of bench_pipelines.py: the pipeline scheduler against plain
``python`` and against Metaflow's local runner (the peer) on the same DAGs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import Report

TARGET_STEP_MS = 40.0  # (k) per-step time added over plain python
TARGET_PARALLEL_S = 1.3  # (l) 8 steps of 1 s at once
TARGET_REUSE_S = 0.5  # (m) 100 reuse decisions
CHAIN = 100
PEER_CHAIN = 20  # Metaflow is slow: a shorter chain, reported per step
FAN = 8


def chain(work: Path, steps: int):  # type: ignore[no-untyped-def]
    from fitdock.pipelines import Pipeline, PythonScriptStep, RunConfiguration

    (work / "noop.py").write_text("")
    config = RunConfiguration()
    previous = None
    last = None
    for i in range(steps):
        step = PythonScriptStep(
            "noop.py", name=f"s{i:03d}", source_directory=work, runconfig=config
        )
        if previous is not None:
            step.run_after(previous)
        previous = last = step
    return Pipeline(None, [last])


def fan(work: Path):  # type: ignore[no-untyped-def]
    from fitdock.pipelines import Pipeline, PythonScriptStep, RunConfiguration

    (work / "sleep1.py").write_text("import time\ntime.sleep(1)\n")
    config = RunConfiguration()
    steps = [
        PythonScriptStep("sleep1.py", name=f"f{i}", source_directory=work, runconfig=config)
        for i in range(FAN)
    ]
    return Pipeline(None, steps)


def bench_chain(report: Report, scratch: Path, repeat: int = 1) -> None:
    """(k) and (m): one measured run each (a 100-step chain is long enough)."""
    work = scratch / "chain"
    work.mkdir()
    pipeline = chain(work, CHAIN)
    started = time.perf_counter()
    run = pipeline.submit(wait=True, regenerate_outputs=True)
    fitdock_s = time.perf_counter() - started
    if run.status.value != "Completed":
        report.warn(f"(k) pipeline {run.id} ended {run.status.value}: {run.error}")
    started = time.perf_counter()
    for _ in range(CHAIN):
        subprocess.run([sys.executable, str(work / "noop.py")], check=True)
    plain_s = time.perf_counter() - started
    added = (fitdock_s - plain_s) / CHAIN * 1000
    verdict = report.verdict("k_step_added_ms", added, TARGET_STEP_MS)
    peer = metaflow_chain(scratch)
    report.emit(
        f"bench (k) {CHAIN} no-op steps in a chain: fitdock {fitdock_s:.2f} s, plain python "
        f"{plain_s:.2f} s, added {added:.1f} ms a step (target <= {TARGET_STEP_MS:.0f} ms) "
        f"{verdict}; {peer}"
    )
    started = time.perf_counter()
    again = pipeline.submit(wait=True)
    reuse_s = time.perf_counter() - started
    reused = sum(1 for state in again.record.steps.values() if state.reused)
    verdict = report.verdict("m_reuse_s", reuse_s, TARGET_REUSE_S)
    report.emit(
        f"bench (m) the same {CHAIN}-step pipeline again, nothing changed: {reuse_s:.3f} s for "
        f"{reused} reuse decisions (target <= {TARGET_REUSE_S} s) {verdict}"
    )


def bench_fan(report: Report, scratch: Path, repeat: int = 1) -> None:
    """(l): one measured run."""
    work = scratch / "fan"
    work.mkdir()
    started = time.perf_counter()
    run = fan(work).submit(wait=True, max_concurrency=FAN, regenerate_outputs=True)
    wall = time.perf_counter() - started
    if run.status.value != "Completed":
        report.warn(f"(l) pipeline {run.id} ended {run.status.value}: {run.error}")
    verdict = report.verdict("l_parallel_s", wall, TARGET_PARALLEL_S)
    report.emit(
        f"bench (l) {FAN} independent 1 s steps, max_concurrency={FAN}: fitdock {wall:.2f} s "
        f"(target <= {TARGET_PARALLEL_S} s) {verdict}; {metaflow_fan(scratch)}"
    )


# ---------------------------------------------------------------------------------------------
# The peer: Metaflow's local runner
# ---------------------------------------------------------------------------------------------
def _metaflow(flow: Path, scratch: Path, *extra: str) -> float | None:
    env = {
        **os.environ,
        "USERNAME": "bench",
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(scratch / "metaflow"),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(flow), "--quiet", "run", *extra],
        capture_output=True, text=True, env=env, cwd=flow.parent, check=False,
    )  # fmt: skip
    return time.perf_counter() - started if done.returncode == 0 else None


def metaflow_chain(scratch: Path) -> str:
    if importlib.util.find_spec("metaflow") is None:
        return "peer skipped: metaflow not installed"
    names = [f"s{i}" for i in range(PEER_CHAIN)]
    body = ["from metaflow import FlowSpec, step", "class Chain(FlowSpec):"]
    for i, name in enumerate(["start", *names]):
        following = names[i] if i < len(names) else "end"
        body += ["    @step", f"    def {name}(self):", f"        self.next(self.{following})"]
    body += ["    @step", "    def end(self):", "        pass", "Chain()"]
    flow = scratch / "chain_flow.py"
    flow.write_text("\n".join(body) + "\n")
    took = _metaflow(flow, scratch)
    if took is None:
        return "peer: metaflow failed"
    per_step = took / PEER_CHAIN * 1000
    return f"peer Metaflow local, {PEER_CHAIN}-step chain: {took:.2f} s, {per_step:.0f} ms a step"


def metaflow_fan(scratch: Path) -> str:
    if importlib.util.find_spec("metaflow") is None:
        return "peer skipped: metaflow not installed"
    flow = scratch / "fan_flow.py"
    flow.write_text(
        "from metaflow import FlowSpec, step\n"
        "import time\n"
        "class Fan(FlowSpec):\n"
        "    @step\n"
        "    def start(self):\n"
        f"        self.items = list(range({FAN}))\n"
        "        self.next(self.work, foreach='items')\n"
        "    @step\n"
        "    def work(self):\n"
        "        time.sleep(1)\n"
        "        self.next(self.join)\n"
        "    @step\n"
        "    def join(self, inputs):\n"
        "        self.next(self.end)\n"
        "    @step\n"
        "    def end(self):\n"
        "        pass\n"
        "Fan()\n"
    )
    took = _metaflow(flow, scratch, "--max-workers", str(FAN))
    if took is None:
        return "peer: metaflow failed"
    return f"peer Metaflow local --max-workers {FAN}: {took:.2f} s"
