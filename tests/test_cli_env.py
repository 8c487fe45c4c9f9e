"""`fitdock env build|list --cached|prune|lock` and `fitdock images build|dockerfile`, run as
real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def fitdock(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FITDOCK_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "fitdock.cli", *args], capture_output=True, text=True, env=env,
        timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / "env.yml"
    path.write_text(
        yaml.safe_dump({"name": "six-env", "python": {"pip_packages": ["six==1.16.0"]}})
    )
    return path


@pytest.mark.slow
def test_env_build_list_cached_and_prune(env_file: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = fitdock("env", "build", str(env_file), home=home)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("built: ")
    second = fitdock("env", "build", str(env_file), home=home)
    assert second.stdout.startswith("cached: ")
    listing = fitdock("env", "list", "--cached", home=home)
    assert "six-env" in listing.stdout
    pruned = fitdock("env", "prune", home=home)
    assert "1 removed" in pruned.stdout
    assert "six-env" not in fitdock("env", "list", "--cached", home=home).stdout


def test_env_lock_pins_versions(env_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "six.lock.txt"
    done = fitdock("env", "lock", str(env_file), "-o", str(out), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "six==1.16.0" in out.read_text()


def test_env_show_of_a_file_and_a_bad_file(env_file: Path, tmp_path: Path) -> None:
    shown = fitdock("env", "show", str(env_file), home=tmp_path)
    assert shown.returncode == 0 and "six==1.16.0" in shown.stdout and "hash:" in shown.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text("python: {pip_packages: 3}\n")
    refused = fitdock("env", "show", str(bad), home=tmp_path)
    assert refused.returncode == 2 and "is not an Environment" in refused.stderr


def test_images_dockerfile_names_the_base_and_the_packages(tmp_path: Path) -> None:
    done = fitdock(
        "images",
        "dockerfile",
        "chainer-7.8.1-cpu",
        "--base",
        "local/debian:bookworm",
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "FROM local/debian:bookworm" in done.stdout
    assert "LABEL fitdock.env_hash=" in done.stdout


@pytest.mark.docker
def test_images_build_is_a_cache_hit_the_second_time(env_file: Path, tmp_path: Path) -> None:
    args = ("images", "build", str(env_file), "--base", "local/debian:bookworm")
    fitdock(*args, home=tmp_path)
    again = fitdock(*args, home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("cached: fitdock-env:") and "0 layers built" in again.stdout
