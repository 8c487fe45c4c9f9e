"""What this machine offers fitdock, and what each missing piece would enable.

Each :class:`Probe` is quick and bounded (every program it runs has a time-out; torch, CuPy
and Chainer are imported by a child interpreter, other packages are found with
``importlib.util.find_spec`` and their metadata) and returns :class:`Check` rows; :func:`run`
runs the probes side by side. What each row enables and how to get it is data, in
:data:`ABOUT`. ``fitdock doctor`` (``cli/doctor.py``) prints the rows, adds the sandbox's
own probe, and fails on ``--require``. Packages are this interpreter's (what
``user_managed=True`` jobs use).
"""

from __future__ import annotations

import enum
import importlib.util
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from fitdock._version import __version__
from fitdock.errors import FitdockError, SpecError
from fitdock.execution.gpu import nvidia_gpus
from fitdock.process import tool
from fitdock.shared import fitdock_home

LOW_SPACE = 5 * 2**30  # bytes: below this, a few environments and images fill the disk
QUICK = 10.0  # seconds for a tool's --version or a daemon's status
IMPORT = 60.0  # seconds for a child interpreter that imports torch or CuPy
_GPU = "a CUDA build of torch, and an NVIDIA GPU with its driver (the gpu row)"

# name: (what it gives fitdock, how to get it)
ABOUT: dict[str, tuple[str, str]] = {
    "python": ("fitdock; user_managed=True jobs run here", ""),
    "fitdock": ("this report and every command", "pip install -U fitdock"),
    "interpreters": ("virtualenv builds of the curated environments", "install that Python"),
    "uv": ("the default fit(): virtualenvs (user_managed=False); env lock", "pip install uv"),
    "disk": ("runs, virtualenvs, caches", "free space, or FITDOCK_HOME on a larger disk"),
    "mpi": (
        "distributed_training=Mpi(), Horovod: several ranks per machine",
        "fitdock install mpi (MPICH from PyPI), or apt-get install openmpi-bin",
    ),
    "mpi4py": ("ChainerMN, and scripts that use mpi4py", "fitdock install mpi"),
    "horovod": (
        "distributed_training=Horovod()",
        "build Horovod against torch (the repository's scripts/build-horovod.sh)",
    ),
    "torch": (
        "the PyTorch estimator with user_managed=True; torchrun",
        "pip install torch==2.13.0 (pin a version, else pip may pick a multi-GB CUDA build)",
    ),
    "cuda": ("use_gpu=True with PyTorch", _GPU),
    "nccl": ("backend='nccl': PyTorch across GPUs", _GPU),
    "cupy": (
        "Chainer on GPUs; ChainerMN's flat and pure_nccl communicators",
        "pip install 'cupy-cuda12x>=13,<14' (Chainer needs NumPy < 2), and a GPU",
    ),
    "chainer": ("the Chainer estimator, user_managed=True; ChainerMN", "fitdock install chainer"),
    "gpu": ("use_gpu=True (else jobs run on the CPU)", "an NVIDIA GPU and its driver"),
    "docker": (
        "compute_target='docker', use_docker=True, fitdock images build",
        "a Docker engine (apt-get install docker.io), and fitdock install docker (its SDK)",
    ),
    "docker-gpu": (
        "use_gpu=True in containers (docker run --gpus all)",
        "the NVIDIA Container Toolkit (nvidia-ctk runtime configure), and a GPU",
    ),
    "slurm": ("compute_target='slurm'", "Slurm's client tools, and a controller they reach"),
    "mlflow": ("tracking in MLflow (MLFLOW_TRACKING_URI)", "pip install mlflow-skinny"),
    "bubblewrap": (
        "Execute Python Script's sandbox (sandbox='strict'; 'auto' falls back)",
        "apt-get install bubblewrap (in a container: a seccomp profile that allows it)",
    ),
}


class Status(str, enum.Enum):
    OK = "ok"  # present and working
    PARTIAL = "partial"  # present, but not all of it works (``found`` says what)
    MISSING = "missing"


@dataclass(frozen=True)
class Check:
    """One row: ``found`` says what is there (or what was looked for), ``enables`` what it
    gives fitdock, ``fix`` how to get it (empty when it is ok)."""

    name: str
    status: Status
    found: str
    enables: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "status": self.status.value}


def check(name: str, status: Status, found: str, fix: str | None = None) -> Check:
    """A row, with what it enables and (when not ok) how to get it from :data:`ABOUT`."""
    enables, how = ABOUT[name]
    return Check(name, status, found, enables, "" if status is Status.OK else fix or how)


