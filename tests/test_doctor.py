"""``fitdock doctor`` with real probes on this machine, ``--require`` and ``--json``, and the
warning for ``use_gpu=True`` where no NVIDIA GPU is visible (none is, on CI machines)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import write_script

from fitdock import Estimator, RunStatus
from fitdock.cli import main
from fitdock.cli.doctor import probes
from fitdock.errors import GpuNotFoundWarning
from fitdock.execution import gpu
from fitdock.execution.doctor import ABOUT

NAMES = [
    "python", "fitdock", "interpreters", "uv", "disk", "mpi", "mpi4py", "horovod", "torch",
    "cuda", "nccl", "cupy", "chainer", "gpu", "docker", "docker-gpu", "slurm", "mlflow",
    "bubblewrap",
]  # fmt: skip
Report = dict[str, Any]
LOOKED_FOR = ("/proc/driver/nvidia/version", "nvidia-smi", "/dev/nvidia")


def no_gpu_here() -> bool:
    return not gpu.nvidia_gpus().visible


needs_no_gpu = pytest.mark.skipif(not no_gpu_here(), reason="this machine has an NVIDIA GPU")


@pytest.fixture(scope="module")
def report() -> Report:
    """One ``fitdock doctor --json`` run for the module's tests, with its wall time."""
    out = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out):
        code = main(["doctor", "--json"])
    found = json.loads(out.getvalue())
    found["code"], found["wall"] = code, time.monotonic() - start
    return found


def rows(report: Report) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in report["checks"]}


# ---------------------------------------------------------------------------------------------
# The rows: shape, speed, and what this machine has
# ---------------------------------------------------------------------------------------------
def test_json_shape_and_every_row_named(report: Report) -> None:
    assert report["code"] == 0
    assert set(report) == {"checks", "required", "unmet", "seconds", "code", "wall"}
    assert [row["name"] for row in report["checks"]] == NAMES
    assert [n for probe in probes() for n in probe.names] == NAMES == list(ABOUT)
    for row in report["checks"]:
        assert set(row) == {"name", "status", "found", "enables", "fix"}
        assert row["status"] in ("ok", "partial", "missing")
        assert row["found"] and row["enables"], row
        assert bool(row["fix"]) == (row["status"] != "ok") or row["name"] == "python", row
    assert report["required"] == [] and report["unmet"] == []


def test_quick(report: Report) -> None:
    """Side by side and bounded: seconds (importing torch is most of it), not minutes."""
    assert report["wall"] < 30, report["wall"]


def test_python_fitdock_uv_and_disk_are_here(report: Report) -> None:
    found = rows(report)
    for name in ("python", "fitdock", "interpreters", "uv", "disk"):
        assert found[name]["status"] == "ok", found[name]
    assert "GiB free" in found["disk"]["found"]
    assert found["uv"]["found"].startswith("uv ")


@pytest.mark.mpi
def test_mpi_found_and_the_launcher_mpi_would_use(report: Report) -> None:
    mpi = rows(report)["mpi"]
    assert mpi["status"] == "ok", mpi
    assert "Mpi() uses " in mpi["found"]
    assert any(flavor in mpi["found"] for flavor in ("Open MPI", "MPICH"))
    assert rows(report)["mpi4py"]["status"] == "ok"
    assert "loads " in rows(report)["mpi4py"]["found"]


@pytest.mark.docker
def test_docker_engine_found(report: Report) -> None:
    docker = rows(report)["docker"]
    assert docker["status"] == "ok", docker
    assert docker["found"].startswith("engine ")


def test_bubblewrap_found(report: Report) -> None:
    if shutil.which("bwrap") is None:  # the CI guard (conftest.py) fails this skip
        pytest.skip("bubblewrap is not installed (scripts/install-system.sh installs it)")
    assert rows(report)["bubblewrap"]["status"] == "ok", rows(report)["bubblewrap"]


