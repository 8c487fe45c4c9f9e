"""The uv plumbing the environment builders share: installed interpreters (never a
download), uv itself with the CA bundle for TLS-intercepting proxies, uv runs logged to
files, the packages a virtualenv holds, and installing the running fitdock into it."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from fitdock import process
from fitdock.environments.spec import Environment
from fitdock.errors import EnvironmentResolutionError, NotAvailableError

CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
_PYTHON_NAME = re.compile(r"^python3(\.[0-9]+)?$")
_PROBE = "import os,sys;print('%d.%d.%d' % sys.version_info[:3], os.path.realpath(sys.executable))"
_METADATA = "Metadata-Version: 2.1\nName: fitdock\n"
_WHEEL = "Wheel-Version: 1.0\nGenerator: fitdock\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


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
    """The uv of the ``uv`` package (a dependency of fitdock: its binary lies beside this
    interpreter, found whether or not that folder is on PATH), else the one on PATH."""
    with contextlib.suppress(ImportError, FileNotFoundError):
        from uv import find_uv_bin

        return str(find_uv_bin())
    found = shutil.which("uv")
    if found is None:
        raise NotAvailableError(
            "building local environments needs uv, a dependency of fitdock that is missing "
            f"here: `{sys.executable} -m pip install uv`, or put uv on PATH (or pass "
            "user_managed=True to run in this interpreter as it is)"
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
