"""``Estimator``: the generic estimator; ``Chainer`` and ``PyTorch`` add framework packages.

The constructor takes the Azure ML SDK v1 arguments and validates them at once
(a bad argument raises ``SpecError`` before anything is created). ``fit()``
hands the resulting ``JobSpec`` to the launchers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fitdock.environments.catalogue import Framework, load_catalogue
from fitdock.environments.files import read_conda_file, read_requirements
from fitdock.environments.pins import UserRequirement
from fitdock.environments.spec import DockerSection, Environment
from fitdock.errors import SpecError
from fitdock.estimators.args import EstimatorArgs, node_count, per_node, validate_args
from fitdock.specs.compute import Hosts, Slurm
from fitdock.specs.distribution import Horovod, Mpi, PyTorchConfiguration
from fitdock.specs.job import JobSpec, SnapshotLimits, Tracking, script_params_to_argv

if TYPE_CHECKING:
    from fitdock.execution.run import Run
    from fitdock.targets.plan import LaunchPlan


class Estimator:
    """Run ``entry_script`` from ``source_directory`` as a training job.

    The generic estimator adds no framework packages: give your own with
    ``pip_packages``/``conda_packages``, a dependency file, or an
    ``environment_definition``.
    """

    FRAMEWORK_NAME: ClassVar[str] = "none"
    DEFAULT_VERSION: ClassVar[str] = "base"
    _FRAMEWORK: ClassVar[Framework] = "none"

    def __init__(
        self,
        source_directory: str | Path,
        *,
        compute_target: str | Hosts | Slurm = "local",
        vm_size: str | None = None,
        vm_priority: str | None = None,
        entry_script: str | None = None,
        script_params: Mapping[str, Any] | Sequence[Any] | None = None,
        node_count: int = 1,
        process_count_per_node: int = 1,
        distributed_backend: str | None = None,
        distributed_training: Mpi | PyTorchConfiguration | Horovod | None = None,
        use_gpu: bool = False,
        use_docker: bool | None = None,
        custom_docker_base_image: str | None = None,
        custom_docker_image: str | None = None,
        image_registry_details: Any = None,
        user_managed: bool = False,
        conda_packages: Sequence[str] | None = None,
        pip_packages: Sequence[str] | None = None,
        conda_dependencies_file_path: str | Path | None = None,
        pip_requirements_file_path: str | Path | None = None,
        conda_dependencies_file: str | Path | None = None,
        pip_requirements_file: str | Path | None = None,
        environment_variables: Mapping[str, Any] | None = None,
        environment_definition: Environment | None = None,
        inputs: Mapping[str, str | Path] | Sequence[str | Path] | None = None,
        source_directory_data_store: Any = None,
        shm_size: str | None = None,
        resume_from: str | Path | Run | None = None,
        max_run_duration_seconds: float | None = None,
        framework_version: str | None = None,
        termination_grace_seconds: float = 30.0,
        hang_timeout_seconds: float | None = None,
        max_restarts: int = 0,
        max_snapshot_size_mb: float = 300,
        max_snapshot_files: int = 2000,
        experiment_name: str | None = None,
        tracking: Tracking | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        raw = dict(locals())
        del raw["self"]
        for name in ("conda_packages", "pip_packages"):
            if isinstance(raw[name], str):  # a single package given as a string
                raw[name] = [raw[name]]
        owner = type(self).__name__
        if self._FRAMEWORK == "none" and framework_version is not None:
            raise SpecError(
                f"{owner}: framework_version is for framework estimators such as Chainer or "
                "PyTorch; the generic Estimator adds no framework",
                field="framework_version",
            )
        self._args: EstimatorArgs = validate_args(owner, raw)
        self._argv = script_params_to_argv(self._args.script_params)
        self._environment = self._merge_environment()

    # ------------------------------------------------------------------ class API
    @classmethod
    def get_supported_versions(cls) -> list[str]:
        """Framework versions the catalogue knows (history rows map to current ones)."""
        return load_catalogue().supported_versions(cls._FRAMEWORK)

    # ------------------------------------------------------------------ properties
    @property
    def source_directory(self) -> Path:
        return self._args.source_directory

    @property
    def entry_script(self) -> str:
        return self._args.entry_script

    @property
    def environment(self) -> Environment:
        """The merged environment a fit would use."""
        return self._environment

    @property
    def job_spec(self) -> JobSpec:
        args = self._args
        return JobSpec(
            name=args.experiment_name or Path(args.entry_script).stem,
            framework=self._FRAMEWORK,
            framework_version=self._environment.version or self.DEFAULT_VERSION,
            source_directory=args.source_directory,
            entry_script=args.entry_script,
            arguments=tuple(self._argv),
            node_count=node_count(args),
            process_count_per_node=per_node(args),
            distribution=args.distributed_training,
            compute_target=args.compute_target,
            use_docker=args.use_docker,
            use_gpu=args.use_gpu,
            environment=self._environment,
            inputs=dict(args.inputs or {}),
            resume_from=args.resume_from,
            max_run_duration_seconds=args.max_run_duration_seconds,
            termination_grace_seconds=args.termination_grace_seconds,
            hang_timeout_seconds=args.hang_timeout_seconds,
            max_restarts=args.max_restarts,
            snapshot=SnapshotLimits(
                max_size_mb=args.max_snapshot_size_mb, max_files=args.max_snapshot_files
            ),
            tracking=args.tracking,
            tracking_uri=args.tracking_uri,
        )

    # ------------------------------------------------------------------ actions
    def plan(self) -> LaunchPlan:
        """What ``fit()`` would run, without running or creating anything."""
        from fitdock.execution.submit import dry_run

        return dry_run(self.job_spec)

    def fit(self, wait: bool = True, show_output: bool = False) -> Run:
        """Snapshot, launch and supervise the job. Returns a finished ``Run``, or a
        running one at once with ``wait=False``, supervised by a process of its own that
        outlives this one (``execution/detached.py``)."""
        from fitdock.execution.submit import submit

        return submit(self.job_spec, wait=wait, show_output=show_output, detach=not wait)

    # ------------------------------------------------------------------ environment
    def _merge_environment(self) -> Environment:
        args = self._args
        variables = dict(args.environment_variables or {})
        if args.environment_definition is not None:
            env = args.environment_definition
            merged = {**env.environment_variables, **variables}
            return env.model_copy(update={"environment_variables": merged})
        row = load_catalogue().lookup(self._FRAMEWORK, args.framework_version, args.use_gpu)
        env = row.to_environment()
        python = env.python
        requested: list[UserRequirement] = []
        if args.conda_dependencies_file is not None:
            conda = read_conda_file(
                self._resolve(args.conda_dependencies_file), "conda_dependencies_file"
            )
            # A conda file means: no framework packages (Azure's rule), so no curated pins.
            python = python.model_copy(
                update={
                    "conda_packages": conda["conda"],
                    "pip_packages": [],
                    "channels": conda["channels"],
                    "python_version": conda["python_version"] or python.python_version,
                }
            )
            requested += [UserRequirement(s, "conda_dependencies_file") for s in conda["pip"]]
        env = env.model_copy(update={"python": python})
        if args.pip_requirements_file is not None:
            lines = read_requirements(
                self._resolve(args.pip_requirements_file), "pip_requirements_file"
            )
            requested += [UserRequirement(s, "pip_requirements_file") for s in lines]
        requested += [UserRequirement(s) for s in args.pip_packages or []]
        # Curated pins hold unless the user gives a version (see environments.pins).
        env = env.with_packages(conda=list(args.conda_packages or []), pip=requested)
        docker = DockerSection(
            enabled=args.use_docker,
            base_image=args.custom_docker_image or env.docker.base_image,
            shm_size=args.shm_size,
            gpu_support=args.use_gpu,
        )
        python = env.python.model_copy(update={"user_managed_dependencies": args.user_managed})
        return env.model_copy(
            update={
                "name": env.name if not _customised(args) else f"{env.name}+user",
                "python": python,
                "docker": docker,
                "environment_variables": {**env.environment_variables, **variables},
            }
        )

    def _resolve(self, path: Path) -> Path:
        """Dependency files are relative to source_directory (Azure), else to the cwd."""
        inside = self._args.source_directory / path
        return inside if inside.exists() else path.expanduser().resolve()

    def __repr__(self) -> str:
        args = self._args
        return (
            f"{type(self).__name__}(source_directory={str(args.source_directory)!r}, "
            f"entry_script={args.entry_script!r}, processes={node_count(args) * per_node(args)})"
        )


def _customised(args: EstimatorArgs) -> bool:
    return bool(
        args.conda_packages
        or args.pip_packages
        or args.conda_dependencies_file
        or args.pip_requirements_file
        or args.custom_docker_image
    )
