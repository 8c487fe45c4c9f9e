"""Installing fitdock as a new user does: ``fitdock install``'s plan (pure), and, slow and
from PyPI, a fresh virtualenv where ``pip install fitdock`` (this checkout) is followed by a
default ``Estimator(...).fit()`` (uv came with fitdock) and by ``fitdock install chainer``
with an empty pip cache (Chainer 7.8.1's sdist built against setuptools < 82)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import write_script

from fitdock.cli import main
from fitdock.cli.install import extras, plan
from fitdock.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
CHAINER = ["chainer==7.8.1", "numpy<2,>=1.24", "setuptools<82,>=77.0.3", "mpi4py>=4", "mpich>=4"]


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------
def known() -> dict[str, list[str]]:
    return {"chainer": CHAINER, "mpi": ["mpi4py>=4", "mpich>=4"], "plain": ["chainer==7.8.1"]}


def test_chainer_is_built_against_the_pins_installed_first() -> None:
    pip = ["/py", "-m", "pip", "install"]
    rest = CHAINER[1:]
    assert plan(["chainer"], "/py", known()).commands == [
        [*pip, *rest],
        [*pip, "--no-build-isolation", "chainer==7.8.1", *rest],
    ]


def test_build_pins_added_when_the_extra_lacks_them() -> None:
    pip = ["/py", "-m", "pip", "install"]
    assert plan(["plain", "mpi"], "/py", known()).commands == [
        [*pip, "mpi4py>=4", "mpich>=4", "setuptools>=77.0.3,<82"],
        [*pip, "--no-build-isolation", "chainer==7.8.1", "mpi4py>=4", "mpich>=4",
         "setuptools>=77.0.3,<82"],
    ]  # fmt: skip


def test_an_extra_without_sdists_is_one_plain_pip_install() -> None:
    commands = plan(["mpi"], "/py", known()).commands
    assert commands == [["/py", "-m", "pip", "install", "mpi4py>=4", "mpich>=4"]]


def test_unknown_extra_lists_the_known() -> None:
    with pytest.raises(SpecError, match=r"'torchx': not an extra of fitdock; known: chainer, mpi"):
        plan(["torchx"], "/py", known())


def test_extras_come_from_fitdock_metadata() -> None:
    found = extras()
    assert "chainer==7.8.1" in found["chainer"]
    assert any(req.startswith("setuptools") and "<82" in req for req in found["chainer"])
    assert "mpi" in found and "docker" in found


def test_dry_run_prints_the_pip_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install", "chainer", "--dry-run", "--python", "/opt/py/bin/python"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert shlex.split(lines[0])[:4] == ["/opt/py/bin/python", "-m", "pip", "install"]
    assert shlex.split(lines[1])[4:6] == ["--no-build-isolation", "chainer==7.8.1"]
    assert main(["install", "nonsense", "--dry-run"]) == 2
    assert "known: " in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A fresh virtualenv, PyPI, an empty pip cache
# ---------------------------------------------------------------------------------------------
def clean_environ(home: Path) -> dict[str, str]:
    """No virtualenv on PATH (uv must be found beside the fresh interpreter), no pip cache."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FITDOCK_", "VIRTUAL_ENV"))}
    environ.update(
        PATH="/usr/local/bin:/usr/bin:/bin", FITDOCK_HOME=str(home), PIP_NO_CACHE_DIR="1"
    )
    return environ


