"""Two MPI ranks on this machine: rank variables, per-rank logs, tagged output, fail-fast."""

from __future__ import annotations

import datetime as dt
import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import RECORD_PID, pid_alive, processes_mentioning, read_pids, write_script

from fitdock import Estimator, Mpi, RunStatus
from fitdock.distributions.mpi import Flavor, MpiLauncher, mpi_argv


def mpi_estimator(src: Path, **kwargs: Any) -> Estimator:
    kwargs.setdefault("process_count_per_node", 2)
    return Estimator(
        src, entry_script="train.py", user_managed=True, distributed_training=Mpi(), **kwargs
    )


RANKS = """
import json, os, sys
from fitdock import Run
ctx = Run.get_context()
print(f"hello from {ctx.rank}")
print(f"warning from {ctx.rank}", file=sys.stderr)
ctx.log("rank_seen", ctx.rank)
names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "FITDOCK_RUN_ID")
seen = {name: os.environ.get(name) for name in names}
seen["ctx"] = [ctx.rank, ctx.world_size, ctx.local_rank]
with open(os.path.join(ctx.output_dir, f"rank{ctx.rank}.json"), "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.mpi
def test_two_ranks_get_their_variables_and_logs(tmp_path: Path) -> None:
    run = mpi_estimator(write_script(tmp_path / "src", RANKS)).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    for rank in (0, 1):
        seen = json.loads((run.output_dir / f"rank{rank}.json").read_text())
        assert seen == {
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "FITDOCK_RUN_ID": run.id,
            "ctx": [rank, 2, rank],
        }
        assert (run.log_dir / f"rank_{rank}.stdout.log").read_text() == f"hello from {rank}\n"
        assert (run.log_dir / f"rank_{rank}.stderr.log").read_text() == f"warning from {rank}\n"
    record = run.record
    assert record["world_size"] == 2
    assert {rank: r["exit_code"] for rank, r in record["ranks"].items()} == {"0": 0, "1": 0}
    assert len({r["pid"] for r in record["ranks"].values()}) == 2
    assert "-n" in record["argv"] and record["argv"][record["argv"].index("-n") + 1] == "2"
    assert Path(record["argv"][0]).name in ("mpirun", "mpiexec")
    assert record["env"]["FITDOCK_MPI"]
    assert run.get_metrics(rank=1, as_lists=True) == {"rank_seen": [1]}
    assert sorted(run.get_metrics()["rank_seen"]) == [0, 1]
    assert {"logs/rank_0.stdout.log", "logs/rank_1.stdout.log"} <= set(run.get_file_names())


@pytest.mark.mpi
def test_show_output_tags_lines_by_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = mpi_estimator(write_script(tmp_path / "src", RANKS)).fit(show_output=True)
    assert run.status is RunStatus.COMPLETED, run.error
    lines = capsys.readouterr().out.splitlines()
    assert "[rank 0] hello from 0" in lines
    assert "[rank 1] hello from 1" in lines
    assert "[rank 0:stderr] warning from 0" in lines
    assert "[rank 1:stderr] warning from 1" in lines
    assert not any(line == "hello from 0" for line in lines), "untagged rank output"


FAIL_ONE = (
    RECORD_PID
    + """
import sys, time
from pathlib import Path
from fitdock import Run
rank = Run.get_context().rank
pids = Path(os.environ["PID_FILE"])
if rank == 1:
    while len(pids.read_text().split()) < 2:  # both ranks are up
        time.sleep(0.02)
    print("rank 1: loading shard", file=sys.stderr)
    print("rank 1: cannot read shard 7, giving up", file=sys.stderr)
    sys.exit(3)
time.sleep(60)
"""
)


@pytest.mark.mpi
def test_one_failing_rank_stops_the_job(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    est = mpi_estimator(
        write_script(tmp_path / "src", FAIL_ONE), environment_variables={"PID_FILE": str(pid_file)}
    )
    run = est.fit()
    returned_wall = time.time()
    assert run.status is RunStatus.FAILED
    error = run.error
    assert error is not None
    assert error["reason"] == "rank_failed"
    assert error["rank"] == 1
    assert error["exit_code"] == 3
    assert error["signal"] is None
    assert "rank 1: cannot read shard 7, giving up" in error["stderr_tail"]
    assert error["stderr_tail"].splitlines()[-1] == "rank 1: cannot read shard 7, giving up"
    assert "rank 1" in error["message"] and "exit code 3" in error["message"]
    failed_at = run.record["ranks"]["1"]["ended"]
    # measured from the failure (rank 1's exit record), not from launch
    assert returned_wall - failed_at < 5.0, "fit() should return soon after the rank failed"
    pids = read_pids(pid_file, 2)
    assert not [pid for pid in pids if pid_alive(pid)], "the sleeping rank outlived the job"


# ---------------------------------------------------------------------------------------------
# The launcher's argv, per MPI flavor (pure; golden file)
# ---------------------------------------------------------------------------------------------
def test_mpirun_argv_matches_the_golden_file(golden: Callable[[str, str], None]) -> None:
    command = ["/opt/venv/bin/python", "train.py", "--lr", "0.1"]
    cases = [
        ("mpich", MpiLauncher("/opt/venv/bin/mpiexec", Flavor.MPICH, "5.0.2"), Mpi(), 2),
        ("openmpi", MpiLauncher("/usr/bin/mpirun", Flavor.OPEN_MPI, "4.1.6"), Mpi(), 1),
        (
            "openmpi-oversubscribed",
            MpiLauncher("/usr/bin/mpirun", Flavor.OPEN_MPI, "4.1.6"),
            Mpi(extra_args=("-x", "NCCL_DEBUG")),
            100_000,
        ),
        ("intel", MpiLauncher("/opt/intel/bin/mpirun", Flavor.INTEL_MPI, "2021"), Mpi(), 2),
    ]
    text = "".join(
        f"{name}: {shlex.join(mpi_argv(launcher, config, n, command))}\n"
        for name, launcher, config, n in cases
    )
    golden("mpirun-argv.txt", text)


IGNORE_TERM = (
    RECORD_PID
    + """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(60)
"""
)


@pytest.mark.mpi
def test_deadline_kills_both_ranks_after_the_grace(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    est = mpi_estimator(
        write_script(tmp_path / "src", IGNORE_TERM),
        environment_variables={"PID_FILE": str(pid_file)},
        # Long enough for both ranks to start on a slow 2-core machine.
        max_run_duration_seconds=3,
        termination_grace_seconds=1,
    )
    run = est.fit()
    returned = time.time()
    pids = read_pids(pid_file, 2)
    assert run.status is RunStatus.TIMED_OUT
    started = dt.datetime.fromisoformat(run.record["started_at"]).timestamp()
    assert 4.0 - 0.05 <= returned - started < 5.5
    assert not [pid for pid in pids if pid_alive(pid)]
    assert processes_mentioning(run.id) == []
