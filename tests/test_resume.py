"""A deterministic job cut by its deadline, resumed from its checkpoint, ends where an
uninterrupted run ends; the resumed run reads a copy and cannot spoil the original."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import run_dirs, write_script

from fitdock import Estimator, Run, RunStatus

STEPS = 24
# The cut run writes its checkpoint of step STALL_AT, then waits (in a job that reaches it
# from its first line in a few hundredths of a second): whenever the interpreter got going
# on a loaded machine, the deadline finds it there, mid-way, at a known step.
STALL_AT = 10
CUT_AFTER = 4.0  # seconds from launch: room for a slow interpreter start

TRAIN = """
import json, os, time
from fitdock import Run

ctx = Run.get_context()
steps = int(os.environ["STEPS"])
state, step = 1, 0
if ctx.resume_dir is not None and (ctx.resume_dir / "state.json").exists():
    saved = json.loads((ctx.resume_dir / "state.json").read_text())
    state, step = saved["state"], saved["step"]
    tamper = {"resume_dir": str(ctx.resume_dir),
              "modes": {p.name: os.stat(p).st_mode & 0o777
                        for p in (ctx.resume_dir, ctx.resume_dir / "state.json")}}
    for what, path in (("overwrite", ctx.resume_dir / "state.json"),
                       ("create", ctx.resume_dir / "new-file")):
        try:
            path.write_text('{"state": -1, "step": 0}')
            tamper[what] = "succeeded"
        except OSError as exc:
            tamper[what] = type(exc).__name__
    (ctx.output_dir / "tamper.json").write_text(json.dumps(tamper))
ctx.log("start_step", step)
while step < steps:
    state = (state * 1103515245 + 12345) % 2**31
    step += 1
    tmp = ctx.checkpoint_dir / "state.json.tmp"
    tmp.write_text(json.dumps({"state": state, "step": step}))
    os.replace(tmp, ctx.checkpoint_dir / "state.json")
    if step == int(os.environ.get("STALL_AT", "0")):
        (ctx.output_dir / "stalled").write_text(str(time.time()))
        time.sleep(60)  # the deadline ends it here
    time.sleep(0.05)
