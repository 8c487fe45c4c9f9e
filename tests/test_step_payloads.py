"""Signed ``@step`` payloads, end to end: a flipped byte, a removed signature, a truncated
file or a foreign key is refused and nothing runs; results are verified before they are
unpickled; the key appears in no file, record or recorded variable."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import fitdock.jobside.payload as payload
from fitdock import RunStatus
from fitdock.errors import PayloadError
from fitdock.pipelines import ConditionStep, Pipeline, PythonScriptStep, get_step, step
from fitdock.pipelines.build import signing_key
from fitdock.pipelines.conditions import ConditionEquals

pytestmark = pytest.mark.usefixtures("workspace")  # run from a small folder


def slow(folder: Path) -> PythonScriptStep:
    """A script step of a second: it needs no key, so changing the key meanwhile touches
    only the step after it."""
    folder.mkdir(exist_ok=True)
    (folder / "sleep.py").write_text("import time\ntime.sleep(1.0)\n")
    return PythonScriptStep("sleep.py", source_directory=folder)


@step
def mark(path: str) -> str:
    Path(path).write_text("ran")
    return "ran"


@step
def value() -> dict[str, int]:
    return {"x": 1}


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - 10] ^= 0x01
    path.write_bytes(bytes(data))


def drop_signature(path: Path) -> None:
    lines = path.read_bytes().split(b"\n", 3)
    path.write_bytes(b"\n".join([lines[0], lines[1], lines[3]]))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5])


def foreign_key(path: Path) -> None:
    key = Path(os.environ["FITDOCK_HOME"]) / "secret.key"
    key.unlink()
    payload.load_key(key, create=True)  # a new key: the stored payloads no longer verify


TAMPERS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "function flipped": ("function", flip, "signature does not match"),
    "arguments flipped": ("arguments", flip, "signature does not match"),
    "signature removed": ("function", drop_signature, "signature line (line 3) is missing"),
    "function truncated": ("function", truncate, "truncated"),
    "foreign key": ("function", foreign_key, "signature does not match"),
}


@pytest.mark.parametrize("case", list(TAMPERS))
def test_a_tampered_payload_is_refused_and_nothing_runs(case: str, workspace: Path) -> None:
    name, tamper, said = TAMPERS[case]
    marker = workspace / "ran.txt"
    late = mark(str(marker))
    get_step(late).add_depends_on([slow(workspace.parent / "scripts")])
    run = Pipeline("tamper", steps=[late]).start()
    builds = Path(os.environ["FITDOCK_HOME"]) / "pipelines" / "tamper" / "mark"
    (folder,) = builds.iterdir()
    tamper(folder / name)  # while `slow` runs
    run.wait_for_completion(show_output=False, raise_on_error=False)
    assert run.status is RunStatus.FAILED
    (step_run,) = run.find_step_run("mark")
    stderr = (step_run.log_dir / "rank_0.stderr.log").read_text()
    assert "fitdock step: refused:" in stderr and said in stderr
    assert not marker.exists()


def test_results_are_verified_before_they_are_unpickled() -> None:
    run = Pipeline("results", steps=[value()]).start()
    run.wait()
    folder = Path(run.record.steps["value"].outputs["results"])
    assert run.result("value") == {"x": 1}
    good = (folder / "results").read_bytes()
    flip(folder / "results")
    with pytest.raises(PayloadError, match="signature does not match"):
        run.result("value")
    (folder / "results").write_bytes(good)
    (folder / "results.json").write_text('{"x": 2}')
    check = ConditionStep("check", conditions=[ConditionEquals(left=value()["x"], right=2)])
    again = Pipeline("results", steps=[check]).start()
    again.wait_for_completion(show_output=False, raise_on_error=False)
    assert again.status is RunStatus.COMPLETED  # a new run of `value`: its own results
    from fitdock.pipelines.results import json_value

    with pytest.raises(PayloadError, match="does not match the digest signed"):
        json_value(folder, "value")


def test_a_key_with_loose_permissions_is_refused_and_nothing_is_made(
    fitdock_home: Path,
) -> None:
    signing_key()
    (fitdock_home / "secret.key").chmod(0o644)
    with pytest.raises(PayloadError, match="chmod 600"):
        Pipeline("loose", steps=[value()]).start()
    assert not (fitdock_home / "pipelines" / "loose").exists()
    (fitdock_home / "secret.key").chmod(0o600)
    fitdock_home.chmod(0o755)
    with pytest.raises(PayloadError, match="chmod 700"):
        Pipeline("loose", steps=[value()]).start()


@step
def fails() -> None:
    raise ValueError("no good")


def test_the_key_appears_in_no_file_record_or_variable(fitdock_home: Path) -> None:
    run = Pipeline("secret", steps=[mark(str(Path.cwd() / "x.txt")), fails()]).start()
    run.wait_for_completion(show_output=False, raise_on_error=False)
    key = signing_key()
    assert (fitdock_home / "secret.key").stat().st_mode & 0o777 == 0o600
    assert fitdock_home.stat().st_mode & 0o777 == 0o700
    needles = [key, key.hex().encode(), key.hex().upper().encode()]
    searched = 0
    for folder, _, files in os.walk(fitdock_home):  # links are not followed
        for name in files:
            path = Path(folder) / name
            if path == fitdock_home / "secret.key" or path.is_symlink():
                continue
            data = path.read_bytes()
            searched += 1
            assert not any(needle in data for needle in needles), path
    assert searched > 20
    for step_run in run.get_steps():
        variables = step_run.record["spec"]["variables"]
        assert variables["FITDOCK_STEP_KEY"] == str(fitdock_home / "secret.key")
        assert not any(key.hex() in str(v) for v in variables.values())
