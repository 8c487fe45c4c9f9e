"""N ranks form one world of N, or the fit fails before training.

The launcher is chosen by what the job's own mpi4py and Horovod load (distributions/
mpimatch.py), probed in the job's environment; the world-size guard (jobside/worldguard.py)
stops a rank that joined a smaller world anyway. Real mpirun, real interpreters; the pure
choice is also tested on its own. Horovod cases are in test_horovod.py, Docker ones in
test_docker_runs.py, srun in test_slurm_runs.py."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_dirs, write_script

from fitdock import Environment, Estimator, Mpi, RunStatus, Slurm
from fitdock.distributions import mpijob
from fitdock.distributions.mpi import Flavor, MpiLauncher
from fitdock.distributions.mpimatch import (
    Candidate,
    MpiLibrary,
    choose,
    libraries_of,
    parse_report,
    probe_code,
)
from fitdock.environments.spec import PythonSection
from fitdock.errors import MpiMismatchError
from fitdock.jobside.mpiprobe import elf_needed

OPEN_MPI = MpiLauncher("/usr/bin/mpirun", Flavor.OPEN_MPI, "4.1.4")
MPICH = MpiLauncher("/venv/bin/mpiexec", Flavor.MPICH, "5.0.2")
MPICH_HERE = str(Path(sys.executable).parent / "mpiexec")
SYSTEM_OPEN_MPI = "/usr/bin/mpirun"

WORLD = """\
import os, sys
if len(sys.argv) > 1:  # load Open MPI behind fitdock's back, whatever the launcher
    os.environ["MPI4PY_LIBMPI"] = "libmpi.so.40"
