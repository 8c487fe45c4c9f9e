"""The variables every job gets, whatever the target: fitdock's own and the Azure ML /
SageMaker names that users' scripts already read."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from fitdock.runs.store import RunDir
from fitdock.specs.job import JobSpec


def gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Inherited variables that describe the *caller's* run or MPI rank: a job started from inside
# another job (a sweep driver, say) or from an MPI rank must not see them.
_INHERITED_PREFIXES = (
    "FITDOCK_",
    "AZUREML_",
    "SM_",
    "OMPI_",
    "PMI_",
    "PMIX_",
    "HYDRA_",
    "MPI_LOCAL",
)
_INHERITED_NAMES = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
}


def base_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without the variables of an enclosing run or rank
    (``FITDOCK_HOME`` stays: a nested run lands beside its parent)."""
    source = os.environ if environ is None else environ
    return {
        key: value
        for key, value in source.items()
        if key == "FITDOCK_HOME"
        or (not key.startswith(_INHERITED_PREFIXES) and key not in _INHERITED_NAMES)
    }


def job_variables(
    spec: JobSpec, run: RunDir, resume_dir: Path | None, hosts: list[str]
) -> dict[str, str]:
    env = {**spec.environment.environment_variables, **spec.variables}
    env.update(
        FITDOCK_RUN_ID=run.id,
        FITDOCK_RUN_DIR=str(run.path),
        FITDOCK_OUTPUT_DIR=str(run.outputs),
        FITDOCK_LOG_DIR=str(run.logs),
        FITDOCK_CHECKPOINT_DIR=str(run.checkpoints),
        AZUREML_RUN_ID=run.id,
        SM_MODEL_DIR=str(run.outputs / "model"),
        SM_OUTPUT_DATA_DIR=str(run.outputs / "data"),
        SM_HOSTS=json.dumps(hosts),
        SM_CURRENT_HOST=hosts[0],
        SM_NUM_GPUS=str(gpu_count() if spec.use_gpu else 0),
        SM_NUM_CPUS=str(os.cpu_count() or 1),
        PYTHONUNBUFFERED="1",
    )
    if resume_dir is not None:
        env["FITDOCK_RESUME_DIR"] = str(resume_dir)
    for name in spec.inputs:
        view = str(run.inputs / name)
        env[f"FITDOCK_INPUT_{name.upper()}"] = view
        env[f"SM_CHANNEL_{name.upper()}"] = view
    return env