@dataclass(frozen=True)
class Probe:
    """A probe and the names of the rows it returns (known before it runs, for --require)."""

    names: tuple[str, ...]
    run: Callable[[], list[Check]]


def run(probes: Sequence[Probe]) -> list[Check]:
    """Every probe, side by side; the rows in the probes' order. A probe that fails
    gives ``partial`` rows that say why, never a traceback."""
    with ThreadPoolExecutor(max_workers=max(1, len(probes))) as pool:
        futures = [pool.submit(probe.run) for probe in probes]
    rows: list[Check] = []
    for probe, future in zip(probes, futures, strict=True):
        try:
            rows += future.result()
        except (OSError, ValueError, KeyError, FitdockError) as exc:
            why = f"the probe failed: {type(exc).__name__}: {exc}"
            rows += [check(name, Status.PARTIAL, why) for name in probe.names]
    return rows


def check_names(required: Sequence[str], probes: Sequence[Probe]) -> None:
    """A ``SpecError`` that lists the known names when ``required`` holds another."""
    known = [name for probe in probes for name in probe.names]
    unknown = [name for name in required if name not in known]
    if unknown:
        raise SpecError(
            f"cannot require {', '.join(map(repr, unknown))}: unknown; known: {', '.join(known)}",
            field="require",
        )


def unmet(rows: Sequence[Check], required: Sequence[str]) -> list[str]:
    """The ``required`` names whose rows are not ok."""
    ok = {row.name for row in rows if row.status is Status.OK}
    return [name for name in required if name not in ok]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def version(*distributions: str) -> str | None:
    """The installed version of the first of ``distributions`` found, else None."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def installed(module: str) -> bool:
    """Whether this interpreter finds ``module`` (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def in_child(code: str, env: dict[str, str] | None = None) -> dict[str, Any] | str:
    """Run ``code`` in a child of this interpreter: the JSON object it prints last, or why
    there is none (the last line of its error, or the time-out)."""
    environ = {**os.environ, **(env or {})}
    rc, out, err = tool([sys.executable, "-c", code], timeout=IMPORT, env=environ)
    last = next((line for line in reversed(out.splitlines()) if line.startswith("{")), "")
    try:
        found = json.loads(last)
    except ValueError:
        found = None
    if isinstance(found, dict):
        return found
    lines = (err or out).strip().splitlines()
    return lines[-1] if lines else f"exit status {rc}"


def first_line(text: str) -> str:
    """The first line that is not blank, its runs of spaces made one."""
    return " ".join(next((line for line in text.splitlines() if line.strip()), "").split())


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


# ---------------------------------------------------------------------------------------------
# Python, fitdock, uv, the home folder
# ---------------------------------------------------------------------------------------------
def python_rows() -> list[Check]:
    from fitdock.environments.catalogue import load_catalogue
    from fitdock.environments.uvtool import installed_interpreters

    found = installed_interpreters()
    wanted = sorted({row.python_version for row in load_catalogue().rows if row.buildable})
    lacking = [
        w for w in wanted if not any(i.version == w or i.version.startswith(w + ".") for i in found)
    ]
    versions = sorted({i.version for i in found}, key=_numbers, reverse=True)
    listing = f"{', '.join(versions) or 'none'}; the curated rows use {', '.join(wanted)}"
    fix = f"install Python {', '.join(lacking)} (pyenv install, or your system's package)"
    return [
        check("python", Status.OK, f"{platform.python_version()} ({sys.executable})"),
        check("fitdock", Status.OK, f"{__version__} ({Path(__file__).resolve().parents[1]})"),
        check("interpreters", Status.PARTIAL if lacking else Status.OK, listing, fix),
    ]


def uv_rows() -> list[Check]:
    from fitdock.environments.uvtool import uv_binary

    try:
        path = uv_binary()
    except FitdockError:
        return [check("uv", Status.MISSING, "not beside this interpreter, not on PATH")]
    code, out, err = tool([path, "--version"], timeout=QUICK)
    if code != 0:
        return [check("uv", Status.PARTIAL, f"{path} fails: {first_line(err or out)}")]
    return [check("uv", Status.OK, f"{' '.join(out.split()[:2])} ({path})")]


def disk_rows() -> list[Check]:
    home = fitdock_home()
    usage = shutil.disk_usage(next(p for p in (home, *home.parents) if p.exists()))
    found = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.0f} GiB at {home}"
    return [check("disk", Status.OK if usage.free >= LOW_SPACE else Status.PARTIAL, found)]