(ctx.output_dir / "final.json").write_text(json.dumps({"state": state, "step": step}))
"""


def expected_final() -> dict[str, int]:
    state = 1
    for _ in range(STEPS):
        state = (state * 1103515245 + 12345) % 2**31
    return {"state": state, "step": STEPS}


class Cut(NamedTuple):
    home: Path
    src: Path
    full: Run
    cut: Run
    checkpoint: bytes


def estimator(src: Path, env: dict[str, object] | None = None, **kwargs: object) -> Estimator:
    return Estimator(
        src,
        entry_script="train.py",
        user_managed=True,
        environment_variables={"STEPS": STEPS, **(env or {})},
        termination_grace_seconds=1,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory: pytest.TempPathFactory) -> Cut:
    """An uninterrupted run and a run cut by its deadline, shared by the resume tests."""
    base = tmp_path_factory.mktemp("resume")
    mp = pytest.MonkeyPatch()
    mp.setenv("FITDOCK_HOME", str(base / "home"))
    try:
        src = write_script(base / "src", TRAIN)
        full = estimator(src).fit()
        cut = estimator(src, {"STALL_AT": STALL_AT}, max_run_duration_seconds=CUT_AFTER).fit()
        saved = cut.checkpoint_dir / "state.json"
        checkpoint = saved.read_bytes() if saved.exists() else b'{"step": 0}'  # asserted below
    finally:
        mp.undo()
    return Cut(base / "home", src, full, cut, checkpoint)


@pytest.fixture
def in_cut_home(cut_run: Cut, monkeypatch: pytest.MonkeyPatch) -> Cut:
    monkeypatch.setenv("FITDOCK_HOME", str(cut_run.home))
    return cut_run


def test_uninterrupted_run_reaches_the_expected_state(in_cut_home: Cut) -> None:
    full = in_cut_home.full
    assert full.status is RunStatus.COMPLETED, full.error
    assert json.loads((full.output_dir / "final.json").read_text()) == expected_final()
    assert full.get_metrics("start_step", as_lists=True) == {"start_step": [0]}


def test_deadline_cuts_the_run_mid_way(in_cut_home: Cut) -> None:
    cut = in_cut_home.cut
    assert cut.status is RunStatus.TIMED_OUT
    assert not (cut.output_dir / "final.json").exists()
    saved = json.loads(in_cut_home.checkpoint)
    assert saved["step"] == STALL_AT, saved  # 0 < STALL_AT < STEPS: mid-way
    assert (cut.output_dir / "stalled").exists()


RESUME_FROM = {
    "run": lambda cut: cut,
    "id": lambda cut: cut.id,
    "run_dir": lambda cut: cut.run_dir,
    "checkpoint_dir": lambda cut: str(cut.checkpoint_dir),
}


@pytest.mark.parametrize("kind", list(RESUME_FROM))
def test_resume_completes_with_the_uninterrupted_state(in_cut_home: Cut, kind: str) -> None:
    cut = in_cut_home.cut
    resumed = estimator(in_cut_home.src, resume_from=RESUME_FROM[kind](cut)).fit()
    assert resumed.status is RunStatus.COMPLETED, resumed.error
    assert resumed.id != cut.id
    saved = json.loads(in_cut_home.checkpoint)
    assert resumed.get_metrics("start_step", as_lists=True) == {"start_step": [saved["step"]]}
    assert json.loads((resumed.output_dir / "final.json").read_text()) == expected_final()
    assert json.loads((resumed.checkpoint_dir / "state.json").read_text()) == expected_final()
    record = resumed.record["resume"]
    assert record["source_dir"] == str(cut.checkpoint_dir)
    assert record["dir"] == str(resumed.run_dir / "resume")


@pytest.mark.parametrize("kind", ["id", "checkpoint_dir"])
def test_resume_dir_is_a_copy_that_cannot_spoil_the_original(in_cut_home: Cut, kind: str) -> None:
    cut = in_cut_home.cut
    resumed = estimator(in_cut_home.src, resume_from=RESUME_FROM[kind](cut)).fit()
    assert resumed.status is RunStatus.COMPLETED, resumed.error
    tamper = json.loads((resumed.output_dir / "tamper.json").read_text())
    assert Path(tamper["resume_dir"]) == resumed.run_dir / "resume"
    assert Path(tamper["resume_dir"]) != cut.checkpoint_dir
    # the copy is read-only by its mode bits, as the job saw them before trying to write
    # (root writes through them, and CI runs as root; the original is safe either way)
    assert tamper["modes"] == {"resume": 0o555, "state.json": 0o444}
    expected = "succeeded" if os.geteuid() == 0 else "PermissionError"
    assert (tamper["overwrite"], tamper["create"]) == (expected, expected)
    # whatever the script did to its copy, the original checkpoint is as the cut run left it
    assert (cut.checkpoint_dir / "state.json").read_bytes() == in_cut_home.checkpoint
    assert sorted(p.name for p in cut.checkpoint_dir.iterdir()) == ["state.json"]


def test_plan_with_resume_from_names_the_resume_dir_and_creates_nothing(in_cut_home: Cut) -> None:
    before = run_dirs(in_cut_home.home)
    plan = estimator(in_cut_home.src, resume_from=in_cut_home.cut.id).plan()
    resume = Path(plan.env["FITDOCK_RESUME_DIR"])
    assert resume.name == "resume"
    assert resume.parent.parent == in_cut_home.home / "runs"
    assert not resume.parent.exists()
    assert run_dirs(in_cut_home.home) == before


def test_resume_from_an_unknown_run_is_refused(in_cut_home: Cut) -> None:
    before = run_dirs(in_cut_home.home)
    est = estimator(in_cut_home.src, resume_from="train_19990101-000000_abcdef")
    with pytest.raises(ValueError, match="neither a folder nor a run id") as info:
        est.fit()
    assert getattr(info.value, "field", None) == "resume_from"
    assert run_dirs(in_cut_home.home) == before


def test_resumed_run_reopens_by_id(in_cut_home: Cut) -> None:
    resumed = estimator(in_cut_home.src, resume_from=in_cut_home.cut).fit()
    again = Run(resumed.id)
    assert again.record["resume"]["from"] == in_cut_home.cut.id
    assert again.status is RunStatus.COMPLETED
