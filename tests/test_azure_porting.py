"""Azure ML SDK v1's submitting surface: ``ScriptRunConfig`` + ``Experiment.submit``,
``Environment.get`` / ``from_pip_requirements`` / ``from_conda_specification``,
``CondaDependencies``, ``MpiConfiguration``, ``PyTorchConfiguration``,
``DockerConfiguration``. The runs are real processes (two MPI ranks for the MPI port)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import write_script

import fitdock
import fitdock.environments.spec
from fitdock import (
    CondaDependencies,
    DockerConfiguration,
    Environment,
    Experiment,
    MpiConfiguration,
    PyTorchConfiguration,
    RunConfiguration,
    RunStatus,
    ScriptRunConfig,
)
from fitdock.errors import EnvironmentResolutionError, NotAvailableError, SpecError
from fitdock.runs.store import RunDir

ARGS = """
import json, os, sys
os.makedirs("outputs", exist_ok=True)
with open(os.path.join("outputs", "args.json"), "w") as f:
    json.dump(sys.argv[1:], f)
"""

# A training script as Azure's samples write it: mpi4py, ./outputs.
MPI_TRAIN = """
import argparse, json, os
from mpi4py import MPI
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int)
args = parser.parse_args()
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank() + 1)
os.makedirs("outputs", exist_ok=True)
with open(f"outputs/rank{comm.Get_rank()}.json", "w") as f:
    json.dump({"size": comm.Get_size(), "total": total, "epochs": args.epochs}, f)
"""

# The submitting code of an Azure ML SDK v1 sample, as it was.
AZURE_SUBMIT = """
from azureml.core import Experiment, ScriptRunConfig, Workspace
from azureml.core.runconfig import MpiConfiguration