# ---------------------------------------------------------------------------------------------
# MPI, mpi4py, Horovod
# ---------------------------------------------------------------------------------------------
def mpi_rows() -> list[Check]:
    """The launchers found, the one ``Mpi()`` would use for this interpreter (matched to
    its mpi4py's library, as ``distributions.mpimatch`` does for every job)."""
    from fitdock.distributions import mpimatch
    from fitdock.distributions.mpi import identify, search_paths
    from fitdock.specs.distribution import Mpi

    launchers = [identify(path) for path in search_paths(Mpi())]
    code, out, err = tool([sys.executable, "-c", mpimatch.probe_code()], timeout=IMPORT)
    report = mpimatch.parse_report(code, out, err, "here")
    names = ", ".join(f"{x.flavor.value} {x.version} ({x.path})" for x in launchers)
    if not launchers:
        mpi = check(
            "mpi", Status.MISSING, "no mpirun or mpiexec beside Python, on PATH, in /usr/bin"
        )
    else:
        candidates = [mpimatch.candidate_for(x) for x in launchers]
        try:
            chosen = mpimatch.choose(
                mpimatch.libraries_of(report), candidates, "here", optional=("horovod",)
            )
            uses = (
                f"{chosen.launcher.flavor.value} {chosen.launcher.version} ({chosen.launcher.path})"
            )
            if chosen.env:
                uses += f", mpi4py switched to {chosen.env['MPI4PY_LIBMPI']}"
            mpi = check("mpi", Status.OK, f"Mpi() uses {uses}; found {names}")
        except FitdockError as exc:
            mpi = check("mpi", Status.PARTIAL, str(exc))
    rows = [mpi]
    mpi4py = report.get("mpi4py")
    if mpi4py is None:
        rows.append(check("mpi4py", Status.MISSING, "not installed"))
    elif "library" not in mpi4py:
        rows.append(check("mpi4py", Status.PARTIAL, f"loads no MPI: {mpi4py.get('error')}"))
    else:
        loads = first_line(str(mpi4py["library"]))
        rows.append(check("mpi4py", Status.OK, f"{version('mpi4py')}, loads {loads}"))
    horovod = report.get("horovod")
    if horovod is None:
        rows.append(check("horovod", Status.MISSING, "not installed"))
    else:
        links = ", ".join(horovod.get("needed") or ()) or "no MPI library (Gloo only)"
        rows.append(check("horovod", Status.OK, f"{version('horovod')}, links {links}"))
    return rows


# ---------------------------------------------------------------------------------------------
# Frameworks: torch with CUDA and NCCL, CuPy, Chainer, MLflow
# ---------------------------------------------------------------------------------------------
_TORCH = """import json, torch
cuda = torch.cuda.is_available()
nccl = torch.distributed.is_available() and torch.distributed.is_nccl_available()
v = torch.cuda.nccl.version() if cuda and nccl else None
print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda,
    "devices": torch.cuda.device_count() if cuda else 0, "nccl": nccl,
    "nccl_version": ".".join(map(str, v)) if isinstance(v, tuple) else v}))
"""
_CUPY = (
    "import json, cupy; print(json.dumps({'v': cupy.__version__, 'gpu': cupy.cuda.is_available()}))"
)
_CHAINER = "import json, chainer, chainermn; print(json.dumps({'v': chainer.__version__}))"


def torch_rows() -> list[Check]:
    names = ("torch", "cuda", "nccl")
    if not installed("torch"):
        return [check(name, Status.MISSING, "torch is not installed") for name in names]
    found = in_child(_TORCH)
    if isinstance(found, str):
        return [check(name, Status.PARTIAL, f"torch fails to import: {found}") for name in names]
    rows = [check("torch", Status.OK, str(found["version"]))]
    if not found["cuda"]:
        rows.append(check("cuda", Status.MISSING, "torch is a CPU build"))
    elif not found["devices"]:
        rows.append(check("cuda", Status.PARTIAL, f"CUDA {found['cuda']} build; no GPU visible"))
    else:
        rows.append(check("cuda", Status.OK, f"CUDA {found['cuda']}, {found['devices']} GPU(s)"))
    if found["nccl_version"]:
        rows.append(check("nccl", Status.OK, f"NCCL {found['nccl_version']}"))
    else:
        built = "built with NCCL; no GPU visible" if found["nccl"] else "not in this torch build"
        rows.append(check("nccl", Status.MISSING, built))
    return rows


