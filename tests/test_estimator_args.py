"""Estimator arguments: validation messages, deprecated names, framework packages, argv."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from helpers import run_dirs, write_script

from fitdock import Chainer, Environment, Estimator, Mpi, PyTorch, RunStatus
from fitdock.environments.catalogue import load_catalogue
from fitdock.environments.spec import PythonSection
from fitdock.errors import EnvironmentResolutionError, SpecError
from fitdock.specs.job import script_params_to_argv


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_script(tmp_path / "src", "print('hello')\n")


def make(src: Path, cls: type[Estimator] = Estimator, **kwargs: object) -> Estimator:
    kwargs.setdefault("entry_script", "train.py")
    kwargs.setdefault("user_managed", True)
    return cls(src, **kwargs)  # type: ignore[arg-type]


def pip_of(est: Estimator) -> list[str]:
    return list(est.environment.python.pip_packages)


# ---------------------------------------------------------------------------------------------
# Messages name the field
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"node_count": 0}, "node_count", "greater than or equal to 1"),
        ({"process_count_per_node": 0}, "process_count_per_node", "greater than or equal to 1"),
        ({"max_run_duration_seconds": 0}, "max_run_duration_seconds", "greater than 0"),
        ({"termination_grace_seconds": -1}, "termination_grace_seconds", "greater than or equal"),
        ({"shm_size": "lots"}, "shm_size", "lots"),
        ({"experiment_name": "bad name!"}, "experiment_name", "bad name!"),
        ({"script_params": "--lr 0.1"}, "script_params", "--lr 0.1"),
    ],
)
def test_bad_value_names_the_field(src: Path, kwargs: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        make(src, **kwargs)
    assert info.value.field is not None and info.value.field.split(".")[0] == field
    assert str(info.value).startswith("Estimator: ")
    assert field in str(info.value)
    assert words in str(info.value)


def test_missing_entry_script_is_required(src: Path) -> None:
    with pytest.raises(SpecError, match=r"entry_script: is required") as info:
        Estimator(src, user_managed=True)
    assert info.value.field == "entry_script"


def test_entry_script_must_be_a_file_in_the_source_directory(src: Path) -> None:
    with pytest.raises(SpecError, match=r"entry_script 'nope\.py' is not a file in") as info:
        make(src, entry_script="nope.py")
    assert info.value.field == "entry_script"
    assert str(src) in str(info.value)


def test_entry_script_outside_the_source_directory_is_refused(src: Path) -> None:
    (src.parent / "outside.py").write_text("print('outside')\n")
    with pytest.raises(SpecError, match="inside source_directory") as info:
        make(src, entry_script="../outside.py")
    assert info.value.field == "entry_script"


def test_blank_entry_script_is_refused(src: Path) -> None:
    with pytest.raises(SpecError, match="must name the script") as info:
        make(src, entry_script="  ")
    assert info.value.field == "entry_script"


def test_missing_source_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SpecError, match="is not a directory") as info:
        Estimator(missing, entry_script="train.py", user_managed=True)
    assert info.value.field == "source_directory"
    assert str(missing) in str(info.value)


def test_source_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "train.py"
    afile.write_text("")
    with pytest.raises(SpecError) as info:
        Estimator(afile, entry_script="train.py", user_managed=True)
    assert info.value.field == "source_directory"


def test_spec_error_is_a_value_error(src: Path) -> None:
    with pytest.raises(ValueError):
        make(src, node_count=0)


@pytest.mark.parametrize("cls", [Chainer, PyTorch])
def test_unknown_framework_version_lists_the_supported_ones(
    src: Path, cls: type[Estimator]
) -> None:
    with pytest.raises(EnvironmentResolutionError) as info:
        make(src, cls, framework_version="0.0.1")
    message = str(info.value)
    assert "framework_version='0.0.1'" in message
    for version in cls.get_supported_versions():
        assert version in message
    assert f"default {cls.DEFAULT_VERSION}" in message


def test_generic_estimator_refuses_framework_version(src: Path) -> None:
    with pytest.raises(SpecError, match="generic Estimator adds no framework") as info:
        make(src, framework_version="7.8.1")
    assert info.value.field == "framework_version"


# ---------------------------------------------------------------------------------------------
# environment_definition replaces the environment arguments
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("pip_packages", ["requests"]),
        ("conda_packages", ["numpy"]),
        ("custom_docker_image", "my/image:1"),
        ("use_gpu", True),
        ("user_managed", True),
    ],
)
def test_environment_definition_conflicts(src: Path, name: str, value: object) -> None:
    env = Environment(python=PythonSection(user_managed_dependencies=True))
    kwargs = {"entry_script": "train.py", "environment_definition": env, name: value}
    with pytest.raises(SpecError) as info:
        Estimator(src, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == name
    assert "environment_definition" in str(info.value)
    assert name in str(info.value)


def test_environment_definition_is_used_with_extra_variables(src: Path) -> None:
    env = Environment(
        name="mine",
        python=PythonSection(user_managed_dependencies=True, pip_packages=["requests==2.32"]),
        environment_variables={"A": "1", "B": "2"},
    )
    est = Estimator(
        src, entry_script="train.py", environment_definition=env, environment_variables={"B": "3"}
    )
    assert est.environment.name == "mine"
    assert pip_of(est) == ["requests==2.32"]
    assert est.environment.environment_variables == {"A": "1", "B": "3"}
    assert env.environment_variables == {"A": "1", "B": "2"}, "the user's object must not change"


# ---------------------------------------------------------------------------------------------
# Distribution
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{"process_count_per_node": 2}, {"node_count": 2}])
def test_several_processes_need_distributed_training(src: Path, kwargs: dict) -> None:
    with pytest.raises(SpecError, match=r"distributed_training=Mpi\(\)") as info:
        make(src, **kwargs)
    assert info.value.field == "distributed_training"


def test_mpi_process_count_takes_the_estimator_one(src: Path) -> None:
    est = make(src, process_count_per_node=3, distributed_training=Mpi())
    assert est.job_spec.process_count_per_node == 3
    assert est.job_spec.world_size == 3
    est = make(src, distributed_training=Mpi(process_count_per_node=4))
    assert est.job_spec.world_size == 4


def test_mpi_and_estimator_process_counts_must_agree(src: Path) -> None:
    with pytest.raises(SpecError, match="disagrees") as info:
        make(src, process_count_per_node=3, distributed_training=Mpi(process_count_per_node=2))
    assert info.value.field == "process_count_per_node"


def test_distributed_backend_mpi_is_deprecated_and_maps_to_mpi(src: Path) -> None:
    with pytest.warns(DeprecationWarning, match="distributed_backend is deprecated") as record:
        est = make(src, process_count_per_node=2, distributed_backend="mpi")
    assert est.job_spec.distribution == Mpi()
    assert est.job_spec.world_size == 2
    # stacklevel points at the caller, not into fitdock
    assert [Path(w.filename).name for w in record] == [Path(__file__).name]


def test_distributed_backend_mpi_through_a_framework_estimator(src: Path) -> None:
    with pytest.warns(DeprecationWarning) as record:
        est = make(src, Chainer, process_count_per_node=2, distributed_backend="MPI")
    assert est.job_spec.distribution == Mpi()
    assert Path(record[0].filename).name == Path(__file__).name


def test_distributed_backend_nccl_is_an_error(src: Path) -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(SpecError) as info:
        make(src, distributed_backend="nccl")
    assert info.value.field == "distributed_backend"
    assert "'nccl'" in str(info.value) and "'mpi'" in str(info.value)


def test_distributed_backend_and_distributed_training_together(src: Path) -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(SpecError, match="not both") as info:
        make(src, distributed_backend="mpi", distributed_training=Mpi())
    assert info.value.field == "distributed_backend"


# ---------------------------------------------------------------------------------------------
# Deprecated names, cloud-only names
# ---------------------------------------------------------------------------------------------
def test_custom_docker_base_image_is_deprecated_and_mapped(src: Path) -> None:
    with pytest.warns(DeprecationWarning, match="use custom_docker_image") as record:
        est = make(src, custom_docker_base_image="my/image:1")
    assert est.environment.docker.base_image == "my/image:1"
    assert Path(record[0].filename).name == Path(__file__).name


def test_pip_requirements_file_path_is_deprecated_and_mapped(src: Path) -> None:
    (src / "requirements.txt").write_text("tqdm==4.66.0\n# a comment\n\nrequests  # inline\n")
    with pytest.warns(DeprecationWarning, match="pip_requirements_file_path is deprecated"):
        est = make(src, Chainer, pip_requirements_file_path="requirements.txt")
    assert "tqdm==4.66.0" in pip_of(est)
    assert "requests" in pip_of(est)
    assert "chainer==7.8.1" in pip_of(est)


def test_conda_dependencies_file_path_is_deprecated_and_mapped(src: Path) -> None:
    (src / "environment.yml").write_text("dependencies:\n  - python=3.10\n  - scipy\n")
    with pytest.warns(DeprecationWarning, match="conda_dependencies_file_path is deprecated"):
        est = make(src, Chainer, conda_dependencies_file_path="environment.yml")
    assert est.environment.python.conda_packages == ["scipy"]
    assert est.environment.python.python_version == "3.10"


def test_deprecated_and_new_name_together(src: Path) -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(SpecError, match="not both") as info:
        make(src, custom_docker_base_image="a:1", custom_docker_image="b:2")
    assert info.value.field == "custom_docker_base_image"


def test_cloud_only_arguments_warn_and_are_ignored(src: Path) -> None:
    with pytest.warns(UserWarning, match="vm_size describes a cloud resource"):
        est = make(src, vm_size="Standard_NC6")
    assert est.job_spec.compute_target == "local"


# ---------------------------------------------------------------------------------------------
# Framework packages
# ---------------------------------------------------------------------------------------------
def test_conda_dependencies_file_means_no_framework_packages(src: Path) -> None:
    (src / "environment.yml").write_text(
        "channels: [conda-forge]\n"
        "dependencies:\n"
        "  - python=3.11\n"
        "  - numpy=1.26\n"
        "  - pip:\n"
        "    - tqdm==4.66.0\n"
    )
    est = make(src, Chainer, conda_dependencies_file="environment.yml")
    pip = pip_of(est)
    assert not any(spec.lower().startswith("chainer") for spec in pip), pip
    assert pip == ["tqdm==4.66.0"]
    assert est.environment.python.conda_packages == ["numpy=1.26"]
    assert est.environment.python.channels == ["conda-forge"]


def test_pip_requirements_file_is_merged_with_framework_and_pip_packages(src: Path) -> None:
    (src / "req.txt").write_text("-r more.txt\ntqdm==4.66.0\n")
    (src / "more.txt").write_text("requests>=2\n")
    est = make(src, Chainer, pip_requirements_file="req.txt", pip_packages=["rich"])
    pip = pip_of(est)
    assert "chainer==7.8.1" in pip
    assert pip[-3:] == ["requests>=2", "tqdm==4.66.0", "rich"]


def test_pip_requirements_file_with_options_is_refused(src: Path) -> None:
    (src / "req.txt").write_text("--index-url https://example.invalid/simple\ntqdm\n")
    with pytest.raises(SpecError, match="pip option") as info:
        make(src, pip_requirements_file="req.txt")
    assert info.value.field == "pip_requirements_file"


def test_missing_requirements_file_names_the_field(src: Path) -> None:
    with pytest.raises(SpecError, match="cannot read") as info:
        make(src, pip_requirements_file="missing.txt")
    assert info.value.field == "pip_requirements_file"


def test_user_pip_spec_replaces_the_curated_one_of_the_same_name(src: Path) -> None:
    before = pip_of(make(src, Chainer))
    assert "numpy>=1.24,<2" in before
    est = make(src, Chainer, pip_packages=["NumPy==1.26.4"])
    pip = pip_of(est)
    assert "NumPy==1.26.4" in pip
    assert not any(spec.startswith("numpy") for spec in pip), pip
    assert "chainer==7.8.1" in pip
    assert est.environment.name == "chainer-7.8.1-cpu+user"


def test_an_unversioned_user_package_keeps_the_curated_pin(src: Path) -> None:
    est = Chainer(source_directory=src, entry_script="train.py", pip_packages=["numpy", "pytest"])
    pip = pip_of(est)
    assert "numpy>=1.24,<2" in pip
    assert [s for s in pip if s.lower().startswith("numpy")] == ["numpy>=1.24,<2"]
    assert pip[-1] == "pytest"
    assert est.environment.pin_overrides == []


def test_a_versioned_user_package_replaces_the_pin_and_the_record_shows_it(src: Path) -> None:
    est = Chainer(source_directory=src, entry_script="train.py", pip_packages=["numpy==1.26.4"])
    assert "numpy==1.26.4" in pip_of(est)
    assert "numpy>=1.24,<2" not in pip_of(est)
    override = {
        "package": "numpy",
        "curated": "numpy>=1.24,<2",
        "requested": "numpy==1.26.4",
        "field": "pip_packages",
    }
    assert est.environment.pin_overrides[0].model_dump() == override
    # The run record stores the job spec as JSON: the override travels with it.
    assert est.job_spec.model_dump(mode="json")["environment"]["pin_overrides"] == [override]


def test_a_user_version_outside_the_curated_pin_is_refused(src: Path) -> None:
    with pytest.raises(SpecError) as info:
        Chainer(source_directory=src, entry_script="train.py", pip_packages=["numpy>=2"])
    assert info.value.field == "pip_packages"
    message = str(info.value)
    assert "pip_packages 'numpy>=2'" in message
    assert "the curated pin 'numpy>=1.24,<2' of chainer-7.8.1-cpu" in message
    assert "environment_definition=" in message


def test_a_requirements_file_line_outside_the_curated_pin_names_the_file_field(src: Path) -> None:
    (src / "req.txt").write_text("numpy==2.0.1\n")
    with pytest.raises(SpecError, match=r"pip_requirements_file 'numpy==2\.0\.1'") as info:
        make(src, Chainer, pip_requirements_file="req.txt")
    assert info.value.field == "pip_requirements_file"


def test_requirements_file_and_pip_packages_that_disagree_are_refused(src: Path) -> None:
    (src / "req.txt").write_text("rich<13\n")
    with pytest.raises(SpecError) as info:
        make(src, Chainer, pip_requirements_file="req.txt", pip_packages=["rich>=13.7"])
    assert info.value.field == "pip_packages"
    assert "pip_packages 'rich>=13.7'" in str(info.value)
    assert "pip_requirements_file 'rich<13'" in str(info.value)


def test_conda_file_pip_lines_are_the_users_not_curated_pins(src: Path) -> None:
    (src / "environment.yml").write_text("dependencies:\n  - pip:\n    - numpy==1.26.4\n")
    est = make(src, Chainer, conda_dependencies_file="environment.yml", pip_packages=["numpy"])
    assert pip_of(est) == ["numpy==1.26.4", "numpy"]
    assert est.environment.pin_overrides == []
    with pytest.raises(SpecError, match=r"conda_dependencies_file 'numpy==1\.26\.4'") as info:
        make(src, Chainer, conda_dependencies_file="environment.yml", pip_packages=["numpy>=2"])
    assert info.value.field == "pip_packages"


def test_chainer_class_api() -> None:
    catalogue = load_catalogue()
    assert Chainer.FRAMEWORK_NAME == "Chainer"
    assert Chainer.get_supported_versions() == ["5.1.0", "7.0.0", "7.8.1"]
    assert Chainer.DEFAULT_VERSION == catalogue.default_version("chainer") == "7.8.1"
    assert PyTorch.FRAMEWORK_NAME == "PyTorch"
    assert catalogue.default_version("pytorch") == PyTorch.DEFAULT_VERSION
    assert PyTorch.DEFAULT_VERSION in PyTorch.get_supported_versions()
    assert Estimator.get_supported_versions() == ["base"]


def test_chainer_default_is_the_current_row(src: Path) -> None:
    est = make(src, Chainer)
    assert est.environment.name == "chainer-7.8.1-cpu"
    assert est.job_spec.framework == "chainer"
    assert est.job_spec.framework_version == "7.8.1"
    assert "chainer==7.8.1" in pip_of(est)


@pytest.mark.parametrize(
    ("gpu", "row"), [(False, "chainer-7.8.1-cpu"), (True, "chainer-7.8.1-gpu")]
)
def test_history_version_warns_and_maps_to_the_current_row(src: Path, gpu: bool, row: str) -> None:
    with pytest.warns(FutureWarning, match=r"5\.1\.0.*no longer builds.*chainer-7\.8\.1") as record:
        est = make(src, Chainer, framework_version="5.1.0", use_gpu=gpu)
    assert est.environment.name == row
    assert est.environment.version == "7.8.1"
    assert est.job_spec.framework_version == "7.8.1"
    assert "chainer==5.1.0" not in pip_of(est)
    assert "chainer==7.8.1" in pip_of(est)
    assert Path(record[0].filename).name == Path(__file__).name


def test_current_version_does_not_warn(src: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(src, Chainer, framework_version="7.8.1")


def test_curated_chainer_sets_setuptools_use_distutils(src: Path) -> None:
    est = make(src, Chainer, environment_variables={"MINE": 1})
    variables = est.environment.environment_variables
    assert variables["SETUPTOOLS_USE_DISTUTILS"] == "stdlib"
    assert variables["MINE"] == "1"
    assert est.plan().env["SETUPTOOLS_USE_DISTUTILS"] == "stdlib"


def test_user_variables_override_curated_ones(src: Path) -> None:
    est = make(src, Chainer, environment_variables={"SETUPTOOLS_USE_DISTUTILS": "local"})
    assert est.environment.environment_variables["SETUPTOOLS_USE_DISTUTILS"] == "local"


def test_plan_creates_nothing(src: Path, fitdock_home: Path) -> None:
    plan = make(src, script_params={"--lr": 0.1}).plan()
    assert plan.argv[-3:] == ["train.py", "--lr", "0.1"]
    assert plan.env["RANK"] == "0" and plan.env["WORLD_SIZE"] == "1"
    assert run_dirs(fitdock_home) == []
    assert not fitdock_home.exists()


# ---------------------------------------------------------------------------------------------
# script_params -> argv
# ---------------------------------------------------------------------------------------------
def test_script_params_keep_dict_order() -> None:
    assert script_params_to_argv({"--b": 1, "--a": 2, "--c": 0.5}) == [
        "--b",
        "1",
        "--a",
        "2",
        "--c",
        "0.5",
    ]


def test_script_params_true_is_a_bare_flag_false_and_none_are_left_out() -> None:
    argv = script_params_to_argv({"--verbose": True, "--quiet": False, "--seed": None, "--n": 0})
    assert argv == ["--verbose", "--n", "0"]


def test_script_params_lists_repeat_the_flag() -> None:
    assert script_params_to_argv({"--x": [1, "b"], "--y": (3,)}) == [
        "--x",
        "1",
        "--x",
        "b",
        "--y",
        "3",
    ]


def test_script_params_shell_text_stays_one_literal_element() -> None:
    argv = script_params_to_argv({"--cmd": "$(rm -rf ~)", "--q": "a b; c", "--glob": "*"})
    assert argv == ["--cmd", "$(rm -rf ~)", "--q", "a b; c", "--glob", "*"]


def test_script_params_list_is_argv_already() -> None:
    assert script_params_to_argv(["--lr", 0.1, "pos"]) == ["--lr", "0.1", "pos"]
    assert script_params_to_argv(None) == []


@pytest.mark.parametrize("bad", ["--lr 0.1", {"--x": {"a": 1}}, {"": 1}])
def test_script_params_bad_shapes(bad: object) -> None:
    with pytest.raises(SpecError, match="script_params"):
        script_params_to_argv(bad)  # type: ignore[arg-type]


def test_script_params_reach_the_job_spec_in_order(src: Path) -> None:
    est = make(src, script_params={"--epochs": 3, "--fast": True, "--skip": False, "--lr": 0.1})
    assert est.job_spec.arguments == ("--epochs", "3", "--fast", "--lr", "0.1")


def test_shell_text_reaches_the_script_literally(tmp_path: Path, fitdock_home: Path) -> None:
    """Integration: nothing between script_params and the script is a shell."""
    src = write_script(
        tmp_path / "src",
        """
        import json, os, sys
        with open(os.path.join(os.environ["FITDOCK_OUTPUT_DIR"], "argv.json"), "w") as f:
            json.dump(sys.argv[1:], f)
        """,
    )
    params = {"--cmd": "$(touch PWNED)", "--tick": "`touch PWNED2`", "--semi": "x; touch PWNED3"}
    run = make(src, script_params=params).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    received = json.loads((run.output_dir / "argv.json").read_text())
    assert received == [
        "--cmd",
        "$(touch PWNED)",
        "--tick",
        "`touch PWNED2`",
        "--semi",
        "x; touch PWNED3",
    ]
    assert run.record["argv"][-6:] == received
    assert not list(tmp_path.rglob("PWNED*")), "a shell ran the arguments"


# ---------------------------------------------------------------------------------------------
# Variables and inputs are checked when the estimator is made, not when the job starts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variables",
    [{"A=B": "1"}, {"1BAD": "x"}, {"": "x"}, {"OK": "nul\x00byte"}],
    ids=["equals-sign", "leading-digit", "empty-name", "nul-in-value"],
)
def test_bad_environment_variables_are_refused_up_front(
    src: Path, fitdock_home: Path, variables: dict[str, str]
) -> None:
    """Environment() refuses these names; through the estimator they used to reach
    subprocess and fail inside the supervisor thread, after the run was created."""
    with pytest.raises(SpecError) as info:
        make(src, environment_variables=variables)
    assert info.value.field is not None
    assert info.value.field.startswith("environment_variables")
    assert run_dirs(fitdock_home) == []


def test_environment_refuses_the_same_names() -> None:
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        Environment(environment_variables={"A=B": "1"})


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({"bad-name": "."}, "must be a valid identifier"),
        ({"train": "/no/such/path"}, "does not exist"),
    ],
)
def test_bad_inputs_name_the_input(src: Path, inputs: dict[str, str], words: str) -> None:
    with pytest.raises(SpecError, match=words) as info:
        make(src, inputs=inputs)
    assert info.value.field == "inputs"


def test_inputs_given_as_a_list_are_named_after_the_files(src: Path, tmp_path: Path) -> None:
    data = tmp_path / "train-set.v1"
    data.mkdir()
    est = make(src, inputs=[data])
    assert est.job_spec.inputs == {"train_set_v1": data}
    assert est.plan().env["FITDOCK_INPUT_TRAIN_SET_V1"].endswith("/inputs/train_set_v1")
