"""``ensure_venv``: real uv builds of small environments, reuse without installing,
concurrent builders, killed builders, interpreter choice, listing and pruning."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import wait_until

from fitdock.environments import uvtool as lockmod
from fitdock.environments.spec import Environment, PythonSection
from fitdock.environments.venv import (
    MARKER,
    ensure_venv,
    find_interpreter,
    list_cached,
    prune,
)
from fitdock.errors import EnvironmentResolutionError, NotAvailableError, SpecError

THIS_PYTHON = "{}.{}.{}".format(*sys.version_info[:3])
BUILD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from fitdock.environments.spec import Environment, PythonSection
    from fitdock.environments.venv import ensure_venv
    env = Environment(name="shared", python=PythonSection(pip_packages=sys.argv[1].split(",")))
    built = ensure_venv(env, log=Path(sys.argv[2]))
    print(json.dumps({"built": built.built, "path": str(built.path)}))
    """
)


def make_env(*packages: str, name: str = "small", version: str | None = None) -> Environment:
    return Environment(
        name=name, python=PythonSection(pip_packages=list(packages), python_version=version)
    )


def run_in(python: Path, code: str) -> str:
    """Run ``code`` with ``python`` outside the checkout (so it cannot import from there)."""
    done = subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=python.parent,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "envs").glob(".*.t*-*"))


# ---------------------------------------------------------------------------------------------
# Build, then reuse
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_build_then_reuse_without_installing(fitdock_home: Path, tmp_path: Path) -> None:
    env = make_env("numpy<2", "six")
    log = tmp_path / "launcher.log"
    first = ensure_venv(env, log=log)
    assert first.built and first.path.parent == fitdock_home / "envs"
    assert first.path.name == first.hash[:16]
    names = {spec.split("==")[0] for spec in first.packages}
    assert {"numpy", "six", "fitdock", "pydantic"} <= names
    assert any(spec.startswith("numpy==1.") for spec in first.packages)
    assert run_in(first.python, "from fitdock import Run; import numpy, six; print('ok')") == "ok"
    assert "uv pip install" in (first.path / "build.log").read_text()
    assert "uv pip install" in log.read_text()  # the caller's log gets uv's output too
    assert leftovers(fitdock_home) == []

    timings = []
    for _ in range(5):
        start = time.perf_counter()
        again = ensure_venv(env, log=log)
        timings.append(time.perf_counter() - start)
        assert not again.built
        assert (again.path, again.packages, again.hash) == (first.path, first.packages, first.hash)
    assert min(timings) < 0.1, f"the cache check took {min(timings) * 1000:.1f} ms"
    assert "reusing environment" in log.read_text()


def test_conda_packages_and_user_managed_are_refused() -> None:
    conda = Environment(python=PythonSection(conda_packages=["numpy=1.26"]))
    with pytest.raises(NotAvailableError, match=r"conda_packages .* no conda solver; run in Dock"):
        ensure_venv(conda)
    managed = Environment(python=PythonSection(user_managed_dependencies=True))
    with pytest.raises(SpecError, match="user-managed"):
        ensure_venv(managed)


# ---------------------------------------------------------------------------------------------
# Concurrency and interruption, with real processes
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_four_concurrent_processes_build_once(fitdock_home: Path, tmp_path: Path) -> None:
    logs = [tmp_path / f"builder{i}.log" for i in range(4)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_SCRIPT, "six", str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for log in logs
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out))
    assert sum(result["built"] for result in results) == 1
    assert len({result["path"] for result in results}) == 1
    env_dir = Path(results[0]["path"])
    assert (env_dir / "build.log").read_text().count("uv venv") == 1
    assert any("waiting for the process building" in log.read_text() for log in logs)
    assert leftovers(fitdock_home) == []