def cupy_rows() -> list[Check]:
    if not installed("cupy"):
        return [check("cupy", Status.MISSING, "not installed")]
    found = in_child(_CUPY)
    if isinstance(found, str):
        return [check("cupy", Status.PARTIAL, f"fails to import: {found}")]
    if not found["gpu"]:
        return [check("cupy", Status.PARTIAL, f"{found['v']}; no GPU visible", "see the gpu row")]
    return [check("cupy", Status.OK, str(found["v"]))]


def chainer_rows() -> list[Check]:
    if not installed("chainer"):
        return [check("chainer", Status.MISSING, "not installed")]
    found = in_child(_CHAINER, {"SETUPTOOLS_USE_DISTUTILS": "stdlib"})
    if isinstance(found, str):
        return [check("chainer", Status.PARTIAL, f"fails to import: {found}")]
    return [check("chainer", Status.OK, f"{found['v']}, with ChainerMN")]


def mlflow_rows() -> list[Check]:
    if not installed("mlflow"):
        return [check("mlflow", Status.MISSING, "not installed")]
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    where = f"MLFLOW_TRACKING_URI={uri}" if uri else "MLFLOW_TRACKING_URI unset"
    return [check("mlflow", Status.OK, f"{version('mlflow', 'mlflow-skinny')}; {where}")]


# ---------------------------------------------------------------------------------------------
# GPUs, Docker, Slurm
# ---------------------------------------------------------------------------------------------
def gpu_rows() -> list[Check]:
    gpus = nvidia_gpus()
    if gpus.visible:
        return [check("gpu", Status.OK, gpus.describe())]
    return [check("gpu", Status.MISSING, f"looked for {gpus.looked_for()}")]


def docker_rows() -> list[Check]:
    """The engine (through the docker client, as the docker target runs it), the Python
    SDK (image builds), and a GPU runtime (``--gpus all``)."""
    if shutil.which("docker") is None:
        return [
            check("docker", Status.MISSING, "no docker program on PATH"),
            check("docker-gpu", Status.MISSING, "no Docker"),
        ]
    info = ["docker", "info", "--format", "{{.ServerVersion}}|{{json .Runtimes}}"]
    code, out, err = tool(info, timeout=QUICK)
    engine, _, runtimes = out.strip().partition("|")
    if code != 0 or not engine:
        why = f"the docker client reaches no engine: {first_line(err or out)}"
        return [
            check("docker", Status.PARTIAL, why, "start dockerd, or set DOCKER_HOST"),
            check("docker-gpu", Status.MISSING, "no Docker engine"),
        ]
    sdk = version("docker")
    if sdk is None:
        rows = [check("docker", Status.PARTIAL, f"engine {engine}; no Python SDK")]
    else:
        rows = [check("docker", Status.OK, f"engine {engine}, Python SDK {sdk}")]
    hooks = [t for t in ("nvidia-container-runtime-hook", "nvidia-ctk") if shutil.which(t)]
    if "nvidia" not in json.loads(runtimes or "{}") and not hooks:
        rows.append(check("docker-gpu", Status.MISSING, "no nvidia runtime, no nvidia-ctk"))
    elif nvidia_gpus().visible:
        rows.append(check("docker-gpu", Status.OK, "NVIDIA Container Toolkit; GPU visible"))
    else:
        rows.append(check("docker-gpu", Status.PARTIAL, "NVIDIA Container Toolkit; no GPU"))
    return rows


def slurm_rows() -> list[Check]:
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return [check("slurm", Status.MISSING, "no sinfo on PATH")]
    code, out, err = tool([sinfo, "-h", "-o", "%P %D %T"], timeout=QUICK)
    if code != 0:
        why = f"sinfo is installed; no controller answers: {first_line(err or out)}"
        return [check("slurm", Status.PARTIAL, why)]
    partitions = ", ".join(" ".join(line.split()) for line in out.splitlines()) or "none"
    return [check("slurm", Status.OK, f"partitions (nodes, state): {partitions}")]


PROBES = (
    Probe(("python", "fitdock", "interpreters"), python_rows),
    Probe(("uv",), uv_rows),
    Probe(("disk",), disk_rows),
    Probe(("mpi", "mpi4py", "horovod"), mpi_rows),
    Probe(("torch", "cuda", "nccl"), torch_rows),
    Probe(("cupy",), cupy_rows),
    Probe(("chainer",), chainer_rows),
    Probe(("gpu",), gpu_rows),
    Probe(("docker", "docker-gpu"), docker_rows),
    Probe(("slurm",), slurm_rows),
    Probe(("mlflow",), mlflow_rows),
)
