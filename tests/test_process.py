"""The process boundary itself: the reaper running several commands side by side."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from fitdock.jobside import jobtree
from fitdock.process import NEXT, JobProcess, reaper_argv, split_commands


def run(commands: list[list[str]], tmp_path: Path, limit: float = 20) -> tuple[int | None, float]:
    start = time.monotonic()
    job = JobProcess(
        commands, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, log_path=tmp_path / "log"
    )
    try:
        code = job.wait(limit)
    finally:
        job.close()
    return code, time.monotonic() - start


def test_split_commands() -> None:
    assert split_commands(["a", "b", NEXT, "c", NEXT, NEXT, "d"]) == [["a", "b"], ["c"], ["d"]]


def test_all_commands_must_end_and_succeed(tmp_path: Path) -> None:
    quick = [sys.executable, "-c", "pass"]
    slower = [sys.executable, "-c", "import time; time.sleep(0.5)"]
    code, elapsed = run([quick, slower], tmp_path)
    assert code == 0
    assert elapsed >= 0.5


def test_one_failing_command_stops_the_others(tmp_path: Path) -> None:
    fails = [sys.executable, "-c", "import sys, time; time.sleep(0.3); sys.exit(3)"]
    marker = tmp_path / "still-running"
    sleeps = [sys.executable, "-c", f"import time; time.sleep(30); open({str(marker)!r}, 'w')"]
    code, elapsed = run([sleeps, fails], tmp_path)
    assert code == 3
    assert elapsed < 5
    assert not marker.exists()


def test_a_missing_program_is_exit_127_with_a_message(tmp_path: Path) -> None:
    code, _ = run([["/no/such/program"]], tmp_path)
    assert code == 127
    assert "cannot run /no/such/program" in (tmp_path / "log").read_text()


TRAPS_TERM = """\
import os, signal, sys, time
out = sys.argv[1]
def on_term(*_):
    with open(out, "a") as handle:
        handle.write("TERM\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term if sys.argv[2] == "obey" else signal.SIG_IGN)
with open(out + ".pid", "w") as handle:
    handle.write(str(os.getpid()))
time.sleep(60)
"""


def nested(tmp_path: Path, mode: str) -> tuple[JobProcess, Path]:
    """An outer reaper relaying orders to an inner one (as into a container)."""
    script = tmp_path / "traps.py"
    script.write_text(TRAPS_TERM)
    out = tmp_path / "out"
    inner = [
        *reaper_argv(sys.executable, jobtree.__file__),
        sys.executable,
        str(script),
        str(out),
        mode,
    ]
    job = JobProcess(
        [inner],
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        log_path=tmp_path / "log",
        relay_orders=True,
    )
    deadline = time.monotonic() + 10
    while not Path(str(out) + ".pid").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return job, out


def test_relayed_orders_reach_the_inner_job_once(tmp_path: Path) -> None:
    job, out = nested(tmp_path, "obey")
    try:
        job.signal(signal.SIGTERM)
        assert job.wait(10) == 0
    finally:
        job.close()
    assert out.read_text() == "TERM\n"


def test_the_inner_job_stops_when_the_outer_reaper_dies(tmp_path: Path) -> None:
    job, out = nested(tmp_path, "ignore")
    pid = int(Path(str(out) + ".pid").read_text())
    os.kill(job.pid, signal.SIGKILL)  # the outer reaper dies: the inner one's stdin closes
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.wait(1)
    job.close()
    assert not Path(f"/proc/{pid}").exists(), "the inner job outlived its reapers"