@needs_no_gpu
def test_no_gpu_row_names_what_was_looked_for(report: Report) -> None:
    found = rows(report)
    assert found["gpu"]["status"] == "missing"
    for place in LOOKED_FOR:
        assert place in found["gpu"]["found"]
    assert found["cuda"]["status"] != "ok" and found["docker-gpu"]["status"] != "ok"


# ---------------------------------------------------------------------------------------------
# The table, --require
# ---------------------------------------------------------------------------------------------
def test_table_and_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["CHECK", "STATUS", "FOUND", "ENABLES"]
    assert out.splitlines()[1].startswith("python ")
    assert "checks in " in out
    if no_gpu_here():
        assert "To get what is missing:\n" in out
        assert "\n  gpu: an NVIDIA GPU and its driver\n" in out


def test_require_met_and_unmet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--require", "python,uv", "--require", "fitdock"]) == 0
    capsys.readouterr()
    if no_gpu_here():
        assert main(["doctor", "--json", "--require", "uv,gpu,cupy"]) == 1
        out = json.loads(capsys.readouterr().out)
        assert out["required"] == ["uv", "gpu", "cupy"]
        assert out["unmet"][0] == "gpu"
        assert main(["doctor", "--require", "gpu"]) == 1
        assert "required but not ok: gpu" in capsys.readouterr().err


def test_require_unknown_name_lists_the_known(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert main(["doctor", "--require", "docker,kubernetes"]) == 2
    err = capsys.readouterr().err
    assert "'kubernetes'" in err and "known: python, fitdock," in err and "bubblewrap" in err
    assert time.monotonic() - start < 2  # refused before any probe runs


# ---------------------------------------------------------------------------------------------
# use_gpu=True without a GPU
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_gpu_probe() -> Iterator[None]:
    gpu.forget()
    yield None
    gpu.forget()


@needs_no_gpu
def test_use_gpu_without_a_gpu_warns_once(tmp_path: Path, fresh_gpu_probe: object) -> None:
    src = write_script(tmp_path / "src", "print('on the CPU')\n")
    est = Estimator(src, entry_script="train.py", use_gpu=True, user_managed=True)
    with pytest.warns(GpuNotFoundWarning) as record:
        run = est.fit()
    assert run.status is RunStatus.COMPLETED
    assert len(record) == 1
    message = str(record[0].message)
    assert "use_gpu=True" in message and "runs on the CPU" in message
    for place in LOOKED_FOR:
        assert place in message
    assert Path(record[0].filename).name == Path(__file__).name  # points at the fit() call
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert est.fit().status is RunStatus.COMPLETED
    assert not [w for w in again if issubclass(w.category, GpuNotFoundWarning)]


def test_use_gpu_false_does_not_probe(tmp_path: Path, fresh_gpu_probe: object) -> None:
    src = write_script(tmp_path / "src", "print('cpu')\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Estimator(src, entry_script="train.py", user_managed=True).fit()
    assert gpu._gpus_once.cache_info().currsize == 0


def fake_smi(folder: Path, text: str, code: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{text}'\nexit {code}\n")
    smi.chmod(0o755)
    return folder


def test_a_gpu_that_nvidia_smi_lists_is_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fake_smi(tmp_path / "bin", "GPU 0: NVIDIA H200 (UUID: GPU-0a1b)")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    found = gpu.nvidia_gpus()
    assert found.visible
    assert found.listed == ("GPU 0: NVIDIA H200 (UUID: GPU-0a1b)",)
    assert found.describe().startswith("1: NVIDIA H200 (driver: ")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    hidden = gpu.nvidia_gpus()
    assert not hidden.visible
    assert "CUDA_VISIBLE_DEVICES='' hides them" in hidden.looked_for()


@needs_no_gpu
def test_a_failing_nvidia_smi_shows_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fake_smi(tmp_path / "bin", "NVIDIA-SMI has failed: no driver", code=9)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    found = gpu.nvidia_gpus()
    assert not found.visible
    assert f"nvidia-smi ({folder / 'nvidia-smi'} lists 0)" in found.looked_for()
