"""``@step`` functions on other targets: a function in Docker feeding a local one (the
signing key bound read-only in the container), a function on the private Slurm cluster
whose result picks a ConditionStep's branch, ``image_uri=`` naming an image as it is, and
``dependencies=`` building a venv of the step's own. Each step is a real run."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from fitdock import RunStatus, Slurm
from fitdock.environments.spec import Environment, PythonSection
from fitdock.jobside import payload
from fitdock.pipelines import ConditionStep, FailStep, Pipeline, step
from fitdock.pipelines.build import signing_key
from fitdock.pipelines.conditions import ConditionEquals

pytestmark = pytest.mark.usefixtures("workspace")  # run from a small folder

VENV = "/opt/fitdock/venv"  # where fitdock's images keep their Python
BASE = "local/debian:bookworm"  # no registry is reachable: the curated base is replaced
# the image of tests/test_docker_runs.py: one image serves both
IMAGE_ENV = Environment(python=PythonSection(pip_packages=["numpy<2", "mpi4py", "mpich"]))
OURS = f"{sys.version_info[0]}.{sys.version_info[1]}"


def finished(pipeline: Pipeline) -> Any:
    run = pipeline.start()
    run.wait_for_completion(show_output=False, raise_on_error=False)
    return run


def _key_write_error() -> str | None:
    """The errno name of opening the signing key for writing (None: it opened). Nothing is
    written either way."""
    import errno

    try:
        with open(os.environ["FITDOCK_STEP_KEY"], "r+b"):
            return None
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


@step(environment=IMAGE_ENV, compute_target="docker")
def in_docker(x: int) -> dict[str, Any]:
    import numpy

    return {
        "prefix": sys.prefix,
        "host": socket.gethostname(),
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "numpy": numpy.__version__.split(".")[0],
        "key_write": _key_write_error(),
        "x": x,
    }


@step
def plus_one(seen: dict[str, Any]) -> dict[str, Any]:
    return {"x": seen["x"] + 1, "prefix": sys.prefix, "host": socket.gethostname()}


def slurm_job() -> dict[str, Any]:
    return {
        "in_job": os.environ.get("SLURM_JOB_ID") is not None,
        "job": os.environ.get("SLURM_JOB_ID"),
    }


@step
def job_number(job: str) -> int:
    return int(job)


@step
def here() -> dict[str, Any]:
    return {"executable": sys.executable, "prefix": sys.prefix, "python": sys.version[:4]}


@pytest.mark.docker
@pytest.mark.timeout(900)  # the image is built when cold
def test_a_docker_function_feeds_a_local_one_and_cannot_write_the_key(
    monkeypatch: pytest.MonkeyPatch, fitdock_home: Path
) -> None:
    monkeypatch.setenv("FITDOCK_BASE_IMAGE", BASE)
    key = signing_key()  # made now, to compare after
    run = finished(Pipeline("dk", steps=[plus_one(in_docker(41))]))
    assert run.status is RunStatus.COMPLETED, (run.error, run.explain())
    inside = run.result("in_docker")
    assert inside["key_write"] == "EROFS", inside  # bound read-only, even for root
    # /.dockerenv tells nothing where the tests themselves run in a container: the
    # image's venv and the container's own hostname do
    assert inside == {
        "prefix": VENV, "host": inside["host"], "python": OURS, "numpy": "1",
        "key_write": "EROFS", "x": 41,
    }  # fmt: skip
    assert inside["host"] != socket.gethostname()
    assert run.result("plus_one") == {
        "x": 42, "prefix": sys.prefix, "host": socket.gethostname(),
    }  # fmt: skip
    (docker_run,) = run.find_step_run("in_docker")
    (local_run,) = run.find_step_run("plus_one")
    assert docker_run.record["target"] == "docker" and local_run.record["target"] == "local"
    key_file = payload.key_path(fitdock_home)
    assert signing_key() == key and key_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_a_slurm_function_picks_the_branch_of_a_condition(slurm: Any) -> None:
    on_slurm = step(compute_target=Slurm(partition=slurm.partition), name="on_slurm")
    found = on_slurm(slurm_job)()
    taken, refused = job_number(found["job"]), FailStep("not_in_slurm", error_message="no job")
    check = ConditionStep(
        "in_job", conditions=[ConditionEquals(left=found["in_job"], right=True)],
        if_steps=[taken], else_steps=[refused],
    )  # fmt: skip
    run = finished(Pipeline("sl", steps=[check]))
    assert run.status is RunStatus.COMPLETED, (run.error, run.explain())
    states = run.record.steps
    assert states["in_job"].outcome is True
    assert states["not_in_slurm"].status is RunStatus.SKIPPED
    result = run.result("on_slurm")
    assert result["in_job"] is True and result["job"].isdigit()
    assert run.result("job_number") == int(result["job"])
    (slurm_run,) = run.find_step_run("on_slurm")
    (local_run,) = run.find_step_run("job_number")
    assert slurm_run.record["target"] == "slurm" and local_run.record["target"] == "local"


@pytest.mark.docker
@pytest.mark.timeout(900)  # the image is built when cold
def test_image_uri_runs_the_function_in_that_image_as_it_is() -> None:
    from fitdock.environments.image import ensure_image, image_tag

    built = ensure_image(IMAGE_ENV, base_image=BASE, progress=False)
    assert built.tag == image_tag(IMAGE_ENV)

    @step(image_uri=built.tag, name="in_image")
    def in_image() -> dict[str, Any]:
        return {
            "executable": sys.executable,
            "docker": os.path.exists("/.dockerenv"),
            "host": socket.gethostname(),
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        }

    run = finished(Pipeline("img", steps=[in_image()]))
    assert run.status is RunStatus.COMPLETED, (run.error, run.explain())
    # `python` on the image's PATH is the venv fitdock built in it (its PATH starts there)
    seen = run.result("in_image")
    assert seen == {
        "executable": f"{VENV}/bin/python", "docker": True, "host": seen["host"], "python": OURS,
    }  # fmt: skip
    assert seen["host"] != socket.gethostname()
    (image_run,) = run.find_step_run("in_image")
    assert image_run.record["target"] == "docker"


@pytest.mark.timeout(600)
def test_dependencies_run_the_function_in_a_venv_of_its_own(
    workspace: Path, fitdock_home: Path
) -> None:
    requirements = workspace.parent / "requirements.txt"
    requirements.write_text("# nothing beyond what every step has\n")
    own = step(dependencies=str(requirements), name="own_venv")(here.__wrapped__)
    run = finished(Pipeline("deps", steps=[own(), here()]))
    assert run.status is RunStatus.COMPLETED, (run.error, run.explain())
    inside, plain = run.result("own_venv"), run.result("here")
    assert Path(inside["prefix"]).parent == fitdock_home / "envs", inside  # uv's cached venv
    assert Path(inside["executable"]).is_relative_to(inside["prefix"])
    assert inside["python"] == sys.version[:4]
    assert Path(plain["prefix"]).resolve() == Path(sys.prefix).resolve(), plain
