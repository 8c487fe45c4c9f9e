"""The process boundary itself: the reaper running several commands side by side."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fitdock.launchers.process import NEXT, JobProcess, split_commands


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