def run(argv: list[str], environ: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        argv, env=environ, capture_output=True, text=True, timeout=timeout, check=False
    )
    said = f"{shlex.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, said
    return done.stdout


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A venv of the base interpreter with ``pip install <this checkout>`` and nothing else
    (the checkout's files copied, so the build leaves nothing in it)."""
    tmp = tmp_path_factory.mktemp("fresh")
    source = tmp / "fitdock-src"
    source.mkdir()
    shutil.copytree(ROOT / "fitdock", source / "fitdock", ignore=shutil.ignore_patterns("__py*"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    base = Path(sys.base_prefix) / "bin" / "python{}.{}".format(*sys.version_info[:2])
    venv, environ = tmp / "venv", clean_environ(tmp / "fitdock-home")
    start = time.monotonic()
    run([str(base), "-m", "venv", str(venv)], environ, 120)
    run([str(venv / "bin" / "pip"), "install", "--quiet", str(source)], environ, 600)
    print(f"pip install fitdock into a fresh venv: {time.monotonic() - start:.1f} s")
    yield venv, environ


FIT = """
import sys
from fitdock import Estimator
run = Estimator(sys.argv[1], entry_script="train.py").fit()
print("status:", run.status.value)
print("metrics:", run.get_metrics())
"""

TRAIN = """
import sys
from fitdock import Run
Run.get_context().log("loss", 0.5)
print("job interpreter:", sys.executable)
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_default_fit_after_pip_install(fresh: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, environ = fresh
    assert (venv / "bin" / "uv").is_file()  # pip put uv beside the interpreter
    src = write_script(tmp_path / "src", TRAIN)
    script = tmp_path / "fit.py"
    script.write_text(FIT)
    start = time.monotonic()
    out = run([str(venv / "bin" / "python"), str(script), str(src)], environ, 600)
    print(f"default Estimator(...).fit() in the fresh venv: {time.monotonic() - start:.1f} s")
    assert "status: Completed" in out, out
    assert "'loss': 0.5" in out or "'loss': [0.5]" in out, out
    home = Path(environ["FITDOCK_HOME"])
    logs = [p.read_text() for p in (home / "envs").glob("*/build.log")]
    assert logs and f"$ {venv / 'bin' / 'uv'} venv" in logs[0]  # the uv that pip installed
    job = [p.read_text() for p in (home / "runs").glob("*/logs/*") if p.is_file()]
    assert any(f"job interpreter: {home / 'envs'}" in text for text in job), job


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fitdock_install_chainer_from_an_empty_cache(fresh: tuple[Path, dict[str, str]]) -> None:
    venv, environ = fresh
    plain = [str(venv / "bin" / "pip"), "install", "chainer==7.8.1"]  # what fails, and why
    done = subprocess.run(plain, env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "pkg_resources" in done.stdout + done.stderr, done
    start = time.monotonic()
    out = run([str(venv / "bin" / "fitdock"), "install", "chainer"], environ, 840)
    print(f"fitdock install chainer, empty pip cache: {time.monotonic() - start:.1f} s")
    assert "--no-build-isolation chainer==7.8.1" in out
    log = Path(out.rsplit("pip's output: ", 1)[1].strip()).read_text()
    assert "chainer-7.8.1.tar.gz" in log  # the sdist, downloaded and built here
    check = (
        "import chainer, chainermn, mpi4py, numpy; print(chainer.__version__, numpy.__version__)"
    )
    versions = run(
        [str(venv / "bin" / "python"), "-c", check],
        {**environ, "SETUPTOOLS_USE_DISTUTILS": "stdlib"},
        120,
    ).split()
    assert versions[0] == "7.8.1"
    assert int(versions[1].split(".")[0]) < 2


# ---------------------------------------------------------------------------------------------
# Shell completion (argcomplete, a dependency of fitdock)
# ---------------------------------------------------------------------------------------------
def complete(line: str, tmp_path: Path) -> list[str]:
    """What ``fitdock`` answers the shell for ``line`` (the cursor at its end)."""
    out = tmp_path / "completions.txt"
    environ = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
    }
    done = subprocess.run(
        [sys.executable, "-m", "fitdock.cli"], env=environ, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return out.read_text().replace("\v", " ").split()


def test_completion_of_commands_and_options(tmp_path: Path) -> None:
    commands = complete("fitdock ", tmp_path)
    assert {"run", "runs", "env", "doctor", "install"} <= set(commands)
    assert complete("fitdock doc", tmp_path) == ["doctor"]
    assert complete("fitdock doctor --re", tmp_path) == ["--require"]


def test_argcomplete_is_not_imported_unless_the_shell_asks() -> None:
    code = (
        "import sys; from fitdock.cli import main; main(['install', 'mpi', '--dry-run']); "
        "print('argcomplete' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines()[-1] == "False", done.stdout + done.stderr
