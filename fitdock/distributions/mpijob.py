"""The MPI side of a job, for every target: its launcher (chosen by ``mpimatch`` where the
job runs) and the variables its ranks get, the world-size guard among them.

Each target asks one of ``on_this_machine`` (local, Slurm's mpirun), ``on_host`` (the
hosts target: the job's Python on the first host, the launcher here), ``in_image``
(docker: both in the image) or ``under_srun`` (Slurm's srun), then ``variables``; the
supervisor adds ``supervised_variables`` to the attempts it runs and watches itself.

Open MPI's launcher signals each rank's process group (``kill(-pid)``): the script gets the
signal itself, so its rank wrapper must not forward it again (``FITDOCK_RANK_FORWARD=0``, as
under srun). When a rank exits non-zero, mpirun also stops the others on its own (SIGTERM,
then SIGKILL one second later): a second SIGTERM for ranks fitdock has already told, no
regard for ``termination_grace_seconds``, and rank wrappers killed before they record an
exit. Where fitdock's supervisor watches the job it does that fail-fast itself, once, so
there mpirun is told not to (``orte_abort_on_non_zero_status=0``). ``MPI_Abort`` still ends
the whole job at once.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fitdock.distributions import mpimatch
from fitdock.distributions.mpi import Flavor, MpiLauncher, identify, mpi_env, search_paths
from fitdock.distributions.mpimatch import Candidate, MpiMatch
from fitdock.process import tool
from fitdock.runs.store import RunDir
from fitdock.specs.distribution import Horovod, Mpi

# <run>/guard/sitecustomize.py (RunPaths.guard) is a copy of this file
GUARD_SOURCE = Path(__file__).parent.parent / "jobside" / "worldguard.py"
PROBE_TIMEOUT = 60.0


def settings(config: Mpi | Horovod) -> Mpi:
    """The MPI settings of a job started by mpirun (Horovod's MPI controller is one)."""
    return config.as_mpi() if isinstance(config, Horovod) else config


def _optional(config: Mpi | Horovod) -> tuple[str, ...]:
    """An ``Mpi()`` job prefers a launcher that Horovod's library suits too, but its script
    may not use Horovod: only a Horovod job requires it."""
    return () if isinstance(config, Horovod) else ("horovod",)


def _pinned(user_env: dict[str, str]) -> bool:
    return "MPI4PY_LIBMPI" in user_env or "MPI4PY_MPIABI" in user_env


def _match(
    config: Mpi | Horovod,
    probe: mpimatch.Runner,
    candidates: Callable[[dict[str, Any]], list[Candidate]],
    where: str,
    key: list[str],
    user_env: dict[str, str],
) -> MpiMatch:
    optional = _optional(config)
    return mpimatch.match(
        probe,
        candidates,
        where,
        key=[*key, *optional, *(f"{k}={v}" for k, v in sorted(user_env.items()))],
        user_pinned=_pinned(user_env),
        optional=optional,
    )


def _found_here(paths: list[str]) -> Callable[[dict[str, Any]], list[Candidate]]:
    """Candidates from launchers on this machine (the probe's report is not needed)."""
    return lambda _report: [mpimatch.candidate_for(identify(path)) for path in paths]


def _local_runner(argv: list[str], env: dict[str, str], where: str) -> mpimatch.Runner:
    def run(extra: dict[str, str]) -> dict:  # type: ignore[type-arg]
        code, out, err = tool(argv, timeout=PROBE_TIMEOUT, env={**env, **extra})
        return mpimatch.parse_report(code, out, err, where)

    return run


def on_this_machine(
    config: Mpi | Horovod, python: str, env: dict[str, str], user_env: dict[str, str]
) -> MpiMatch:
    """The launcher for ranks started here with ``python`` (``env``: the variables they
    get, the caller's included). Before the job's environment exists (a dry run of a
    virtualenv not built yet) the first launcher found, unchecked."""
    paths = search_paths(settings(config), python)
    where = "on this machine"
    if not os.access(python, os.X_OK):
        if not paths:
            raise mpimatch.MpiMismatchError(f"no mpirun or mpiexec found {where}", (), ())
        return MpiMatch(identify(paths[0]), checked=False)
    key = ["local", *mpimatch.interpreter_key(python, env), *mpimatch.file_key(paths)]
    probe = _local_runner([python, "-c", mpimatch.probe_code()], env, where)
    return _match(config, probe, _found_here(paths), where, key, user_env)


def on_host(
    config: Mpi | Horovod, python: str, agent: Sequence[str], host: str, user_env: dict[str, str]
) -> MpiMatch:
    """The launcher here for ranks that run ``python`` on ``host`` (reached by ``agent``)."""
    paths = search_paths(settings(config))
    where = f"for host {host}"

    def probe(extra: dict[str, str]) -> dict:  # type: ignore[type-arg]
        assignments = [f"{k}={v}" for k, v in sorted({**user_env, **extra}.items())]
        remote = shlex.join(["env", *assignments, python, "-c", mpimatch.probe_code()])
        code, out, err = tool([*agent, host, remote], timeout=PROBE_TIMEOUT)
        return mpimatch.parse_report(code, out, err, f"on host {host}")

    key = ["hosts", *agent, host, python, *mpimatch.file_key(paths)]
    return _match(config, probe, _found_here(paths), where, key, user_env)


def in_image(
    config: Mpi | Horovod,
    image: str,
    image_id: str | None,
    python: str,
    run_argv: Sequence[str],
    user_env: dict[str, str],
) -> MpiMatch:
    """The launcher inside ``image`` (``run_argv``: ``docker run ...`` up to the image);
    ``image_id`` None: the image is not built yet, so the launcher is unchecked."""
    named = settings(config).mpirun
    if image_id is None:
        return MpiMatch(MpiLauncher(named or "mpirun", Flavor.UNKNOWN, ""), checked=False)
    where = f"in image {image}"
    argv = [*run_argv, image, python, "-c", mpimatch.probe_code(), "--launchers"]
    if named:
        argv.append(named)
    probe = _local_runner(argv, dict(os.environ), where)
    key = ["image", image_id, python, named or ""]
    return _match(config, probe, mpimatch.candidates_of, where, key, user_env)


def under_srun(
    config: Mpi | Horovod,
    srun_mpi: str,
    python: str,
    env: dict[str, str],
    user_env: dict[str, str],
) -> MpiMatch:
    """Slurm's ``srun --mpi=pmix`` starts ranks that need a PMIx-speaking MPI (Open MPI);
    ``pmi2`` suits MPICH."""
    flavor = Flavor.OPEN_MPI if srun_mpi.startswith("pmix") else Flavor.MPICH
    srun = MpiLauncher(f"srun --mpi={srun_mpi}", flavor, "")
    candidate = Candidate(srun, mpimatch.SONAME[flavor])
    if not os.access(python, os.X_OK):
        return MpiMatch(srun, checked=False)
    probe = _local_runner([python, "-c", mpimatch.probe_code()], env, "on this machine")
    key = ["srun", srun_mpi, *mpimatch.interpreter_key(python, env)]
    return _match(config, probe, lambda _report: [candidate], "for srun", key, user_env)


def variables(
    chosen: MpiMatch | None, run: RunDir, world_size: int, pythonpath: str | None
) -> dict[str, str]:
    """What the ranks of an MPI or Horovod job get: the launcher's variables, mpi4py's
    switch and a description of the choice (``FITDOCK_MPI``), unless no MPI launcher
    starts them (Horovod's Gloo controller), and the world-size guard first on
    ``PYTHONPATH`` (before ``pythonpath``, the path they would have had)."""
    env: dict[str, str] = {}
    if chosen is not None:
        if not chosen.launcher.path.startswith("srun "):  # srun needs no mpirun settings
            env.update(mpi_env(chosen.launcher))
        env.update(chosen.env)
        env["FITDOCK_MPI"] = chosen.describe()
        if chosen.launcher.flavor is Flavor.OPEN_MPI:  # it signals the script itself
            env["FITDOCK_RANK_FORWARD"] = "0"
    env["FITDOCK_WORLD_SIZE"] = str(world_size)
    guard = str(run.guard)
    env["PYTHONPATH"] = os.pathsep.join([guard, pythonpath] if pythonpath else [guard])
    return env


# Open MPI 4 (ORTE) names; Open MPI 5's PRRTE ignores them.
OPEN_MPI_SUPERVISED = {"OMPI_MCA_orte_abort_on_non_zero_status": "0"}


def supervised_variables(env: dict[str, str]) -> dict[str, str]:
    """What an attempt whose ranks fitdock's supervisor watches adds to ``env`` (its plan's
    variables): with Open MPI's mpirun, leave stopping the other ranks after a failure to
    fitdock's fail-fast (see the module's docstring)."""
    if env.get("FITDOCK_MPI", "").startswith(Flavor.OPEN_MPI.value):
        return dict(OPEN_MPI_SUPERVISED)
    return {}


def install_guard(run: RunDir) -> None:
    """Copy the guard into the run (``<run>/guard/sitecustomize.py``), where every target's
    ranks can read it."""
    folder = run.guard
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_bytes(GUARD_SOURCE.read_bytes())