@pytest.mark.slow
def test_killed_build_never_looks_complete(fitdock_home: Path, tmp_path: Path) -> None:
    log = tmp_path / "killed.log"
    child = subprocess.Popen(
        [sys.executable, "-c", BUILD_SCRIPT, "numpy<2,six", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        installing = wait_until(lambda: log.is_file() and "uv pip install" in log.read_text(), 60)
        os.kill(child.pid, signal.SIGKILL)  # the builder only: its uv must not outlive it
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert installing, "the build never reached its install step"
        assert "built /" not in log.read_text(), "the build finished before it could be killed"
        assert wait_until(lambda: not group_alive(child.pid), 10), "uv outlived its builder"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)

    assert list_cached() == []
    assert [p for p in (fitdock_home / "envs").iterdir() if not p.name.startswith(".")] == []
    assert len(leftovers(fitdock_home)) == 1  # the dead build's temporary folder

    built = ensure_venv(make_env("numpy<2", "six", name="shared"))
    assert built.built
    assert leftovers(fitdock_home) == []  # cleaned by the next build
    assert run_in(built.python, "import numpy, six; print('ok')") == "ok"


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process of process group ``pgid`` exists."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


@pytest.mark.slow
def test_failed_build_leaves_no_env_and_keeps_its_log(fitdock_home: Path) -> None:
    env = make_env("fitdock-no-such-package-a8f3e1")
    with pytest.raises(EnvironmentResolutionError, match=r"uv pip install.* failed") as info:
        ensure_venv(env)
    assert "fitdock-no-such-package-a8f3e1" in str(info.value)
    assert list_cached() == [] and leftovers(fitdock_home) == []
    assert len(list((fitdock_home / "envs").glob(".*.failed.log"))) == 1


# ---------------------------------------------------------------------------------------------
# Interpreters
# ---------------------------------------------------------------------------------------------
def test_missing_python_version_lists_the_installed_ones(fitdock_home: Path) -> None:
    with pytest.raises(EnvironmentResolutionError) as info:
        ensure_venv(make_env("six", version="3.99"))
    message = str(info.value)
    assert "python_version='3.99' is not installed" in message
    assert THIS_PYTHON in message and "never downloads" in message
    assert not (fitdock_home / "envs").exists()


def test_find_interpreter_matches_versions() -> None:
    current = find_interpreter(None)
    assert run_in(current, "import sys; print(sys.version_info[:2])") == str(sys.version_info[:2])
    exact = find_interpreter(THIS_PYTHON)
    assert run_in(exact, "import platform; print(platform.python_version())") == THIS_PYTHON


def other_interpreter() -> tuple[str, str]:
    """(the version to ask for, its full version) of an installed CPython >= 3.10
    that is not this one: another X.Y where there is one, else the same X.Y at another patch
    level (Debian's /usr/bin/python3.11 beside pyenv's 3.11.7, as on CI), asked for exactly."""
    found = [
        i
        for i in lockmod.installed_interpreters()
        if i.version != THIS_PYTHON
        and tuple(int(p) for p in i.version.split(".")[:2]) >= (3, 10)  # fitdock's minimum
    ]
    minor = THIS_PYTHON.rsplit(".", 1)[0]
    for interpreter in found:
        if not interpreter.version.startswith(minor + "."):
            return interpreter.version.rsplit(".", 1)[0], interpreter.version
    assert found, (
        f"only this Python ({THIS_PYTHON}) is installed here; the test needs another one "
        "(any CPython >= 3.10 of another version, e.g. the system's python3)"
    )
    return found[0].version, found[0].version


@pytest.mark.slow
def test_python_version_picks_another_installed_interpreter() -> None:
    wanted, full = other_interpreter()
    built = ensure_venv(make_env("six", version=wanted))
    version = run_in(built.python, "import platform; print(platform.python_version())")
    assert version == wanted or version.startswith(wanted + "."), (wanted, full, version)
    assert version != THIS_PYTHON
    assert list_cached()[0].python_version == version


# ---------------------------------------------------------------------------------------------
# fitdock installed into the env when it is not a checkout
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_installed_fitdock_is_copied_into_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    package = Path(lockmod.__file__).resolve().parents[1]
    monkeypatch.setattr(
        lockmod.FitdockSource, "running", classmethod(lambda cls: cls(package, None))
    )
    built = ensure_venv(make_env("six"))
    assert any(spec.startswith("fitdock==") for spec in built.packages)
    code = "import fitdock; from fitdock import Run; print(fitdock.__file__)"
    assert run_in(built.python, code).startswith(str(built.path))


# ---------------------------------------------------------------------------------------------
# Options, listing, pruning
# ---------------------------------------------------------------------------------------------
def test_uv_options_and_ca_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = Environment(
        python=PythonSection(
            pip_extra_index_urls=["https://download.example/cpu"],
            build_constraints=["Setuptools < 82", "numpy<2"],
        )
    )
    options = lockmod.uv_options(env, tmp_path)
    assert options == [
        "--extra-index-url", "https://download.example/cpu",
        "--build-constraint", str(tmp_path / "build-constraints.txt"),
    ]  # fmt: skip
    assert (tmp_path / "build-constraints.txt").read_text() == "numpy<2\nsetuptools<82\n"

    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "UV_SYSTEM_CERTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CERT", "/corp/ca.pem")
    assert lockmod.uv_environ()["SSL_CERT_FILE"] == "/corp/ca.pem"
    monkeypatch.setenv("SSL_CERT_FILE", "/first/ca.pem")
    assert lockmod.uv_environ()["SSL_CERT_FILE"] == "/first/ca.pem"
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.delenv("PIP_CERT")
    system = next((p for p in lockmod.CA_BUNDLES if Path(p).is_file()), None)
    assert lockmod.uv_environ().get("SSL_CERT_FILE") == system
    assert lockmod.uv_environ()["UV_PYTHON_DOWNLOADS"] == "never"


@pytest.mark.slow
def test_list_cached_and_prune(fitdock_home: Path) -> None:
    one = ensure_venv(make_env("six", name="one"))
    two = ensure_venv(make_env("packaging", name="two"))
    cached = {c.name: c for c in list_cached()}
    assert set(cached) == {"one", "two"}
    assert cached["one"].hash == one.hash and cached["one"].path == one.path
    assert cached["one"].size > 1_000_000 and cached["one"].python_version == THIS_PYTHON
    assert cached["two"].created <= cached["two"].last_used

    stale = fitdock_home / "envs" / ".0123456789abcdef.tmp-dead"
    stale.mkdir()
    assert sorted(prune(keep_hashes={one.hash[:16]})) == sorted([two.path, stale])
    assert [c.name for c in list_cached()] == ["one"]

    assert prune(older_than_days=1) == []  # used just now
    old = time.time() - 3 * 86400
    os.utime(one.path / "last-used", (old, old))
    assert prune(older_than_days=1) == [one.path]
    assert list_cached() == [] and not (one.path / MARKER).exists()
