"""Resolving an environment: which interpreter, which exact packages, which uv commands.

``lock_pip`` pins pip packages (``uv pip compile``); ``venv.ensure_venv(env, lock=...)``
installs exactly such a lock. conda-lock, which needs a conda channel to really lock (on
users' machines), is fed by ``render_environment_yml``/``conda_lock_spec``; its result is
read by ``read_conda_lock``. Also the uv plumbing ``venv.py`` shares: installed interpreters
(never a download), the CA bundle for TLS-intercepting proxies, uv runs logged to files.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform as _platform
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.utils import canonicalize_name

from fitdock.environments.spec import Environment
from fitdock.errors import EnvironmentResolutionError, NotAvailableError, SpecError
from fitdock.launchers import process
from fitdock.runs.store import fitdock_home

__all__ = [
    "conda_lock_spec",
    "default_lock_path",
    "find_interpreter",
    "installed_interpreters",
    "lock_pip",
    "python_key",
    "read_conda_lock",
    "render_environment_yml",
]

CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
_PYTHON_NAME = re.compile(r"^python3(\.[0-9]+)?$")
_PROBE = "import os,sys;print('%d.%d.%d' % sys.version_info[:3], os.path.realpath(sys.executable))"
_METADATA = "Metadata-Version: 2.1\nName: fitdock\n"
_WHEEL = "Wheel-Version: 1.0\nGenerator: fitdock\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
LOCK_KEY = re.compile(r"^# fitdock-python-key: ([0-9a-f]{64})\s*$", re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------
def python_version_of(env: Environment) -> str:
    """The environment's ``python_version``, or this interpreter's X.Y when unset."""
    return env.python.python_version or "{}.{}".format(*sys.version_info[:2])


def python_key(env: Environment) -> str:
    """A sha256 of what a venv and a pip lock depend on: the python section, version set."""
    section = env.canonical()["python"]
    del section["user_managed_dependencies"], section["interpreter_path"]
    section["python_version"] = python_version_of(env)
    return sha256_json(section)


def default_lock_path(env: Environment, home: Path | None = None) -> Path:
    """Where ``ensure_venv`` looks for a lock of ``env`` when none is given."""
    return (home or fitdock_home()) / "locks" / f"{python_key(env)[:16]}.txt"


def sha256_json(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Interpreters
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interpreter:
    version: str  # "3.11.7"
    path: Path


def installed_interpreters() -> list[Interpreter]:
    """The CPython 3 interpreters on this machine, preferred first: this one's base, then
    PATH (pyenv shims skipped), pyenv's and uv's versions, /usr/local/bin and /usr/bin."""
    found: dict[Path, Interpreter] = {}
    for real in dict.fromkeys(os.path.realpath(path) for path in _candidates()):
        probed = _probe(Path(real)) if os.access(real, os.X_OK) else None
        if probed is not None:
            found.setdefault(probed.path, probed)
    return list(found.values())


def _probe(python: Path) -> Interpreter | None:
    code, out = process.capture([str(python), "-I", "-S", "-c", _PROBE], timeout=10)
    parts = out.split() if code == 0 else []
    return Interpreter(parts[0], Path(parts[1])) if len(parts) == 2 else None


def _candidates() -> Iterator[Path]:
    yield Path(sys.base_prefix) / "bin" / "python{}.{}".format(*sys.version_info[:2])
    home = Path.home()
    pyenv = Path(os.environ.get("PYENV_ROOT") or home / ".pyenv") / "versions"
    uv_pythons = Path(os.environ.get("UV_PYTHON_INSTALL_DIR") or home / ".local/share/uv/python")
    folders = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    folders = [f for f in folders if f.name != "shims"]  # pyenv/asdf shims: scripts, slow
    folders += sorted(pyenv.glob("*/bin")) + sorted(uv_pythons.glob("*/bin"))
    for folder in [*folders, Path("/usr/local/bin"), Path("/usr/bin")]:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        yield from (folder / name for name in names if _PYTHON_NAME.match(name))


def find_interpreter(version: str | None) -> Path:
    """An installed interpreter of ``version`` ("3.11" or "3.11.7"; None: this one's X.Y)."""
    wanted = version or "{}.{}".format(*sys.version_info[:2])
    found = installed_interpreters()
    for interpreter in found:
        if interpreter.version == wanted or interpreter.version.startswith(wanted + "."):
            return interpreter.path
    ordered = sorted(found, key=lambda i: tuple(int(p) for p in i.version.split(".")))
    listing = ", ".join(f"{i.version} ({i.path})" for i in ordered) or "none"
    raise EnvironmentResolutionError(
        f"python_version={wanted!r} is not installed on this machine (fitdock never downloads "
        f"interpreters); installed: {listing}. Choose one of those, or install it "
        f"(`pyenv install {wanted}`, or your system's python{'.'.join(wanted.split('.')[:2])})"
    )


def version_of(python: Path) -> str:
    probed = _probe(python)
    return probed.version if probed else "unknown"


# ---------------------------------------------------------------------------------------------
# uv
# ---------------------------------------------------------------------------------------------
def uv_binary() -> str:
    """The uv of the ``uv`` package (the ``venv`` extra), else the one on PATH."""
    with contextlib.suppress(ImportError, FileNotFoundError):
        from uv import find_uv_bin

        return str(find_uv_bin())
    found = shutil.which("uv")
    if found is None:
        raise NotAvailableError(
            "building local environments needs uv: pip install 'fitdock[venv]', or put uv on PATH"
        )
    return found


def ca_bundle(environ: Mapping[str, str] = os.environ) -> str | None:
    """The CA bundle for HTTPS: SSL_CERT_FILE, REQUESTS_CA_BUNDLE or PIP_CERT when set, else
    the system's (which holds a corporate proxy's CA once installed there)."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"):
        if environ.get(name):
            return environ[name]
    return next((path for path in CA_BUNDLES if os.path.isfile(path)), None)


def uv_environ() -> dict[str, str]:
    """This process's environment, for uv: no interpreter downloads, the CA bundle set."""
    environ = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    bundle = ca_bundle(environ)
    if bundle and not environ.get("UV_SYSTEM_CERTS") and not environ.get("UV_NATIVE_TLS"):
        environ["SSL_CERT_FILE"] = bundle
    return environ


def run_uv(args: Sequence[str], *, logs: Sequence[Path], cwd: Path) -> None:
    """Run ``uv *args`` (cwd ``cwd``, so no project's uv config applies), output to ``logs``."""
    argv = [uv_binary(), *args]
    note(logs, "$ " + shlex.join(argv))
    code = process.stream(argv, env=uv_environ(), logs=logs, cwd=cwd)
    if code != 0:
        tail = "\n".join(logs[0].read_text(errors="replace").splitlines()[-20:])
        raise EnvironmentResolutionError(
            f"`uv {' '.join(args[:2])}` failed with exit code {code}; the end of {logs[0]}:\n{tail}"
        )


def installed_packages(python: Path) -> list[str]:
    """``name==version`` of each distribution in the virtualenv of ``python``, read from its
    ``*.dist-info/METADATA`` files (no subprocess: this runs on every build)."""
    found = set()
    venv = python.parent.parent
    for metadata in venv.glob("lib/python*/site-packages/*.dist-info/METADATA"):
        fields: dict[str, str] = {}
        with metadata.open(errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break  # the headers end at the first blank line
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
        if "Name" in fields and "Version" in fields:
            found.add(f"{canonicalize_name(fields['Name'])}=={fields['Version']}")
    return sorted(found)


def note(logs: Sequence[Path], line: str) -> None:
    """Append ``line`` to each log."""
    for path in logs:
        with open(path, "a") as handle:
            handle.write(line + "\n")


def uv_options(env: Environment, work: Path) -> list[str]:
    """Index and build-constraint options (the constraints file is written into ``work``)."""
    options: list[str] = []
    for url in env.python.pip_extra_index_urls:
        options += ["--extra-index-url", url]
    constraints = env.canonical()["python"].get("build_constraints", [])
    if constraints:
        (work / "build-constraints.txt").write_text("\n".join(constraints) + "\n")
        options += ["--build-constraint", str(work / "build-constraints.txt")]
    return options


# ---------------------------------------------------------------------------------------------
# fitdock itself, inside built environments
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitdockSource:
    """Where the running fitdock comes from, to install the same one into built envs: a
    source checkout (installed editable) or an installed package (copied)."""

    package: Path
    checkout: Path | None

    @classmethod
    def running(cls) -> FitdockSource:
        import fitdock

        package = Path(fitdock.__file__).resolve().parent
        root = package.parent
        project = (root / "setup.cfg").is_file() or (root / "pyproject.toml").is_file()
        return cls(package, root if project else None)

    @property
    def identity(self) -> str:
        from fitdock import __version__

        return f"editable:{self.checkout}" if self.checkout else f"{__version__}:{self.package}"

    def install_args(self) -> list[str]:
        """What ``uv pip install`` needs for fitdock and its dependencies."""
        return ["-e", str(self.checkout)] if self.checkout else self.requirements()

    def requirements(self) -> list[str]:
        """fitdock's own runtime requirements, from its installed metadata."""
        from importlib import metadata

        try:
            requires = metadata.requires("fitdock") or []
        except metadata.PackageNotFoundError:
            return []
        return [req for req in requires if "extra ==" not in req]

    def copy_into(self, python: Path) -> None:
        """Copy the installed package into the venv of ``python``, with minimal metadata."""
        from fitdock import __version__

        code, out = process.capture(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
        )
        if code != 0:
            raise EnvironmentResolutionError(f"cannot find site-packages of {python}: {out}")
        site = Path(out.strip())
        shutil.copytree(self.package, site / "fitdock", ignore=shutil.ignore_patterns("__py*"))
        info = site / f"fitdock-{__version__}.dist-info"
        info.mkdir()
        requires = "".join(f"Requires-Dist: {req}\n" for req in self.requirements())
        (info / "METADATA").write_text(f"{_METADATA}Version: {__version__}\n{requires}")
        (info / "WHEEL").write_text(_WHEEL)
        (info / "INSTALLER").write_text("fitdock\n")
        (info / "RECORD").write_text("")


# ---------------------------------------------------------------------------------------------
# pip locks
# ---------------------------------------------------------------------------------------------
def lock_pip(env: Environment, out: Path) -> Path:
    """Pin the pip packages of ``env`` (and fitdock's own requirements) with
    ``uv pip compile`` for its Python version; write them to ``out``; return ``out``."""
    if env.python.conda_packages:
        raise NotAvailableError(
            "lock_pip pins pip packages only; an environment with conda packages is locked "
            "with conda-lock (render_environment_yml)"
        )
    source = FitdockSource.running()
    packages = env.canonical()["python"]["pip_packages"]
    fitdock_reqs = [f"-e {source.checkout}"] if source.checkout else source.requirements()
    with tempfile.TemporaryDirectory(prefix="fitdock-lock-") as tmp:
        work = Path(tmp)
        (work / "requirements.in").write_text("\n".join([*packages, *fitdock_reqs]) + "\n")
        args = ["pip", "compile", "requirements.in", "-o", "requirements.txt", "--no-header",
                "--color", "never", "--python-version", python_version_of(env),
                *uv_options(env, work)]  # fmt: skip
        run_uv(args, logs=[work / "compile.log"], cwd=work)
        body = _without_editables((work / "requirements.txt").read_text())
    header = (
        f"# Pinned by fitdock with `uv pip compile` for environment {env.name!r}, "
        f"Python {python_version_of(env)}.\n"
        f"# environment hash: {env.hash()}\n"
        f"# fitdock-python-key: {python_key(env)}\n"
        "# Install: fitdock.environments.venv.ensure_venv(env, lock=<this file>)\n"
    )
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.tmp")
    partial.write_text(header + body)
    os.replace(partial, out)
    return out


def _without_editables(text: str) -> str:
    """Drop ``-e <path>`` lines (fitdock's checkout: machine-specific) and their comments."""
    return re.sub(r"^-e .*\n(?:[ \t]+#.*\n)*", "", text, flags=re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# conda
# ---------------------------------------------------------------------------------------------
def render_environment_yml(env: Environment) -> str:
    """A conda environment file: channels (conda-forge when none), python, the conda
    packages, then pip's. Extra index URLs become conda-lock's ``pip-repositories``."""
    py = env.canonical()["python"]
    dependencies: list[Any] = [f"python={python_version_of(env)}", *py["conda_packages"]]
    if py["pip_packages"]:
        has_pip = any(re.match(r"^pip([=<>!~ ]|$)", spec) for spec in py["conda_packages"])
        dependencies += [*([] if has_pip else ["pip"]), {"pip": py["pip_packages"]}]
    document: dict[str, Any] = {
        "name": env.name,
        "channels": py["channels"] or ["conda-forge"],
        "dependencies": dependencies,
    }
    if py["pip_extra_index_urls"]:
        document["pip-repositories"] = py["pip_extra_index_urls"]
    if env.environment_variables:
        document["variables"] = dict(sorted(env.environment_variables.items()))
    header = f"# fitdock environment {env.name!r}, hash {env.hash()}\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def conda_lock_spec(
    env: Environment, workdir: Path, *, platforms: Sequence[str] = ("linux-64",)
) -> str:
    """conda-lock's lock specification (JSON, ``render-lock-spec --kind raw``) of ``env``,
    made offline: ``workdir`` receives environment.yml and an empty PyPI-to-conda lookup."""
    if importlib.util.find_spec("conda_lock") is None:
        raise NotAvailableError("conda-lock is not installed: pip install 'fitdock[lock]'")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "environment.yml").write_text(render_environment_yml(env))
    (workdir / "pypi-to-conda.json").write_text("{}\n")
    argv = [sys.executable, "-W", "ignore::UserWarning", "-m", "conda_lock", "render-lock-spec",
            "--kind", "raw", "--stdout", "--log-level", "ERROR", "-f", "environment.yml",
            "--pypi_to_conda_lookup_file", "pypi-to-conda.json"]  # fmt: skip
    argv += [arg for name in platforms for arg in ("--platform", name)]
    code, out = process.capture(argv, timeout=120, cwd=str(workdir))
    try:
        json.loads(out)
    except ValueError:
        code = code or 1
    if code != 0:
        raise EnvironmentResolutionError(f"conda-lock render-lock-spec failed:\n{out.strip()}")
    return out


def conda_platform() -> str:
    """This machine's conda platform name, e.g. ``linux-64``, ``osx-arm64``."""
    system = {"Linux": "linux", "Darwin": "osx", "Windows": "win"}.get(_platform.system(), "")
    machine = _platform.machine().lower().replace("x86_64", "64").replace("amd64", "64")
    return f"{system}-{'aarch64' if system == 'linux' and machine == 'arm64' else machine}"


def read_conda_lock(path: Path, platform: str | None = None) -> list[str]:
    """The pins of a conda-lock file (``conda-lock.yml``, version 1) for ``platform`` (this
    machine's by default): ``name=version=build`` for conda, ``name==version`` for pip."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read conda-lock file {path}: {exc}", field="lock") from exc
    if not isinstance(data, dict) or data.get("version") != 1:
        raise SpecError(f"{path} is not a conda-lock file (version: 1)", field="lock")
    packages = data.get("package") or []
    platform = platform or conda_platform()
    pins = {_pin(item) for item in packages if item.get("platform") == platform}
    if not pins:
        covered = sorted({str(item.get("platform")) for item in packages}) or ["none"]
        raise EnvironmentResolutionError(
            f"{path} has no packages for {platform}; it covers: {', '.join(covered)}"
        )
    return sorted(pins)


def _pin(item: dict[str, Any]) -> str:
    if item.get("manager") == "pip":
        return f"{item['name']}=={item['version']}"
    build = item.get("build")
    return f"{item['name']}={item['version']}" + (f"={build}" if build else "")