ws = Workspace.from_config()
experiment = Experiment(workspace=ws, name="mpi-port")
distr_config = MpiConfiguration(process_count_per_node=2, node_count=1)
src = ScriptRunConfig(
    source_directory=SOURCE,
    script="train.py",
    arguments=["--epochs", 3],
    distributed_job_config=distr_config,
)
run = experiment.submit(src, tags={"framework": "mpi4py"})
run.wait_for_completion(show_output=False)
"""


def port(azure: str) -> str:
    """What a user changes: the imports, and the workspace (fitdock has none)."""
    lines = []
    for line in azure.splitlines():
        if line.startswith("from azureml."):
            names = [name for name in line.split(" import ", 1)[1].split(", ")]
            line = "from fitdock import " + ", ".join(n for n in names if n != "Workspace")
        elif line == "ws = Workspace.from_config()":
            line = "ws = None"
        lines.append(line)
    return "\n".join(lines)


def test_porting_changes_only_the_imports_and_the_workspace() -> None:
    ported = port(AZURE_SUBMIT)
    changed = [
        (old, new)
        for old, new in zip(AZURE_SUBMIT.splitlines(), ported.splitlines(), strict=True)
        if old != new
    ]
    assert [new for _, new in changed] == [
        "from fitdock import Experiment, ScriptRunConfig",
        "from fitdock import MpiConfiguration",
        "ws = None",
    ]


@pytest.mark.mpi
def test_an_azure_mpi_submission_runs_ported_by_its_imports(tmp_path: Path) -> None:
    source = write_script(tmp_path / "src", MPI_TRAIN)
    namespace: dict[str, Any] = {"SOURCE": str(source)}
    exec(compile(port(AZURE_SUBMIT), "submit.py", "exec"), namespace)
    run = namespace["run"]
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.id.startswith("mpi-port_")
    for rank in (0, 1):
        seen = json.loads((run.output_dir / f"rank{rank}.json").read_text())
        assert seen == {"size": 2, "total": 3, "epochs": 3}
    record = run.record
    assert record["world_size"] == 2 and record["tags"] == {"framework": "mpi4py"}
    assert record["spec"]["distribution"]["kind"] == "mpi"


def test_a_plain_script_with_tags(tmp_path: Path) -> None:
    source = write_script(tmp_path / "src", ARGS)
    src = ScriptRunConfig(source_directory=source, script="train.py", arguments=["--lr", 0.5, True])
    run = Experiment("tagged").submit(src, tags={"team": "vision", "epochs": 3, "note": None})
    run.wait_for_completion(show_output=False, raise_on_error=False)
    assert run.status is RunStatus.COMPLETED, run.error
    assert json.loads((run.output_dir / "args.json").read_text()) == ["--lr", "0.5", "True"]
    assert run.id.startswith("tagged_")
    tags = {"team": "vision", "epochs": "3", "note": ""}
    assert RunDir.find(run.id).read().tags == tags
    assert run.record["tags"] == tags


def test_a_command_runs_as_its_script_and_arguments(tmp_path: Path) -> None:
    source = write_script(tmp_path / "src", ARGS)
    src = ScriptRunConfig(source, command=["python", "train.py", "--x", 1])
    run = Experiment(None, "commanded").submit(src)
    run.wait_for_completion(show_output=False, raise_on_error=False)
    assert run.status is RunStatus.COMPLETED, run.error
    assert json.loads((run.output_dir / "args.json").read_text()) == ["--x", "1"]
    as_text = ScriptRunConfig(source, command="python3 train.py --x '1'").estimator().job_spec
    assert (as_text.entry_script, as_text.arguments) == ("train.py", ("--x", "1"))


@pytest.mark.parametrize(
    "command",
    [
        "python train.py && echo done",
        ["python", "train.py", ";", "rm", "x"],
        "python train.py --out $HOME",
        ["bash", "run.sh"],
        "python -m train",
        "python",
    ],
)
def test_a_command_other_than_python_script_is_refused(tmp_path: Path, command: Any) -> None:
    source = write_script(tmp_path / "src", ARGS)
    with pytest.raises(SpecError, match=re.escape("command=['python', 'train.py'")) as caught:
        ScriptRunConfig(source, command=command)
    assert caught.value.field == "command"


def test_run_config_distribution_and_docker_map_to_the_job(tmp_path: Path) -> None:
    source = write_script(tmp_path / "src", ARGS)
    settings = RunConfiguration(environment_variables={"A": 1}, max_run_duration_seconds=60)
    src = ScriptRunConfig(
        source, "train.py", ["--a"], settings,
        distributed_job_config=PyTorchConfiguration("Gloo", 2),
    )  # fmt: skip
    spec = src.estimator("exp").job_spec
    assert spec.name == "exp" and spec.arguments == ("--a",)
    assert spec.distribution == PyTorchConfiguration(communication_backend="gloo", process_count=2)
    assert spec.process_count_per_node == 2 and spec.max_run_duration_seconds == 60
    assert spec.environment.environment_variables == {"A": "1"}
    assert spec.environment.python.user_managed_dependencies  # no environment: this Python
    mpi = ScriptRunConfig(source, "train.py", distributed_job_config=MpiConfiguration(3))
    spec = mpi.estimator().job_spec
    assert (spec.distribution.kind, spec.process_count_per_node) == ("mpi", 3)  # type: ignore[union-attr]
    docker = DockerConfiguration(use_docker=True, shm_size="2g", arguments=["--ulimit", "x=1"])
    env = Environment.get(name="pytorch-2.13.0-cpu")
    spec = (
        ScriptRunConfig(source, "train.py", environment=env, docker_runtime_config=docker)
        .estimator()
        .job_spec
    )
    assert spec.use_docker and spec.environment.name == "pytorch-2.13.0-cpu"
    assert spec.environment.docker.shm_size == "2g"
    assert spec.environment.docker.arguments == ["--ulimit", "x=1"]
    in_docker = ScriptRunConfig(source, "train.py", docker_runtime_config=docker).estimator()
    assert in_docker.environment.name == "fitdock-base-cpu"  # not this machine's Python
    assert not in_docker.environment.python.user_managed_dependencies


def test_two_mpi_nodes_on_the_local_target_are_refused_before_anything_runs(
    tmp_path: Path, fitdock_home: Path
) -> None:
    source = write_script(tmp_path / "src", ARGS)
    src = ScriptRunConfig(source, "train.py", distributed_job_config=MpiConfiguration(2, 2))
    with pytest.raises(SpecError, match="node_count=2") as caught:
        Experiment("nodes").submit(src)
    assert caught.value.field == "node_count"
    assert not (fitdock_home / "runs").exists() or not any((fitdock_home / "runs").iterdir())


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"script": "missing.py"}, "script", "ScriptRunConfig: script 'missing.py'"),
        ({}, "script", "name the script"),
        ({"script": "train.py", "arguments": "--lr 1"}, "arguments", "must be a list"),
        ({"script": "train.py", "arguments": [{"a": 1}]}, "arguments", "single value"),
        ({"script": "train.py", "command": "python train.py"}, "command", "not both"),
        ({"script": "train.py", "environment": "AzureML-Minimal"}, "environment", "Environment"),
        ({"script": "train.py", "run_config": {"node_count": 1}}, "run_config", "RunConfiguration"),
        (
            {"script": "train.py", "distributed_job_config": "mpi"},
            "distributed_job_config",
            "str is not",
        ),
        (
            {"script": "train.py", "docker_runtime_config": True},
            "docker_runtime_config",
            "DockerConfig",
        ),
        (
            {"script": "train.py", "max_run_duration_seconds": 0},
            "max_run_duration_seconds",
            "greater than 0",
        ),
    ],
)
def test_bad_script_run_config_arguments_name_the_field(
    tmp_path: Path, kwargs: dict[str, Any], field: str, words: str
) -> None:
    source = write_script(tmp_path / "src", ARGS)
    with pytest.raises(SpecError, match=re.escape(words)) as caught:
        ScriptRunConfig(source, **kwargs)
    assert caught.value.field == field
    assert str(caught.value).startswith("ScriptRunConfig: ")


def test_bad_settings_name_the_field(tmp_path: Path) -> None:
    cases = [
        (lambda: MpiConfiguration(process_count_per_node=0), "process_count_per_node"),
        (lambda: MpiConfiguration(node_count=1.5), "node_count"),  # type: ignore[arg-type]
        (lambda: DockerConfiguration(use_docker="yes"), "use_docker"),  # type: ignore[arg-type]
        (lambda: DockerConfiguration(shm_size="2 GB"), "shm_size"),
        (lambda: DockerConfiguration(arguments="--ipc=host"), "arguments"),
        (lambda: Experiment("two words"), "name"),
        (lambda: Experiment(), "name"),
    ]
    for make, field in cases:
        with pytest.raises(SpecError) as caught:
            make()
        assert caught.value.field == field, field
    mpi = MpiConfiguration()
    mpi.node_count = 2  # Azure's samples set them afterwards too
    with pytest.raises(SpecError, match="node_count"):
        mpi.node_count = 0
    with pytest.raises(AttributeError, match="process_count_per_node, node_count"):
        mpi.nodes = 2  # type: ignore[attr-defined]
    source = write_script(tmp_path / "src", ARGS)
    src = ScriptRunConfig(source, "train.py")
    for bad, field in [
        ({"tags": ["a"]}, "tags"),
        ({"pipeline_parameters": {"a": 1}}, "pipeline_parameters"),
    ]:
        with pytest.raises(SpecError) as caught:
            Experiment("e").submit(src, **bad)
        assert caught.value.field == field
    with pytest.raises(SpecError, match="takes a Pipeline, a ScriptRunConfig") as caught:
        Experiment("e").submit(object())  # type: ignore[arg-type]
    assert caught.value.field == "config"


# ------------------------------------------------------------------------------ Environment
def test_environment_get_by_curated_and_historic_azure_names() -> None:
    env = Environment.get(name="pytorch-2.13.0-cpu")
    assert env.name == "pytorch-2.13.0-cpu" and "torch==2.13.0" in env.python.pip_packages
    assert Environment.get(None, "PyTorch-2.13.0-CPU") == env  # Azure's (workspace, name)
    with pytest.warns(FutureWarning, match="no longer builds; using chainer-7.8.1-gpu"):
        chainer = Environment.get(name="AzureML-Chainer-5.1.0-GPU")
    assert chainer.name == "chainer-7.8.1-gpu" and chainer.docker.gpu_support
    with pytest.warns(FutureWarning, match="pytorch-2.13.0-cpu"):
        assert Environment.get(name="AzureML-PyTorch-1.6-CPU").name == "pytorch-2.13.0-cpu"
    with pytest.warns(FutureWarning, match="no pytorch 1.10; using pytorch-2.13.0-gpu"):
        later = Environment.get(name="AzureML-pytorch-1.10-ubuntu18.04-py38-cuda11-gpu")
    assert later.name == "pytorch-2.13.0-gpu"
    assert Environment.get(name="AzureML-Minimal").name == "fitdock-base-cpu"
    assert fitdock.Environment is fitdock.environments.spec.Environment  # one class


def test_environment_get_of_an_unknown_name_lists_the_names() -> None:
    with pytest.raises(EnvironmentResolutionError) as caught:
        Environment.get(name="AzureML-TensorFlow-2.3-GPU")
    message = str(caught.value)
    assert "'AzureML-TensorFlow-2.3-GPU'" in message
    for name in ("pytorch-2.13.0-cpu", "chainer-7.8.1-gpu", "AzureML-PyTorch-<version>"):
        assert name in message
    with pytest.raises(SpecError) as missing:
        Environment.get()
    assert missing.value.field == "name"


def test_from_pip_requirements_reads_the_file_and_its_includes(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("numpy>=1.24\n")
    (tmp_path / "requirements.txt").write_text("-r base.txt\nrequests==2.32.3  # pinned\n")
    env = Environment.from_pip_requirements("mine", tmp_path / "requirements.txt")
    assert env.name == "mine"
    assert env.python.pip_packages == ["numpy>=1.24", "requests==2.32.3"]
    assert env.python.conda_packages == [] and env.docker.base_image  # fitdock's base image
    (tmp_path / "bad.txt").write_text("--index-url https://example.invalid\n")
    with pytest.raises(SpecError) as caught:
        Environment.from_pip_requirements("bad", tmp_path / "bad.txt")
    assert caught.value.field == "file_path"


CONDA_YML = """
name: project_environment
channels: [conda-forge]
dependencies:
  - python=3.10
  - pip
  - numpy=1.26
  - pip:
    - requests