from mpi4py import MPI
comm = MPI.COMM_WORLD
print("world", comm.Get_rank(), comm.Get_size(), MPI.Get_library_version().split()[0])
total = comm.allreduce(comm.Get_rank() + 1)
print("sum", total)
"""


def mpi4py_lib(flavor: Flavor | None, *abis: Flavor) -> MpiLibrary:
    return MpiLibrary("mpi4py", flavor, flavor.value if flavor else "none", tuple(abis))


def horovod_lib(flavor: Flavor) -> MpiLibrary:
    return MpiLibrary("horovod", flavor, flavor.value)


# ---------------------------------------------------------------------------------------------
# The choice, pure
# ---------------------------------------------------------------------------------------------
def test_the_launcher_of_the_library_mpi4py_loads_wins_over_search_order() -> None:
    wheel = mpi4py_lib(Flavor.OPEN_MPI, Flavor.MPICH, Flavor.OPEN_MPI)
    candidates = [Candidate(MPICH, "/venv/lib/libmpi.so.12"), Candidate(OPEN_MPI, "libmpi.so.40")]
    chosen = choose([wheel], candidates, "here")
    assert (chosen.launcher, chosen.env) == (OPEN_MPI, {})


def test_mpi4py_is_switched_to_the_launcher_horovod_needs() -> None:
    libraries = [
        mpi4py_lib(Flavor.MPICH, Flavor.MPICH, Flavor.OPEN_MPI),
        horovod_lib(Flavor.OPEN_MPI),
    ]
    candidates = [Candidate(MPICH, "/venv/lib/libmpi.so.12"), Candidate(OPEN_MPI, "libmpi.so.40")]
    chosen = choose(libraries, candidates, "here", optional=("horovod",))
    assert chosen.launcher == OPEN_MPI
    assert chosen.env == {"MPI4PY_LIBMPI": "libmpi.so.40"}
    assert "switched with MPI4PY_LIBMPI=libmpi.so.40" in chosen.describe()


def test_horovod_is_required_of_a_horovod_job_and_preferred_of_an_mpi_one() -> None:
    libraries = [mpi4py_lib(Flavor.MPICH), horovod_lib(Flavor.OPEN_MPI)]
    only_mpich = [Candidate(MPICH, "libmpi.so.12")]
    assert choose(libraries, only_mpich, "here", optional=("horovod",)).launcher == MPICH
    with pytest.raises(MpiMismatchError) as caught:
        choose(libraries, only_mpich, "on this machine")
    message = str(caught.value)
    assert "MPICH 5.0.2 (/venv/bin/mpiexec)" in message
    assert "horovod loads Open MPI" in message and "one world" in message
    assert caught.value.launchers == (MPICH,)


def test_a_fixed_mpi4py_refuses_a_launcher_of_the_other_mpi() -> None:
    built_for_open_mpi = mpi4py_lib(Flavor.OPEN_MPI)  # no abis: built for one MPI
    with pytest.raises(MpiMismatchError, match="mpi4py loads Open MPI"):
        choose([built_for_open_mpi], [Candidate(MPICH, "libmpi.so.12")], "here")


def test_an_mpi4py_that_finds_no_library_gets_the_launchers_own() -> None:
    wheel = mpi4py_lib(None, Flavor.MPICH, Flavor.OPEN_MPI)
    chosen = choose([wheel], [Candidate(MPICH, "/venv/lib/libmpi.so.12")], "here")
    assert chosen.env == {"MPI4PY_LIBMPI": "/venv/lib/libmpi.so.12"}


def test_no_mpi_library_keeps_the_first_launcher_and_none_found_is_an_error() -> None:
    assert choose([], [Candidate(MPICH, ""), Candidate(OPEN_MPI, "")], "here").launcher == MPICH
    with pytest.raises(MpiMismatchError, match="no mpirun or mpiexec found here"):
        choose([], [], "here")


def test_probe_reports_are_read_and_a_broken_probe_is_an_error() -> None:
    report = {
        "mpi4py": {"library": "Open MPI v4.1.4, package: Debian\0", "abis": ["mpich", "openmpi"]},
        "horovod": {"needed": ["libmpi.so.40", "libmpi_cxx.so.40"]},
    }
    mpi4py, horovod = libraries_of(report)
    assert (mpi4py.flavor, mpi4py.abis) == (Flavor.OPEN_MPI, (Flavor.MPICH, Flavor.OPEN_MPI))
    assert horovod == MpiLibrary("horovod", Flavor.OPEN_MPI, "Open MPI (libmpi.so.40)")
    assert libraries_of(report, user_pinned=True)[0].abis == ()
    assert libraries_of({"mpi4py": None, "horovod": None}) == ()
    with pytest.raises(MpiMismatchError, match=r"on host n1 .*exit 127.*not found"):
        parse_report(127, "", "python3: not found", "on host n1")


def test_the_probe_reads_elf_needed_entries_without_loading(tmp_path: Path) -> None:
    needed = elf_needed(sys.executable)
    assert any(name.startswith("libc.so") for name in needed)
    (tmp_path / "text.so").write_text("not an ELF file")
    assert elf_needed(str(tmp_path / "text.so")) == []


def test_the_probe_runs_in_this_interpreter() -> None:
    done = subprocess.run(
        [sys.executable, "-c", probe_code()], capture_output=True, text=True, check=True
    )
    report = parse_report(done.returncode, done.stdout, done.stderr, "here")
    assert report["python"] == sys.executable
    if report["mpi4py"] is not None:  # the mpi extra: the PyPI wheel, both ABIs
        assert "library" in report["mpi4py"] and report["mpi4py"]["abis"]


# ---------------------------------------------------------------------------------------------
# Real jobs
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_mpi_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with mpi4py and no MPI of its own, so mpi4py loads the system's Open MPI
    (as in the curated GPU environments), while the MPI beside fitdock's interpreter, found
    first, is MPICH."""
    if not Path(SYSTEM_OPEN_MPI).is_file() or not Path(MPICH_HERE).is_file():
        pytest.skip("needs Debian's Open MPI and the mpi extra's MPICH (scripts/install-system.sh)")
    venv = tmp_path_factory.mktemp("ompi") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    version = importlib.metadata.version("mpi4py")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"mpi4py=={version}"]
    subprocess.run([*pip, "--disable-pip-version-check"], check=True, timeout=600)
    return venv / "bin" / "python"


def estimator(source: Path, python: Path, *args: str, **kwargs: object) -> Estimator:
    env = Environment(
        python=PythonSection(user_managed_dependencies=True, interpreter_path=str(python))
    )
    options: dict[str, object] = {"distributed_training": Mpi(), **kwargs}
    return Estimator(
        source, entry_script="train.py", script_params=list(args), process_count_per_node=2,
        environment_definition=env, max_run_duration_seconds=120, **options,  # type: ignore[arg-type]
    )  # fmt: skip


def worlds(run) -> list[str]:  # type: ignore[no-untyped-def]
    return [(run.log_dir / f"rank_{r}.stdout.log").read_text() for r in (0, 1)]


@pytest.mark.mpi
def test_a_venv_whose_mpi4py_loads_open_mpi_gets_open_mpis_launcher(
    tmp_path: Path, open_mpi_venv: Path
) -> None:
    source = write_script(tmp_path / "src", WORLD)
    run = estimator(source, open_mpi_venv).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    for rank, out in enumerate(worlds(run)):
        assert f"world {rank} 2 Open" in out and "sum 3" in out
    assert run.record["argv"][0] == SYSTEM_OPEN_MPI
    assert run.record["env"]["FITDOCK_MPI"].startswith("Open MPI")
    assert "mpi4py: Open MPI" in run.record["env"]["FITDOCK_MPI"]


