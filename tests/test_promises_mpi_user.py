"""Open MPI run by an unprivileged user, for real: no allow-run-as-root variables, and two
ranks still form one world of two.

As root (CI) the test makes the user ``fitdock-test`` (``useradd``) if it is missing, gives
it a folder of its own holding the job and ``FITDOCK_HOME``, and runs ``fit()`` in a child
process under that uid. The venv's interpreter lives under ``/root`` (pyenv), which the user
cannot reach, so the child runs Debian's ``/usr/bin/python3`` (the same 3.11 ABI) with the
venv's site-packages and this checkout on ``PYTHONPATH``; the ranks inherit it."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fitdock.distributions.mpi import Flavor, identify
from fitdock.errors import FitdockError

pytestmark = pytest.mark.mpi

USER = "fitdock-test"
SYSTEM_PYTHON = "/usr/bin/python3"
OPEN_MPI = ("/usr/bin/mpirun.openmpi", "/usr/bin/mpirun")
REPO = Path(__file__).resolve().parents[1]

JOB = """\
import json, os
from mpi4py import MPI
from fitdock import Run
ctx = Run.get_context()
world = MPI.COMM_WORLD
record = {
    "rank": world.rank, "size": world.size, "sum": world.allreduce(world.rank + 1),
    "uid": os.geteuid(), "vendor": MPI.get_vendor()[0],
    "allow": sorted(name for name in os.environ if "ALLOW_RUN_AS_ROOT" in name),
}
(ctx.output_dir / f"rank{world.rank}.json").write_text(json.dumps(record))
"""

FIT = """\
import json, sys
from fitdock import Estimator, Mpi
run = Estimator(sys.argv[1], entry_script="job.py", user_managed=True, process_count_per_node=2,
                distributed_training=Mpi(mpirun=sys.argv[2]), max_run_duration_seconds=120).fit()
print(json.dumps({"status": run.status.value, "error": run.error, "outputs": str(run.output_dir),
                  "env": run.record["env"], "argv": run.record["argv"]}))
"""


def _not_here(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason}; CI=true, so this fails instead of skipping")
    pytest.skip(reason)


def _open_mpi() -> str:
    for path in OPEN_MPI:
        if not os.access(path, os.X_OK):
            continue
        try:
            if identify(path).flavor is Flavor.OPEN_MPI:
                return path
        except FitdockError:
            continue
    _not_here(f"no Open MPI launcher at {' or '.join(OPEN_MPI)} (apt-get install openmpi-bin)")
    raise AssertionError  # unreachable: _not_here raises


@pytest.fixture(scope="session")
def unprivileged() -> pwd.struct_passwd:
    """The user ``fitdock-test``, made here when missing (needs root)."""
    if os.geteuid() != 0:
        _not_here("making and becoming another user needs root")
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pass
    done = subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", USER],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 or "already exists" in done.stderr, done.stderr
    return pwd.getpwnam(USER)


@pytest.fixture
def users_folder(unprivileged: pwd.struct_passwd) -> Iterator[Path]:
    """A folder the user owns, in its home (pytest's tmp_path is root's alone)."""
    home = Path(unprivileged.pw_dir)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, unprivileged.pw_uid, unprivileged.pw_gid)
    folder = Path(tempfile.mkdtemp(prefix="mpi-user-", dir=home))
    os.chown(folder, unprivileged.pw_uid, unprivileged.pw_gid)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _as(user: pwd.struct_passwd, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    site = sysconfig.get_paths()["purelib"]  # the venv's site-packages (and its .pth files)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LANG": "C.UTF-8",
        "FITDOCK_HOME": str(cwd / "fitdock-home"),
        "PYTHONPATH": os.pathsep.join([str(REPO), site]),
    }
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_open_mpi_as_an_unprivileged_user_forms_one_world_without_root_switches(
    unprivileged: pwd.struct_passwd, users_folder: Path
) -> None:
    launcher = _open_mpi()
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        _not_here(f"{SYSTEM_PYTHON} is missing")
    if sys.version_info[:2] != (3, 11):
        pytest.fail(f"the venv is Python {sys.version_info[:2]}; {SYSTEM_PYTHON} is 3.11")
    source = users_folder / "src"
    source.mkdir()
    (source / "job.py").write_text(JOB)
    (users_folder / "fit.py").write_text(FIT)
    for path in (source, source / "job.py", users_folder / "fit.py"):
        os.chown(path, unprivileged.pw_uid, unprivileged.pw_gid)

    fit = [SYSTEM_PYTHON, str(users_folder / "fit.py"), str(source), launcher]
    done = _as(unprivileged, fit, users_folder)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "Completed", result["error"]

    assert result["env"]["FITDOCK_MPI"].startswith("Open MPI"), result["env"]["FITDOCK_MPI"]
    assert not [name for name in result["env"] if "ALLOW_RUN_AS_ROOT" in name]
    assert not [word for word in result["argv"] if "allow-run-as-root" in word]
    outputs = Path(result["outputs"])
    ranks = [json.loads((outputs / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, seen in enumerate(ranks):
        assert seen == {
            "rank": rank,
            "size": 2,  # one world of two, not two worlds of one
            "sum": 3,
            "uid": unprivileged.pw_uid,
            "vendor": "Open MPI",
            "allow": [],
        }