"""


def test_from_conda_specification_round_trips_and_is_refused_by_the_local_build(
    tmp_path: Path,
) -> None:
    (tmp_path / "environment.yml").write_text(textwrap.dedent(CONDA_YML))
    env = Environment.from_conda_specification("conda-env", tmp_path / "environment.yml")
    python = env.python
    assert (python.python_version, python.channels) == ("3.10", ["conda-forge"])
    assert python.conda_packages == ["numpy=1.26"]  # the bare "pip" is dropped
    assert python.pip_packages == ["requests"]
    saved = env.python.conda_dependencies.save(tmp_path / "again.yml")
    again = Environment.from_conda_specification("conda-env", saved)
    assert again.hash() == env.hash()
    source = write_script(tmp_path / "src", ARGS)
    src = ScriptRunConfig(source, "train.py", environment=env)
    with pytest.raises(
        NotAvailableError, match=r"conda_packages \['numpy=1.26'\].*no conda solver"
    ):
        Experiment("conda").submit(src)
    pip_only = tmp_path / "pip-only.yml"
    pip_only.write_text("dependencies:\n  - python=3.11\n  - pip\n  - pip: [requests]\n")
    assert Environment.from_conda_specification("p", pip_only).python.conda_packages == []


def test_environment_by_name_and_clone() -> None:
    env = Environment("myenv")
    assert env.name == "myenv" and Environment(name="kw").name == "kw"
    copy = env.clone("other")
    copy.python.pip_packages.append("numpy")
    assert copy.name == "other" and env.python.pip_packages == []


# ------------------------------------------------------------------------- CondaDependencies
def test_conda_dependencies_create_add_remove_and_assign() -> None:
    deps = CondaDependencies.create(
        pip_packages=["numpy==1.26", "requests"], conda_packages=["scipy"], python_version="3.11"
    )
    deps.add_pip_package("numpy==2.1")  # one of the same name is replaced
    deps.add_conda_package("scipy=1.13")
    deps.add_channel("conda-forge")
    deps.remove_pip_package("requests")
    assert deps.pip_packages == ["numpy==2.1"] and deps.conda_packages == ["scipy=1.13"]
    assert deps.conda_channels == ["conda-forge"] and deps.get_python_version() == "3.11"
    env = Environment("myenv")
    env.python.conda_dependencies = deps
    assert env.python.pip_packages == ["numpy==2.1"] and env.python.python_version == "3.11"
    env.python.conda_dependencies.add_pip_package("torch")  # the environment's own
    assert env.python.pip_packages == ["numpy==2.1", "torch"]
    assert deps.pip_packages == ["numpy==2.1"]  # assigning copied
    assert "- pip:\n  - numpy==2.1" in deps.serialize_to_string()


def test_bad_conda_dependencies_name_the_argument() -> None:
    deps = CondaDependencies()
    cases = [
        (lambda: deps.add_pip_package("--extra-index-url x"), "pip_package"),
        (lambda: deps.add_conda_package("not a spec!"), "conda_package"),
        (lambda: deps.set_python_version("three"), "python_version"),
        (lambda: CondaDependencies.create(pip_packages=["-e ."]), "pip_packages"),
        (lambda: CondaDependencies.create(conda_packages=3), "conda_packages"),  # type: ignore[arg-type]
    ]
    for make, field in cases:
        with pytest.raises(SpecError) as caught:
            make()
        assert caught.value.field == field, field
    env = Environment("e")
    with pytest.raises(SpecError) as caught:
        env.python.conda_dependencies = ["numpy"]  # type: ignore[assignment]
    assert caught.value.field == "conda_dependencies"


# A training script as Azure's samples write it, using the Run API they call.
AZURE_TRAIN = """
import argparse, os
import numpy as np
from azureml.core.run import Run

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()
run = Run.get_context()
run.tag("model", "linear")
for epoch in range(args.epochs):
    run.log("loss", 1.0 / (epoch + 1))
    run.log_row("curve", epoch=epoch, loss=1.0 / (epoch + 1))
