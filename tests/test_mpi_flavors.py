"""Both MPI families fitdock detects: MPICH (the `mpi` extra, from PyPI) and Open MPI
(Debian's openmpi-bin), each run for real with two ranks and a failing rank."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from fitdock import Estimator, Mpi, RunStatus
from fitdock.distributions.mpi import Flavor, find_launcher, mpi_argv

SYSTEM_OPEN_MPI = "/usr/bin/mpirun"
MPICH_BESIDE_PYTHON = str(Path(sys.executable).parent / "mpiexec")

SCRIPT = """\
import os, sys, time
from fitdock import Run
ctx = Run.get_context()
print("rank", ctx.rank, "of", ctx.world_size, "local", os.environ["LOCAL_RANK"])
if len(sys.argv) > 1 and ctx.rank == 1:
    print("rank 1 gives up", file=sys.stderr)
    sys.exit(5)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""


def launcher_or_skip(path: str, flavor: Flavor) -> Mpi:
    """``Mpi(mpirun=path)`` when ``path`` is the ``flavor`` launcher; else a skip, which the CI
    guard of conftest.py turns into a failure (scripts/install-system.sh installs both)."""
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} is not installed (scripts/install-system.sh installs it)")
    config = Mpi(mpirun=path)
    launcher = find_launcher(config)
    if launcher.flavor is not flavor:
        pytest.skip(f"{path} is {launcher.flavor.value}, not {flavor.value}")
    return config


@pytest.fixture(
    params=[(MPICH_BESIDE_PYTHON, Flavor.MPICH), (SYSTEM_OPEN_MPI, Flavor.OPEN_MPI)],
    ids=["mpich", "openmpi"],
)
def mpi(request: pytest.FixtureRequest) -> Mpi:
    path, flavor = request.param
    return launcher_or_skip(path, flavor)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ranks.py").write_text(SCRIPT)
    return tmp_path / "src"


@pytest.mark.mpi
def test_two_ranks_complete_with_rank_variables(mpi: Mpi, source: Path) -> None:
    run = Estimator(
        source,
        entry_script="ranks.py",
        process_count_per_node=2,
        distributed_training=mpi,
        user_managed=True,
    ).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    for rank in (0, 1):
        assert (
            f"rank {rank} of 2 local {rank}"
            in (run.log_dir / f"rank_{rank}.stdout.log").read_text()
        )
        assert run.record["ranks"][str(rank)]["exit_code"] == 0


@pytest.mark.mpi
def test_a_failing_rank_stops_the_other_and_is_named(mpi: Mpi, source: Path) -> None:
    est = Estimator(
        source,
        entry_script="ranks.py",
        script_params=["fail", "60"],
        process_count_per_node=2,
        distributed_training=mpi,
        user_managed=True,
    )
    run = est.fit()
    returned = time.time()
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert (run.error["rank"], run.error["exit_code"]) == (1, 5)
    assert "rank 1 gives up" in run.error["stderr_tail"]
    failed, other = run.record["ranks"]["1"], run.record["ranks"]["0"]
    assert other["recorded"] is False or other["exit_code"] != 0  # the sleeper was stopped
    # fit() returned soon after rank 1's exit (its wrapper's clock), not after rank 0's 60 s
    # sleep: SIGTERM, a 2 s grace, SIGKILL, then judging; measured from the failure itself
    assert failed["ended"] is not None
    assert 0 <= returned - failed["ended"] < 20, (returned, failed)


def test_open_mpi_argv_as_root_and_oversubscribed(monkeypatch: pytest.MonkeyPatch) -> None:
    from fitdock.distributions.mpi import MpiLauncher, mpi_env

    launcher = MpiLauncher("/usr/bin/mpirun", Flavor.OPEN_MPI, "4.1.4")
    argv = mpi_argv(launcher, Mpi(extra_args=("--mca", "btl", "self,tcp")), 64, ["python", "x.py"])
    assert argv[:3] == ["/usr/bin/mpirun", "-n", "64"]
    assert "--oversubscribe" in argv
    assert argv[argv.index("--mca") : argv.index("--mca") + 3] == ["--mca", "btl", "self,tcp"]
    assert argv[-2:] == ["python", "x.py"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert mpi_env(launcher) == {
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }  # which library mpi4py loads is distributions.mpimatch's choice, not the launcher's
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert mpi_env(launcher) == {}
    assert mpi_env(MpiLauncher("/x/mpiexec", Flavor.MPICH, "5.0")) == {}
    mpich = MpiLauncher("/x/mpiexec", Flavor.MPICH, "5.0")
    assert mpi_argv(mpich, Mpi(), 2, ["python"]) == [
        "/x/mpiexec",
        "-n",
        "2",
        "-launcher",
        "fork",
        "python",
    ]
