"""``ScriptRunConfig``: Azure ML SDK v1's successor of the estimators, as an ``Estimator``.

Azure deprecated its estimators for ``ScriptRunConfig`` + ``Experiment.submit``; code that
made that move ports by its imports too. A ``ScriptRunConfig`` holds Azure's arguments
(settable afterwards, as in Azure) and builds an ordinary fitdock ``Estimator`` from them
(``estimator()``), so every argument is validated by the same rules; a bad one is a
``SpecError`` that names the ``ScriptRunConfig`` argument. ``Experiment(name).submit(src)``
(``fitdock.pipelines.experiment``) fits that estimator.

Mapping: ``script`` -> ``entry_script``; ``arguments`` -> ``script_params`` (a list);
``command=['python', 'train.py', ...]`` -> the same; ``environment`` ->
``environment_definition`` (``None``: the interpreter running fitdock, as it is, like a
pipeline step's ``RunConfiguration``; in Docker, fitdock's base image);
``distributed_job_config`` -> ``distributed_training`` and the counts
(``MpiConfiguration`` becomes ``Mpi`` on ``node_count`` nodes); ``run_config`` (a
``RunConfiguration``) gives what the arguments leave open; ``docker_runtime_config`` (a
``DockerConfiguration``) -> ``use_docker`` and the environment's Docker section.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from fitdock.environments.azure import curated
from fitdock.environments.spec import Environment
from fitdock.errors import SpecError
from fitdock.estimators.azure import DockerConfiguration, MpiConfiguration
from fitdock.estimators.base import Estimator
from fitdock.specs.distribution import Horovod, Mpi, PyTorchConfiguration

if TYPE_CHECKING:
    from fitdock.execution.run import Run

OWNER = "ScriptRunConfig"
# The Estimator's argument names in its errors -> ScriptRunConfig's.
RENAMED = {
    "entry_script": "script",
    "script_params": "arguments",
    "environment_definition": "environment",
    "distributed_training": "distributed_job_config",
}
_PYTHON = re.compile(r"^python(3(\.[0-9]+)?)?$")
_SHELL = re.compile(r"^[;&|<>()]+$|[`$]")  # operators, substitutions: no shell runs here


@runtime_checkable
class RunSettings(Protocol):
    """What ``ScriptRunConfig`` reads of a ``run_config``: the settings of
    ``fitdock.pipelines.RunConfiguration`` (Azure's ``RunConfiguration``, the part fitdock
    runs). The estimators layer sits below the pipelines, so this is the contract."""

    environment: Environment | None
    node_count: int
    process_count_per_node: int
    distributed_training: Any
    max_run_duration_seconds: float | None
    environment_variables: Mapping[str, Any]
    use_docker: bool | None
    shm_size: str | None
    target: Any


@dataclass
class _DefaultSettings:
    """``run_config`` when none is given: every setting left to the other arguments."""

    environment: Environment | None = None
    node_count: int = 1
    process_count_per_node: int = 1
    distributed_training: Any = None
    max_run_duration_seconds: float | None = None
    environment_variables: Mapping[str, Any] = field(default_factory=dict)
    use_docker: bool | None = None
    shm_size: str | None = None
    target: Any = None


class ScriptRunConfig:
    """Run ``script`` with ``arguments`` from ``source_directory`` (Azure's
    ``ScriptRunConfig``); submit it with ``Experiment(name).submit(src)``."""

    def __init__(
        self,
        source_directory: str | Path,
        script: str | None = None,
        arguments: Sequence[Any] | None = None,
        run_config: RunSettings | None = None,
        *,
        compute_target: Any = None,
        environment: Environment | None = None,
        distributed_job_config: MpiConfiguration
        | PyTorchConfiguration
        | Mpi
        | Horovod
        | None = None,
        resume_from: Any = None,
        max_run_duration_seconds: float | None = None,
        command: str | Sequence[Any] | None = None,
        docker_runtime_config: DockerConfiguration | None = None,
    ) -> None:
        self.source_directory = source_directory
        self.script = script
        self.arguments = arguments
        self.run_config: RunSettings = _DefaultSettings() if run_config is None else run_config
        self.compute_target = compute_target
        self.environment = environment
        self.distributed_job_config = distributed_job_config
        self.resume_from = resume_from
        self.max_run_duration_seconds = max_run_duration_seconds
        self.command = command
        self.docker_runtime_config = docker_runtime_config
        self.estimator()  # validate now: a bad argument fails here, not at submit

    def estimator(self, experiment_name: str | None = None) -> Estimator:
        """The ``Estimator`` these settings make (``experiment_name`` names its runs)."""
        settings = self.run_config
        if not isinstance(settings, RunSettings):
            raise SpecError(
                f"{OWNER}: run_config must be a RunConfiguration (fitdock.RunConfiguration), "
                f"got {type(settings).__name__}",
                field="run_config",
            )
        script, arguments = _script_and_arguments(self.script, self.arguments, self.command)
        nodes, per_node, distribution = _ranks(
            _first(self.distributed_job_config, settings.distributed_training),
            settings.node_count,
            settings.process_count_per_node,
        )
        docker = self.docker_runtime_config
        if docker is not None and not isinstance(docker, DockerConfiguration):
            raise SpecError(
                f"{OWNER}: docker_runtime_config must be a DockerConfiguration, got "
                f"{type(docker).__name__}",
                field="docker_runtime_config",
            )
        use_docker = docker.use_docker if docker is not None else settings.use_docker
        environment = _environment(
            _first(self.environment, settings.environment),
            docker or DockerConfiguration(shm_size=settings.shm_size),
            bool(use_docker),
        )
        try:
            return Estimator(
                self.source_directory,
                entry_script=script,
                script_params=arguments,
                node_count=nodes,
                process_count_per_node=per_node,
                distributed_training=distribution,
                environment_definition=environment,
                user_managed=environment is None,
                environment_variables=dict(settings.environment_variables or {}) or None,
                max_run_duration_seconds=_first(
                    self.max_run_duration_seconds, settings.max_run_duration_seconds
                ),
                use_docker=use_docker,
                compute_target=_first(self.compute_target, settings.target) or "local",
                resume_from=self.resume_from,
                experiment_name=experiment_name,
            )
        except SpecError as exc:
            raise _renamed(exc) from exc

    def fit(self, wait: bool = True, show_output: bool = False) -> Run:
        """Run it now, outside any experiment (the run is named after the script)."""
        return self.estimator().fit(wait=wait, show_output=show_output)

    def __repr__(self) -> str:
        return (
            f"ScriptRunConfig(source_directory={str(self.source_directory)!r}, "
            f"script={self.script!r}, command={self.command!r})"
        )


def _first(*values: Any) -> Any:
    """The first value given (an argument of ScriptRunConfig wins over its run_config)."""
    return next((value for value in values if value is not None), None)


def _script_and_arguments(
    script: str | None, arguments: Sequence[Any] | None, command: str | Sequence[Any] | None
) -> tuple[str, list[str]]:
    if command is not None:
        if script is not None or arguments:
            raise SpecError(
                f"{OWNER}: give command, or script and arguments, not both", field="command"
            )
        return _from_command(command)
    if not isinstance(script, str) or not script.strip():
        raise SpecError(
            f"{OWNER}: name the script to run, e.g. script='train.py' (or "
            "command=['python', 'train.py', ...])",
            field="script",
        )
    if arguments is None:
        return script, []
    if isinstance(arguments, (str, bytes, Mapping)) or not isinstance(arguments, Sequence):
        raise SpecError(
            f"{OWNER}: arguments must be a list such as ['--lr', 0.1], got {arguments!r}",
            field="arguments",
        )
    for item in arguments:
        if isinstance(item, (Mapping, set, list, tuple)):
            raise SpecError(
                f"{OWNER}: each argument must be a single value (a string, number or path), "
                f"got {item!r}",
                field="arguments",
            )
    return script, [str(item) for item in arguments]


def _from_command(command: str | Sequence[Any]) -> tuple[str, list[str]]:
    """``['python', 'train.py', '--x', '1']`` (or that as one string) -> script, arguments.
    Nothing else: fitdock runs no shell, so a command line it would have to interpret is
    refused with what is supported."""
    if isinstance(command, str):
        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise SpecError(f"{OWNER}: command {command!r}: {exc}", field="command") from None
    elif isinstance(command, Sequence):
        words = [str(word) for word in command]
    else:
        raise SpecError(
            f"{OWNER}: command must be a list or a string, got {command!r}", field="command"
        )
    shell = [word for word in words if _SHELL.search(word)]
    fits = (
        len(words) >= 2
        and _PYTHON.match(Path(words[0]).name) is not None
        and words[1].endswith(".py")
        and not words[1].startswith("-")
    )
    if shell or not fits:
        why = f"it needs a shell ({' '.join(shell)}); " if shell else ""
        raise SpecError(
            f"{OWNER}: command={command!r} is not supported: {why}fitdock runs one Python "
            "script with its arguments, as command=['python', 'train.py', '--lr', '0.1'] (or "
            "the same as one string), or script='train.py', arguments=[...]; put other "
            "commands into the script",
            field="command",
        )
    return words[1], words[2:]


def _ranks(distribution: Any, nodes: int, per_node: int) -> tuple[int, int, Any]:
    """Counts and fitdock's distribution for Azure's ``distributed_job_config``."""
    if distribution is None or isinstance(distribution, (Mpi, Horovod, PyTorchConfiguration)):
        return nodes, per_node, distribution
    if isinstance(distribution, MpiConfiguration):
        per_node = distribution.process_count_per_node
        return distribution.node_count, per_node, distribution.to_mpi()
    raise SpecError(
        f"{OWNER}: distributed_job_config {type(distribution).__name__} is not supported; "
        "use MpiConfiguration, PyTorchConfiguration (torchrun), Mpi or Horovod "
        "(TensorflowConfiguration: run TensorFlow's workers under MpiConfiguration)",
        field="distributed_job_config",
    )


def _environment(
    environment: Any, docker: DockerConfiguration, use_docker: bool
) -> Environment | None:
    """The environment to pass on: the given one, or fitdock's base image when the run is
    in Docker without one (the interpreter running fitdock is not in any image), with
    the Docker settings (shm size, arguments) on top; ``None``: the interpreter running
    fitdock, as it is."""
    if environment is not None and not isinstance(environment, Environment):
        raise SpecError(
            f"{OWNER}: environment must be an Environment (Environment.get(name=...), "
            f"Environment.from_pip_requirements(...), ...), got {type(environment).__name__}",
            field="environment",
        )
    if environment is None and use_docker:
        environment = curated("fitdock-base-cpu")
    if environment is None:
        return None
    return environment.model_copy(update={"docker": docker.section(environment.docker)})


def _renamed(exc: SpecError) -> SpecError:
    """The Estimator's error in ScriptRunConfig's words."""
    message = re.sub(r"^\w+: ", f"{OWNER}: ", str(exc))
    message = re.sub(r"\b(" + "|".join(RENAMED) + r")\b", lambda match: RENAMED[match[1]], message)
    field_name = RENAMED.get(exc.field or "", exc.field)
    return SpecError(message, field=field_name)