run.log_table("confusion", {"predicted": [0, 1], "count": [7, 3]})
os.makedirs("outputs", exist_ok=True)
np.save("outputs/weights.npy", np.arange(3))
with open("report.txt", "w") as f:
    f.write("all good")
run.upload_file("reports/report.txt", "report.txt")
with open("curve.png", "wb") as f:
    f.write(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(16))
run.log_image("curve_plot", path="curve.png")
"""

AZURE_SUBMIT_TRAIN = """
from azureml.core import Experiment, ScriptRunConfig, Workspace

ws = Workspace.from_config()
src = ScriptRunConfig(source_directory=SOURCE, script="train.py", arguments=["--epochs", 3])
run = Experiment(workspace=ws, name="run-api-port").submit(src, tags={"sample": "v1"})
run.wait_for_completion(show_output=False, raise_on_error=False)
"""


def test_an_azure_training_script_and_its_submission_run_ported_by_their_imports(
    tmp_path: Path,
) -> None:
    trained = AZURE_TRAIN.replace("from azureml.core.run import Run", "from fitdock import Run")
    source = write_script(tmp_path / "src", trained)
    namespace: dict[str, Any] = {"SOURCE": str(source)}
    exec(compile(port(AZURE_SUBMIT_TRAIN), "submit.py", "exec"), namespace)
    run = namespace["run"]
    assert run.status is RunStatus.COMPLETED, run.error
    metrics = run.get_metrics()
    assert metrics["loss"] == [1.0, 0.5, 1.0 / 3]
    assert metrics["curve"] == {"epoch": [0, 1, 2], "loss": [1.0, 0.5, 1.0 / 3]}
    assert metrics["confusion"] == {"predicted": [0, 1], "count": [7, 3]}
    assert run.get_tags() == {"sample": "v1", "model": "linear"}
    assert "reports/report.txt" in run.get_file_names()
    downloaded = tmp_path / "down"
    run.download_files(output_directory=str(downloaded))
    found = {p.name for p in downloaded.rglob("*") if p.is_file()}
    assert {"weights.npy", "report.txt"} <= found
    details = run.get_details()
    assert details["status"] == "Completed"
    assert details["runDefinition"]["script"] == "train.py"
    assert details["runDefinition"]["arguments"] == ["--epochs", "3"]
    image = Path(str(metrics["curve_plot"]))
    image = image if image.is_absolute() else RunDir.find(run.id).path / image
    assert image.suffix == ".png" and image.read_bytes().startswith(b"\x89PNG")
