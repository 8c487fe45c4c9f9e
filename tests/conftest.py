"""Shared fixtures and the marker rules.

* Every test runs with ``FITDOCK_HOME`` set to its own ``tmp_path`` (autouse), so runs
  never land in the real ``~/.fitdock``.
* A test marked ``mpi``/``chainer``/``torch``/``docker``/``slurm`` is skipped, with the
  reason, when that tool is missing here; with ``CI=true`` it fails instead, so CI
  cannot go green by skipping. ``gpu`` tests skip without an NVIDIA GPU, even in CI.
* The CI guard: with ``CI=true`` (any case) every other skip fails too, however it was
  made: ``pytest.skip`` in a test or fixture, ``pytest.importorskip``, a ``skipif`` mark,
  a module skipped at import. Only tests marked with an ``ALWAYS_SKIP`` marker (``gpu``)
  may skip there. Locally a skip stays a skip, with its reason (``-ra``).
* ``--update-golden`` rewrites the files under ``tests/golden/`` instead of comparing
  with them; without it a mismatch fails.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).parent / "golden"


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current output instead of comparing",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``golden(name, text)``: compare ``text`` with ``tests/golden/<name>`` exactly."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        assert path.is_file(), f"{path} is missing; create it with `pytest --update-golden`"
        assert text == path.read_text(), (
            f"{path.name} differs from the golden file; if the change is intended, "
            "regenerate it with `pytest --update-golden` and review the diff"
        )

    return check


# ---------------------------------------------------------------------------------------------
# FITDOCK_HOME per test
# ---------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fitdock_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "fitdock-home"
    monkeypatch.setenv("FITDOCK_HOME", str(home))
    # Variables of an enclosing fitdock run (tests run inside a job) must not reach these.
    for name in list(os.environ):
        if name.startswith(("FITDOCK_", "AZUREML_", "SM_")) and name != "FITDOCK_HOME":
            monkeypatch.delenv(name)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # no mirroring unless a test asks
    return home


# ---------------------------------------------------------------------------------------------
# Markers that need a tool
# ---------------------------------------------------------------------------------------------
def _quiet(argv: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> bool:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@functools.cache
def _missing_mpi() -> str | None:
    from fitdock.distributions.mpi import find_launcher
    from fitdock.errors import FitdockError
    from fitdock.specs.distribution import Mpi

    try:
        find_launcher(Mpi())
    except FitdockError as exc:
        return f"no MPI launcher: {exc}"
    return None


@functools.cache
def _missing_chainer() -> str | None:
    env = {**os.environ, "SETUPTOOLS_USE_DISTUTILS": "stdlib"}
    if _quiet([sys.executable, "-c", "import chainer, chainermn"], env=env):
        return None
    return "chainer/chainermn cannot be imported by this interpreter"


@functools.cache
def _missing_torch() -> str | None:
    if _quiet([sys.executable, "-c", "import torch"]):
        return None
    return "torch cannot be imported by this interpreter"


@functools.cache
def _missing_docker() -> str | None:
    if shutil.which("docker") and _quiet(["docker", "info"], timeout=30):
        return None
    return "no working Docker engine (`docker info` failed)"


@functools.cache
def _missing_slurm() -> str | None:
    from slurm_cluster import missing

    return missing()


@functools.cache
def _missing_gpu() -> str | None:
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return None
    if shutil.which("nvidia-smi") and _quiet(["nvidia-smi", "-L"], timeout=30):
        return None
    return "no NVIDIA GPU"


@functools.cache
def _missing_netns() -> str | None:
    from netns import netns_unavailable

    return netns_unavailable()


@functools.cache
def _missing_horovod() -> str | None:
    if _quiet([sys.executable, "-c", "import horovod.torch"]):
        return None
    return "horovod.torch cannot be imported (scripts/build-horovod.sh builds it)"


TOOLS: dict[str, Callable[[], str | None]] = {
    "horovod": _missing_horovod,
    "netns": _missing_netns,
    "mpi": _missing_mpi,
    "chainer": _missing_chainer,
    "torch": _missing_torch,
    "docker": _missing_docker,
    "slurm": _missing_slurm,
    "gpu": _missing_gpu,
}
ALWAYS_SKIP = {"gpu"}  # CI machines have no GPU: never turn these into failures


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def skip_allowed(node: pytest.Item | pytest.Collector) -> bool:
    """True for a test that may skip in CI: one marked ``gpu`` (CI machines have none)."""
    return any(marker.name in ALWAYS_SKIP for marker in node.iter_markers())


CI_SKIP = "CI=true: only gpu tests may skip, so this skip fails the run"


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skipped report into a failed one that keeps the skip's reason."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{CI_SKIP} ({reason})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and in_ci() and not skip_allowed(item):
        _fail_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if report.skipped and in_ci() and not skip_allowed(collector):
        _fail_skip(report)  # a module that skipped itself at import (allow_module_level)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers():
        check = TOOLS.get(marker.name)
        if check is None:
            continue
        reason = check()
        if reason is None:
            continue
        if in_ci() and marker.name not in ALWAYS_SKIP:
            pytest.fail(f"[{marker.name}] {reason}; CI=true, so this fails instead of skipping")
        pytest.skip(f"[{marker.name}] {reason}")


# ---------------------------------------------------------------------------------------------
# A private Slurm cluster for the session
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Any]:
    """A one-node Slurm of the session's own (``tests/slurm_cluster.py``), started by the first
    test that asks for it and stopped after the last; ``SLURM_CONF`` points at it meanwhile."""
    from slurm_cluster import slurm_cluster as start

    with start() as cluster, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster


@pytest.fixture
def slurm(slurm_cluster: Any) -> Iterator[Any]:
    """The session's cluster, idle, for one test (jobs left behind are cancelled after)."""
    slurm_cluster.wait_idle()
    yield slurm_cluster
    slurm_cluster.run("scancel", "--user", "root")


# ---------------------------------------------------------------------------------------------
# Fake hosts (tests/netns.py) for the hosts target's tests
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def net() -> Iterator[Any]:
    """Two fake hosts (a ``netns.NamespaceHosts``), named by address only; removed after."""
    from netns import namespace_hosts, netns_unavailable, require

    require(netns_unavailable())
    with namespace_hosts(2, resolve_hostnames=False) as hosts:
        yield hosts


@pytest.fixture
def ssh_net() -> Iterator[Any]:
    """Two fake hosts like ``net``'s, each with a private sshd (``ssh``: the key, options)."""
    from netns import namespace_hosts, netns_unavailable, require, sshd_unavailable

    require(netns_unavailable() or sshd_unavailable())
    with namespace_hosts(2, sshd=True, resolve_hostnames=False) as hosts:
        assert hosts.ssh is not None
        yield hosts


# ---------------------------------------------------------------------------------------------
# Shared by the @step, script and sandbox tests
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small working folder to run from: @step pipelines copy the working folder."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def bwrap() -> None:
    """bubblewrap, or a skip (a failure with CI=true, by the CI guard: install-system.sh
    installs it)."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (scripts/install-system.sh installs it)")


@pytest.fixture
def loopback_server() -> Iterator[int]:
    """A TCP server on the host's loopback that accepts and closes connections; its port."""
    import contextlib
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                server.accept()[0].close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join()
    server.close()


@pytest.fixture
def outside() -> Iterator[Path]:
    """A host folder on the root file system, not under /tmp (which a sandbox hides)."""
    import tempfile

    base = next(b for b in ("/var/tmp", str(Path.home()), os.getcwd()) if os.access(b, os.W_OK))
    path = Path(tempfile.mkdtemp(prefix="fitdock-outside-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)
