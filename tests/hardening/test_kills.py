"""The submitting process killed (SIGKILL) at every phase of a fit and of a pipeline.

A child Python runs ``Estimator.fit()`` (or ``Pipeline.submit``) and is killed at one
phase: where fitdock's test hook (``fitdock.shared.pause_at``, ``FITDOCK_TEST_PAUSE_AT``)
holds it and writes a marker (validation, snapshot, environment build, image build, record
write, launch; a pipeline's scheduling, between steps, a reused step), or where the job's own
marker says it runs, or stops. After each kill: no process of the job (any process whose
working folder lies under ``$FITDOCK_HOME``) outlives the kill by 5 s, ``fitdock runs
list`` and ``fitdock pipeline list`` work and show no live-looking run, a run that had a
record reads Failed (lost supervisor), no cache entry (environment, step reuse) looks
complete when it is not, ``runs gc`` and ``env prune --leftovers`` remove what the kill
left and nothing else, and the next fit (or the pipeline submitted again) completes.

An image build is killed too (docker): the client only waits on dockerd, which tags an
image when its build completes, so a killed client leaves no image that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import pid_alive, wait_until, write_script

from fitdock import Estimator, RunStatus
from fitdock.pipelines import Pipeline, PipelineData, PipelineRun, PythonScriptStep
from fitdock.runs.layout import RECORD

# The job: its pid in $MARKERS/job; with HOLD=1 it says "running" and waits, and on
# SIGTERM says "stopping" and holds out through the grace period.
JOB = """\
import os, signal, sys, time
def mark(name):
    path = os.path.join(os.environ["MARKERS"], name)
    with open(path + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
def stopping(signum, frame):
    mark("stopping")
    while True:
        time.sleep(0.1)
mark("job")
if os.environ.get("HOLD") == "1":
    signal.signal(signal.SIGTERM, stopping)
    mark("running")
    while True:
        time.sleep(0.1)
print("done")
"""
FIT = """\
import sys
from fitdock import Estimator
source, markers, hold, managed = sys.argv[1:5]
Estimator(source, entry_script="train.py", user_managed=managed == "1",
          environment_variables={"MARKERS": markers, "HOLD": hold},
          termination_grace_seconds=60).fit()
"""
MAKE = """\
import os, sys
os.makedirs(sys.argv[1], exist_ok=True)
open(os.path.join(sys.argv[1], "data.txt"), "w").write("made")
"""
USE = """\
import os, sys
print(open(os.path.join(sys.argv[1], "data.txt")).read())
"""
PIPELINE = """\
import os, sys
sys.path[:0] = [sys.argv[2], os.path.dirname(sys.argv[2])]
from test_kills import pipeline
pipeline(sys.argv[1]).submit(wait=True)
"""
STEPS = {"make.py": False, "use.py": False}


def pipeline(work: str) -> Pipeline:
    raw = PipelineData("raw")
    make = PythonScriptStep(
        "make.py", arguments=[raw], outputs=[raw], source_directory=Path(work) / "make"
    )
    use = PythonScriptStep(
        "use.py", arguments=[raw], inputs=[raw], source_directory=Path(work) / "use"
    )
    assert make.name == "make.py"
    return Pipeline(None, [use])


# ---------------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------------
def start_child(code: str, args: list[str], home: Path, pause: str | None) -> subprocess.Popen:
    env = {**os.environ, "FITDOCK_HOME": str(home), "FITDOCK_TEST_PAUSE_DIR": str(home.parent)}
    env.pop("FITDOCK_TEST_PAUSE_AT", None)
    if pause:
        env["FITDOCK_TEST_PAUSE_AT"] = pause
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=home.parent,  # not under the home: the child is not one of the job's processes
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def await_file(path: Path, child: subprocess.Popen, timeout: float = 60) -> None:
    if not wait_until(lambda: path.exists() or child.poll() is not None, timeout, 0.02):
        child.kill()
    if not path.exists():
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"{path.name} never appeared; the child said:\n{err[-3000:]}")


def kill(child: subprocess.Popen) -> float:
    """SIGKILL the submitting process; the moment it was reaped."""
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return time.monotonic()


def processes_under(home: Path) -> list[int]:
    """Live processes whose working folder lies under ``home`` (the job's reaper, rank
    wrappers and script run in the run's snapshot; uv in the environments folder)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd.startswith(f"{home}/") and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def assert_nothing_survives(home: Path, killed_at: float, markers: Path) -> None:
    pids = [int((markers / "job").read_text())] if (markers / "job").exists() else []
    gone = wait_until(lambda: not processes_under(home) and not any(map(pid_alive, pids)), 5.0)
    assert gone, f"still alive {time.monotonic() - killed_at:.1f} s after the kill: " + str(
        processes_under(home) + [p for p in pids if pid_alive(p)]
    )


def cli(home: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "fitdock.cli", *args],
        env={**os.environ, "FITDOCK_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"fitdock {' '.join(args)}: {done.stderr}"
    return done.stdout


def listed(home: Path) -> dict[str, str]:
    """``fitdock runs list --json``: run id -> status."""
    return {item["id"]: item["status"] for item in json.loads(cli(home, "runs", "list", "--json"))}


def run_folders(home: Path) -> list[Path]:
    root = home / "runs"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def every_record_parses(home: Path) -> None:
    for folder in run_folders(home):
        if (folder / RECORD).exists():
            json.loads((folder / RECORD).read_text())


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "markers").mkdir()
    return write_script(tmp_path / "src", JOB)


def next_fit(source: Path, markers: Path, managed: bool = True) -> str:
    for name in ("job", "running", "stopping"):
        (markers / name).unlink(missing_ok=True)
    run = Estimator(
        source,
        entry_script="train.py",
        user_managed=managed,
        environment_variables={"MARKERS": str(markers), "HOLD": "0"},
        termination_grace_seconds=60,
    ).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    return run.id


# ---------------------------------------------------------------------------------------------
# A fit
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["validation", "snapshot", "record"])
def test_killed_before_the_first_record(
    phase: str, source: Path, fitdock_home: Path, tmp_path: Path
) -> None:
    """Nothing with a record exists yet: the run is invisible, ``runs gc`` removes its
    folder (and only that), and the next fit completes."""
    markers = tmp_path / "markers"
    child = start_child(FIT, [str(source), str(markers), "0", "1"], fitdock_home, phase)
    await_file(tmp_path / phase, child)
    assert_nothing_survives(fitdock_home, kill(child), markers)
    assert listed(fitdock_home) == {}
    leftovers = run_folders(fitdock_home)
    assert len(leftovers) == (0 if phase == "validation" else 1)
    assert all(not (p / RECORD).exists() for p in leftovers)
    finished = next_fit(source, markers)
    done = fitdock_home / "runs" / finished
    kept = sorted(p for p in done.rglob("*"))
    torn = done / f".{RECORD}.x1y2z3.tmp"  # what a record writer killed mid-write leaves
    torn.write_text('{"id": ')
    gc = cli(fitdock_home, "runs", "gc")
    assert [p.name for p in run_folders(fitdock_home)] == [finished]
    assert f"removed {torn}\n" in gc and gc.endswith(f"\n{len(leftovers) + 1} removed\n")
    assert sorted(p for p in done.rglob("*")) == kept  # the finished run: all it wrote
    assert (fitdock_home / "runs" / finished / "logs" / "rank_0.stdout.log").read_text() == "done\n"


@pytest.mark.parametrize("phase", ["launch", "running", "stopping"])
def test_killed_while_its_job_lives(
    phase: str, source: Path, fitdock_home: Path, tmp_path: Path
) -> None:
    """The job stops with its supervisor (the reaper sees it die), within 5 s even when
    it holds out against SIGTERM; the run reads Failed, lost supervisor."""
    markers = tmp_path / "markers"
    pause = "launch" if phase == "launch" else None
    child = start_child(FIT, [str(source), str(markers), "1", "1"], fitdock_home, pause)
    if phase == "launch":  # held before the record names the reaper: the job starts anyway
        await_file(tmp_path / "launch", child)
        await_file(markers / "job", child)
    else:
        await_file(markers / "running", child)
    (run_id,) = (p.name for p in run_folders(fitdock_home))
    if phase == "running":  # gc leaves a live run alone
        assert cli(fitdock_home, "runs", "gc").endswith("0 removed\n")
        assert (fitdock_home / "runs" / run_id / "supervisor.lock").exists()
    if phase == "stopping":
        cli(fitdock_home, "runs", "cancel", run_id)
        await_file(markers / "stopping", child)  # SIGTERM reached it; 60 s of grace left
    assert_nothing_survives(fitdock_home, kill(child), markers)
    assert listed(fitdock_home) == {run_id: "Failed"}
    record = json.loads((fitdock_home / "runs" / run_id / RECORD).read_text())
    assert record["error"]["reason"] == "lost_supervisor"
    finished = next_fit(source, markers)
    lock = fitdock_home / "runs" / run_id / "supervisor.lock"
    assert f"removed {lock}\n1 removed" in cli(fitdock_home, "runs", "gc")
    assert [p.name for p in run_folders(fitdock_home)] == sorted([run_id, finished])
    every_record_parses(fitdock_home)


def test_killed_while_building_its_environment(
    source: Path, fitdock_home: Path, tmp_path: Path
) -> None:
    """A half-built virtualenv never looks complete; ``env prune --leftovers`` removes it
    and its lock file and keeps a complete one; the next fit builds the environment."""
    markers = tmp_path / "markers"
    child = start_child(FIT, [str(source), str(markers), "0", "0"], fitdock_home, "environment")
    await_file(tmp_path / "environment", child)
    assert_nothing_survives(fitdock_home, kill(child), markers)
    envs = fitdock_home / "envs"
    half = sorted(p.name for p in envs.iterdir())
    assert len(half) == 2 and half[0].endswith(".lock") and ".tmp-" in half[1], half
    assert len(cli(fitdock_home, "env", "list", "--cached").splitlines()) == 1  # the header
    ((run_id, status),) = listed(fitdock_home).items()
    assert status == "Failed"
    pruned = cli(fitdock_home, "env", "prune", "--leftovers")
    assert "1 removed" in pruned and ".tmp-" in pruned
    assert list(envs.iterdir()) == []
    finished = next_fit(source, markers, managed=False)
    complete = sorted(p for p in envs.iterdir() if not p.name.startswith("."))
    assert len(complete) == 1
    assert "0 removed" in cli(fitdock_home, "env", "prune", "--leftovers")
    assert (complete[0] / "bin" / "python").exists()
    assert complete[0].name in cli(fitdock_home, "env", "list", "--cached")
    cli(fitdock_home, "runs", "gc")
    assert listed(fitdock_home) == {run_id: "Failed", finished: "Completed"}


FIT_IN_DOCKER = """\
import sys
from fitdock import Estimator
source, base, tag = sys.argv[1:4]
Estimator(source, entry_script="train.py", use_docker=True, custom_docker_image=base,
          pip_packages=["numpy<2"], termination_grace_seconds=5,
          environment_variables={"MARKERS": "/tmp", "HOLD": "0", "FITDOCK_KILL_TEST": tag}).fit()
"""
DOCKER_PACKAGES = ["numpy<2", "mpi4py", "mpich"]  # test_docker_runs.py's image, shared


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_while_building_its_image(source: Path, fitdock_home: Path, tmp_path: Path) -> None:
    """An image build on top of the shared test image (pip has nothing to install: seconds),
    the submitter killed mid-build: the engine tags an image only when its build ends, so no
    image looks complete that is not; the run reads Failed and the next fit builds or reuses
    a complete image and runs in it."""
    import uuid

    import docker

    from fitdock.environments.image import KEY_LABEL, ensure_image

    base_src = write_script(tmp_path / "base-src", "print('unused')\n")
    base_env = Estimator(
        base_src, entry_script="train.py", pip_packages=DOCKER_PACKAGES, use_docker=True
    ).environment
    base = ensure_image(base_env, base_image="local/debian:bookworm", progress=False)
    markers, unique = tmp_path / "markers", uuid.uuid4().hex
    args = [str(source), base.tag, unique]  # the job marks in the container's /tmp
    child = start_child(FIT_IN_DOCKER, args, fitdock_home, "image")
    await_file(tmp_path / "image", child, timeout=300)
    assert_nothing_survives(fitdock_home, kill(child), markers)
    ((run_id, status),) = listed(fitdock_home).items()
    assert status == "Failed"
    record = json.loads((fitdock_home / "runs" / run_id / RECORD).read_text())
    assert record["error"]["reason"] == "lost_supervisor"
    env = Estimator(
        source, entry_script="train.py", use_docker=True, custom_docker_image=base.tag,
        pip_packages=["numpy<2"],
        environment_variables={"MARKERS": "/tmp", "HOLD": "0", "FITDOCK_KILL_TEST": unique},
    )  # fmt: skip
    client = docker.from_env()
    tag = f"fitdock-env:{env.environment.hash()[:16]}"
    try:
        try:  # the build may have ended in the engine meanwhile: then it is whole
            labels = client.api.inspect_image(tag)["Config"]["Labels"] or {}
            assert KEY_LABEL in labels, f"{tag} exists without its build key"
        except docker.errors.ImageNotFound:
            pass
        run = env.fit()
        assert run.status is RunStatus.COMPLETED, run.error
        assert (run.log_dir / "rank_0.stdout.log").read_text() == "done\n"
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(tag, force=True)
        client.close()


# ---------------------------------------------------------------------------------------------
# A pipeline
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def work(tmp_path: Path) -> Path:
    write_script(tmp_path / "work" / "make", MAKE, name="make.py")
    write_script(tmp_path / "work" / "use", USE, name="use.py")
    return tmp_path / "work"


def pipeline_statuses(home: Path) -> dict[str, str]:
    lines = cli(home, "pipeline", "list").splitlines()[1:]
    return {line.split()[0]: line.split()[2] for line in lines}


def cache_entries(home: Path) -> dict[str, str]:
    """Step name -> run id of each entry of the step reuse cache."""
    root = home / "pipelines" / "cache"
    entries = [json.loads(p.read_text()) for p in root.glob("*.json")] if root.is_dir() else []
    return {entry["step"]: entry["run_id"] for entry in entries}


@pytest.mark.parametrize(
    "phase", ["pipeline_scheduling", "pipeline_between_steps", "pipeline_reuse"]
)
def test_a_pipeline_killed(phase: str, work: Path, fitdock_home: Path, tmp_path: Path) -> None:
    """The pipeline reads Failed (lost scheduler), the reuse cache holds only steps that
    completed, and the pipeline submitted again completes, reusing exactly those."""
    earlier = None
    if phase == "pipeline_reuse":  # every step completed once: the next submission reuses
        earlier = pipeline(str(work)).submit(wait=True)
        assert earlier.status is RunStatus.COMPLETED, earlier.error
    child = start_child(PIPELINE, [str(work), str(Path(__file__).parent)], fitdock_home, phase)
    await_file(tmp_path / phase, child)
    assert_nothing_survives(fitdock_home, kill(child), tmp_path / "markers")
    statuses = pipeline_statuses(fitdock_home)
    killed = next(i for i in statuses if earlier is None or i != earlier.id)
    assert statuses[killed] == "Failed"
    assert PipelineRun(killed).record.error["reason"] == "lost_scheduler"  # type: ignore[index]
    assert all(status != "Running" for status in listed(fitdock_home).values())
    cached = cache_entries(fitdock_home)
    if phase == "pipeline_scheduling":
        assert cached == {}
    else:
        assert "make.py" in cached
        record = json.loads((fitdock_home / "runs" / cached["make.py"] / RECORD).read_text())
        assert record["status"] == "Completed"
    again = pipeline(str(work)).submit(wait=True)
    assert again.status is RunStatus.COMPLETED, again.error
    reused = {name: state.reused for name, state in again.record.steps.items()}
    expected = {
        "pipeline_scheduling": STEPS,
        "pipeline_between_steps": {"make.py": True, "use.py": False},
        "pipeline_reuse": {"make.py": True, "use.py": True},
    }[phase]
    assert reused == expected
