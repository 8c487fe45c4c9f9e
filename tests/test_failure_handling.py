"""Restart policy (pure), hang watchdog and automatic restarts (real processes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fitdock import Estimator, RunStatus
from fitdock.jobside.common import RESTARTABLE, Decision, Outcome, decide

# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", sorted(RESTARTABLE))
def test_restartable_outcomes_restart_until_the_budget_is_spent(outcome: Outcome) -> None:
    assert decide(outcome, attempts=1, max_restarts=2) is Decision.RESTART
    assert decide(outcome, attempts=2, max_restarts=2) is Decision.RESTART
    assert decide(outcome, attempts=3, max_restarts=2) is Decision.STOP
    assert decide(outcome, attempts=1, max_restarts=0) is Decision.STOP


@pytest.mark.parametrize("outcome", [Outcome.COMPLETED, Outcome.CANCELED])
def test_completed_and_canceled_never_restart(outcome: Outcome) -> None:
    assert decide(outcome, attempts=1, max_restarts=10) is Decision.STOP


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        decide(Outcome.RANK_FAILED, attempts=0, max_restarts=1)
    with pytest.raises(ValueError):
        decide(Outcome.RANK_FAILED, attempts=1, max_restarts=-1)


# ---------------------------------------------------------------------------------------------
# Hang watchdog
# ---------------------------------------------------------------------------------------------
HANGS = """\
import sys, time
print("loading shard 3", flush=True)
time.sleep(60)
"""

# Quiet but for heartbeats, every 0.25 s for 4 s: twice BEAT_HANG, counted from the first
# beat (the watchdog counts from launch, so a slow interpreter start on a loaded machine
# must not be mistaken for a hang: BEAT_HANG leaves it 2 s to get to its first beat).
BEAT_HANG = 2
BEATS = """\
import time
from fitdock import Run
ctx = Run.get_context()
ctx.heartbeat()
first = time.time()
for _ in range(16):
    time.sleep(0.25)
    ctx.heartbeat()
(ctx.output_dir / "quiet_for.txt").write_text(str(time.time() - first))
"""


def script(tmp_path: Path, text: str) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "train.py").write_text(text)
    return src


def test_a_silent_job_is_stopped_as_hung_with_its_last_line(tmp_path: Path) -> None:
    est = Estimator(
        script(tmp_path, HANGS), entry_script="train.py", user_managed=True, hang_timeout_seconds=1
    )
    run = est.fit()
    returned = time.time()
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert run.error["reason"] == "hung"
    assert "hang_timeout_seconds=1" in run.error["message"]
    assert run.error["last_lines"] == {"0": "loading shard 3"}
    # measured from the job's last line (its log's last write), not from launch: stopped
    # after the 1 s of silence, not before, and well before the script's 60 s sleep ends
    last_line = (run.log_dir / "rank_0.stdout.log").stat().st_mtime
    assert 1.0 <= returned - last_line < 10, returned - last_line


def test_heartbeats_keep_a_quiet_job_alive(tmp_path: Path) -> None:
    est = Estimator(
        script(tmp_path, BEATS),
        entry_script="train.py",
        user_managed=True,
        hang_timeout_seconds=BEAT_HANG,
    )
    run = est.fit()
    assert run.status is RunStatus.COMPLETED, run.error
    quiet_for = float((run.output_dir / "quiet_for.txt").read_text())
    assert quiet_for > BEAT_HANG  # without the beats the watchdog would have stopped it


# ---------------------------------------------------------------------------------------------
# Automatic restarts
# ---------------------------------------------------------------------------------------------
STEPS = 12
CRASHY = f"""\
import json, os, sys, time
from fitdock import Run
ctx = Run.get_context()
state, step = 1, 0
if ctx.resume_dir is not None and (ctx.resume_dir / "state.json").exists():
    saved = json.loads((ctx.resume_dir / "state.json").read_text())
    state, step = saved["state"], saved["step"]
ctx.log("start_step", step)
attempt = int(os.environ["FITDOCK_ATTEMPT"])
while step < {STEPS}:
    state = (state * 31 + step) % 1000003
    step += 1
    tmp = ctx.checkpoint_dir / "state.json.tmp"
    tmp.write_text(json.dumps({{"state": state, "step": step}}))
    os.replace(tmp, ctx.checkpoint_dir / "state.json")
    if step == 4 * attempt and attempt < 3 and os.environ.get("CRASH") == "1":
        print(f"crashing at step {{step}} in attempt {{attempt}}", file=sys.stderr, flush=True)
        os._exit(9)
(ctx.output_dir / "final.json").write_text(json.dumps({{"state": state, "step": step}}))
"""


def crashy(tmp_path: Path, crash: bool, restarts: int) -> Estimator:
    return Estimator(
        script(tmp_path, CRASHY),
        entry_script="train.py",
        user_managed=True,
        environment_variables={"CRASH": "1" if crash else "0"},
        max_restarts=restarts,
    )


def test_restarts_resume_from_the_checkpoint_and_end_like_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    whole = crashy(tmp_path, crash=False, restarts=0).fit()
    run = crashy(tmp_path, crash=True, restarts=2).fit()
    assert whole.status is RunStatus.COMPLETED and run.status is RunStatus.COMPLETED, run.error
    final = [json.loads((r.output_dir / "final.json").read_text()) for r in (whole, run)]
    assert final[0] == final[1] == {"state": final[0]["state"], "step": STEPS}
    assert run.get_metrics("start_step") == {"start_step": [0, 4, 8]}
    attempts = run.record["attempts"]
    assert [a["outcome"] for a in attempts] == ["rank_failed", "rank_failed", "completed"]
    assert attempts[0]["error"]["exit_code"] == 9
    assert "crashing at step 4 in attempt 1" in attempts[0]["error"]["stderr_tail"]
    archived = run.log_dir / "attempt-1" / "rank_0.stderr.log"
    assert "crashing at step 4" in archived.read_text()
    assert "crashing" not in (run.log_dir / "rank_0.stderr.log").read_text()


def test_restarts_stop_when_the_budget_is_spent(tmp_path: Path) -> None:
    run = crashy(tmp_path, crash=True, restarts=1).fit()
    assert run.status is RunStatus.FAILED
    assert [a["outcome"] for a in run.record["attempts"]] == ["rank_failed", "rank_failed"]
    assert run.error is not None and "crashing at step 8 in attempt 2" in run.error["stderr_tail"]