@pytest.mark.mpi
def test_a_launcher_the_library_cannot_use_is_refused_before_anything_runs(
    tmp_path: Path, open_mpi_venv: Path, fitdock_home: Path
) -> None:
    source = write_script(tmp_path / "src", WORLD)
    pinned = {"MPI4PY_LIBMPI": "libmpi.so.40"}  # the user's own choice: fitdock keeps it
    est = estimator(
        source, open_mpi_venv, distributed_training=Mpi(mpirun=MPICH_HERE),
        environment_variables=pinned,
    )  # fmt: skip
    with pytest.raises(MpiMismatchError) as caught:
        est.fit()
    message = str(caught.value)
    assert "MPICH" in message and MPICH_HERE in message and "mpi4py loads Open MPI" in message
    assert run_dirs(fitdock_home) == []  # nothing was created, no rank started


@pytest.mark.mpi
def test_the_guard_fails_a_rank_that_joined_a_smaller_world(tmp_path: Path) -> None:
    """What no probe can see: the script itself loads another MPI than the launcher's."""
    source = write_script(tmp_path / "src", WORLD)
    if not Path(SYSTEM_OPEN_MPI).is_file():
        pytest.skip("needs Debian's Open MPI (scripts/install-system.sh)")
    started = time.monotonic()
    run = estimator(
        source, Path(sys.executable), "behind-the-back", distributed_training=Mpi(mpirun=MPICH_HERE)
    ).fit()
    assert run.status is RunStatus.FAILED
    assert time.monotonic() - started < 60
    error = run.error
    assert error is not None and error["reason"] == "world_size_mismatch", error
    assert (error["world_size"], error["expected"]) == (1, 2)
    assert "formed an MPI world of 1 rank(s), but 2 were started" in error["message"]
    assert "MPICH" in error["message"] and "Open MPI" in error["message"]
    marker = json.loads((run.log_dir / f"rank_{error['rank']}.world.json").read_text())
    assert marker["what"] == "mpi4py"
    assert not any("sum" in out for out in worlds(run))  # no rank got to train


@pytest.mark.mpi
def test_the_choice_is_cached_per_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python, env = sys.executable, {"PATH": "/usr/bin:/bin"}
    first = mpijob.on_this_machine(Mpi(), python, env, {})
    assert first.checked and first.libraries

    def no_subprocess(*args: object, **kwargs: object) -> object:
        raise AssertionError("the cached choice must not probe again")

    monkeypatch.setattr(mpijob, "tool", no_subprocess)
    again = mpijob.on_this_machine(Mpi(), python, env, {})
    assert (again.launcher.path, again.env) == (first.launcher.path, first.env)


@pytest.mark.mpi
def test_srun_pmix_refuses_an_mpi4py_pinned_to_mpich(tmp_path: Path, fitdock_home: Path) -> None:
    """srun --mpi=pmix starts ranks over PMIx, which this MPICH does not speak: each rank
    would be a world of one. Refused when the fit is planned, before sbatch."""
    source = write_script(tmp_path / "src", WORLD)
    mpich_library = str(Path(sys.executable).parent.parent / "lib" / "libmpi.so.12")
    if not Path(mpich_library).is_file():
        pytest.skip("needs the mpi extra's MPICH")
    est = Estimator(
        source, entry_script="train.py", compute_target=Slurm(), user_managed=True,
        distributed_training=Mpi(process_count_per_node=2),
        environment_variables={"MPI4PY_LIBMPI": mpich_library},
    )  # fmt: skip
    with pytest.raises(MpiMismatchError, match=r"srun --mpi=pmix.*mpi4py loads MPICH"):
        est.fit()
    assert run_dirs(fitdock_home) == []


@pytest.mark.mpi
def test_a_mismatch_found_after_the_environment_is_built_fails_the_run(tmp_path: Path) -> None:
    """A virtualenv is probed once it is built (the plan before that could not look in it):
    the run is then Failed with reason mpi_mismatch, and no rank started."""
    if not Path(SYSTEM_OPEN_MPI).is_file() or not Path(MPICH_HERE).is_file():
        pytest.skip("needs Debian's Open MPI and the mpi extra's MPICH")
    source = write_script(tmp_path / "src", WORLD)
    version = importlib.metadata.version("mpi4py")
    run = Estimator(
        source, entry_script="train.py", process_count_per_node=2,
        distributed_training=Mpi(mpirun=MPICH_HERE), pip_packages=[f"mpi4py=={version}"],
        environment_variables={"MPI4PY_LIBMPI": "libmpi.so.40"},
    ).fit()  # fmt: skip
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "mpi_mismatch", run.error
    assert "mpi4py loads Open MPI" in run.error["message"]
    assert run.record["environment_build"]["venv"]
    assert not list(run.log_dir.glob("rank_*"))
