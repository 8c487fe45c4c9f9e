"""The typed run record: records of earlier versions load, edits are validated, a rank
killed with its job says so, and error reasons are one enum."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from helpers import write_script
from pydantic import ValidationError

from fitdock import Estimator, Run, RunStatus
from fitdock.runs.record import ErrorReason, RankExit, RunError, RunRecord
from fitdock.runs.store import RunDir, runs_root

LEGACY = Path(__file__).parent / "golden" / "legacy"  # run.json files of fitdock 0.1 (issue 9)


@pytest.mark.parametrize("path", sorted(LEGACY.glob("*.run.json")), ids=lambda p: p.stem)
def test_records_of_earlier_versions_load_and_keep_what_they_said(path: Path) -> None:
    old = json.loads(path.read_text())
    record = RunRecord.model_validate(old)
    assert record.status is RunStatus(old["status"])
    new = record.as_json()
    for key in ("id", "argv", "commands", "env", "world_size", "spec", "source", "attempt"):
        assert new[key] == old[key], key
    if old["error"] and old["error"]["reason"] in {r.value for r in ErrorReason}:
        assert new["error"] == old["error"]  # the same keys, nothing added
    assert [a["outcome"] for a in new["attempts"]] == [a.get("outcome") for a in old["attempts"]]


def test_an_old_slurm_state_reason_becomes_scheduler(fitdock_home: Path) -> None:
    old = json.loads((LEGACY / "slurm-node-fail.run.json").read_text())
    run_dir = runs_root() / old["id"]
    run_dir.mkdir(parents=True)
    shutil.copyfile(LEGACY / "slurm-node-fail.run.json", run_dir / "run.json")
    run = Run(old["id"])  # terminal: read as it is, Slurm is not asked
    assert run.status is RunStatus.FAILED
    assert run.error == {
        "reason": "scheduler",
        "message": "Slurm ended job 42 as NODE_FAIL",
        "scheduler_state": "NODE_FAIL",
    }
    assert run.record["slurm"]["state"] == "NODE_FAIL"


def test_edits_are_typed_and_a_failed_block_writes_nothing(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    shutil.copyfile(LEGACY / "local-completed.run.json", run.record_path)
    before = run.record_path.read_bytes()
    with pytest.raises(ValidationError), run.edit() as record:
        record.status = "Finished"  # type: ignore[assignment]  # not a RunStatus
    with pytest.raises(ValidationError), run.edit() as record:
        record.error = RunError(reason="exploded")  # type: ignore[arg-type]
    with pytest.raises(ValueError), run.edit() as record:
        record.parent_id = "pipeline-1"
        raise ValueError("the edit stops here")
    assert run.record_path.read_bytes() == before
    with run.edit() as record:
        record.parent_id = "pipeline-1"
    assert run.read().parent_id == "pipeline-1"
    assert json.loads(run.record_path.read_text())["parent_id"] == "pipeline-1"


def test_unknown_fields_are_refused() -> None:
    old = json.loads((LEGACY / "local-completed.run.json").read_text())
    with pytest.raises(ValidationError, match="extra"):
        RunRecord.model_validate({**old, "statuz": "Completed"})


TRAPS_SIGTERM = """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
time.sleep(60)
"""


def test_a_rank_killed_after_the_grace_says_so(tmp_path: Path) -> None:
    source = write_script(tmp_path / "src", TRAPS_SIGTERM)
    run = Estimator(
        source, entry_script="train.py", user_managed=True, max_run_duration_seconds=1,
        termination_grace_seconds=0.5,
    ).fit()  # fmt: skip
    assert run.status is RunStatus.TIMED_OUT
    rank = run.record["ranks"]["0"]
    if rank["recorded"]:  # the wrapper outlived the script: it saw the SIGKILL
        assert rank["signal"] == signal.SIGKILL
    else:
        assert rank == {
            **rank,
            "rank": 0,
            "exit_code": None,
            "note": "no exit status: stopped with the job (SIGKILL after the grace period)",
        }


def test_an_error_holds_only_what_applies_to_its_reason() -> None:
    hung = RunError(reason=ErrorReason.HUNG, message="quiet", last_lines={"0": "step 3"})
    assert hung.model_dump(mode="json") == {
        "reason": "hung",
        "message": "quiet",
        "last_lines": {"0": "step 3"},
    }
    failed = RunError(reason=ErrorReason.RANK_FAILED, message="m", rank=1, signal=None)
    assert failed.model_dump(mode="json") == {
        "reason": "rank_failed",
        "message": "m",
        "rank": 1,
        "signal": None,  # given, so kept: a rank that exited, not one that was signalled
    }
    missing = RankExit.unrecorded(3, "gone")
    assert (missing.rank, missing.recorded, missing.exit_code, missing.note) == (
        3,
        False,
        None,
        "gone",
    )
