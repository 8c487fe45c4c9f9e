"""The docker target: the job runs in its environment's image, on this machine.

``compute_target="docker"``, or ``use_docker=True`` with the local target. Before the
first attempt the image is built once per environment hash (``environments.image``);
``FITDOCK_BASE_IMAGE`` replaces the curated base of a full build (for machines that
reach no registry). The container sees the run folder at the same path, read-write,
so logs, exit records, checkpoints and outputs land in the run as on the local
target. ``shm_size`` defaults to 2g (Azure's default), and jobs of several ranks get
``--cap-add SYS_PTRACE`` so that MPI's shared-memory transport works. fitdock's
stdlib-only run API is mounted read-only and put on PYTHONPATH.
Inside, a reaper of its own (``jobtree.py reap``) runs the ranks; the reaper here
relays orders to it through ``docker run -i``'s stdin, and when fitdock dies that
stdin closes and the job stops. The container runs as the calling user's uid. It is named
``fitdock-<run id>``; after each attempt the target waits until the engine has removed it
(``--rm`` does so a moment after it exits), so a restart never meets a name still taken.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import fitdock
from fitdock.distributions import mpi, mpijob
from fitdock.distributions.mpimatch import MpiMatch
from fitdock.distributions.torchrun import torchrun_argv, torchrun_env
from fitdock.environments.dockerfile import VENV, BuildTier, tier_of
from fitdock.environments.spec import refuse_conda
from fitdock.errors import NotAvailableError, SpecError, StagingError
from fitdock.process import rank_wrapper_argv, reaper_argv, tool
from fitdock.runs.layout import IMAGE_BUILD_LOG
from fitdock.runs.store import RunDir
from fitdock.specs.distribution import Horovod, Mpi, PyTorchConfiguration
from fitdock.specs.job import JobSpec
from fitdock.targets.base import Target
from fitdock.targets.local import check_rank_count
from fitdock.targets.plan import LaunchPlan
from fitdock.targets.variables import free_port, job_variables

DEFAULT_SHM = "2g"  # Azure ML's default; Docker's own 64 MB is too small for data loaders
LIBRARY = "/opt/fitdock/lib"  # where fitdock's package is mounted in the container
JOBTREE = f"{LIBRARY}/fitdock/jobside/jobtree.py"
# Set by the supervisor for each attempt, after the plan: passed by name like the plan's own.
PER_ATTEMPT = ("FITDOCK_ATTEMPT",)
NAME_FREE_SECONDS = 30.0  # how long an attempt's container may take to go once it ended


def image_of(spec: JobSpec) -> str:
    """The image the job runs in (known without building it)."""
    from fitdock.environments.image import image_tag

    env = spec.environment
    return str(env.docker.base_image) if tier_of(env) is BuildTier.AS_IS else image_tag(env)


def installed_packages(tag: str, tier: BuildTier) -> list[str]:
    """``pip freeze`` of the image's venv, asked once per image and kept beside the image
    logs (an image's contents never change under its tag)."""
    if tier is BuildTier.AS_IS:
        return []  # the user's image: fitdock does not know its Python
    from fitdock.environments.image import docker_client
    from fitdock.shared import fitdock_home

    kept = fitdock_home() / "images" / f"{tag.replace(':', '_')}.packages.txt"
    if not kept.is_file():
        output = docker_client().containers.run(
            tag, [f"{VENV}/bin/python", "-m", "pip", "freeze"], remove=True, network_mode="none"
        )
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_bytes(output)
    return [line for line in kept.read_text().splitlines() if line.strip()]


def _python(spec: JobSpec) -> str:
    if tier_of(spec.environment) is BuildTier.AS_IS:
        return spec.environment.python.interpreter_path
    return f"{VENV}/bin/python"


def _inner_command(
    spec: JobSpec, run: RunDir, python: str, env: dict[str, str], chosen: MpiMatch | None
) -> list[str]:
    wrapped = rank_wrapper_argv(python, run.logs, JOBTREE)
    wrapped += [python, spec.entry_script, *spec.arguments]
    config = spec.distribution
    if isinstance(config, (Mpi, Horovod)):
        assert chosen is not None
        return mpi.mpi_argv(chosen.launcher, mpijob.settings(config), spec.world_size, wrapped)
    if isinstance(config, PyTorchConfiguration):
        env.update(torchrun_env(config))
        return torchrun_argv(python, config, 1, spec.process_count_per_node, wrapped, run_id=run.id)
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    return wrapped


def _image_id(image: str) -> str | None:
    """The image's id, or None when it is not built yet (or no engine answers)."""
    code, out, _err = tool(["docker", "image", "inspect", "--format", "{{.Id}}", image])
    return out.strip() if code == 0 and out.strip() else None


def _mpi(spec: JobSpec, run: RunDir, python: str, env: dict[str, str]) -> MpiMatch | None:
    """The MPI launcher in the image that the image's own libraries load (checked once the
    image exists), and its variables with the world-size guard."""
    config = spec.distribution
    if not isinstance(config, (Mpi, Horovod)):
        return None
    image = image_of(spec)
    user_env = spec.environment.environment_variables
    probe = ["docker", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}"]
    for name, value in sorted(user_env.items()):
        probe += ["-e", f"{name}={value}"]
    chosen = mpijob.in_image(config, image, _image_id(image), python, probe, user_env)
    env.update(mpijob.variables(chosen, run, spec.world_size, LIBRARY))
    return chosen


def container_name(run: RunDir) -> str:
    """The name of the run's container (one at a time: the attempts run one after another)."""
    return f"fitdock-{run.id}"


def free_container_name(name: str, timeout: float = NAME_FREE_SECONDS) -> None:
    """Return once no container holds ``name``. ``docker run --rm`` returns when the job's
    container exits; the engine removes the container a moment later, so the next attempt
    would find the name taken ("Conflict") and the run would end with a container left.
    One that lingers (its client was killed) is removed here: its attempt is over."""
    end = time.monotonic() + timeout
    while True:
        code, _out, _err = tool(["docker", "container", "inspect", "--format", "{{.Id}}", name])
        if code != 0:
            return  # no such container (no engine: the launch says so)
        if time.monotonic() >= end:
            raise StagingError(
                f"the container {name} of the last attempt is still there after {timeout:g} s;"
                f" remove it with `docker rm --force {name}`"
            )
        tool(["docker", "rm", "--force", name])
        time.sleep(0.05)


class DockerTarget(Target):
    """Ranks on this machine, in the environment's image."""

    name = "docker"

    def check(self, spec: JobSpec) -> None:
        refuse_conda(
            spec.environment,
            "the image builder",
            "bake them into a custom_docker_image of your own, drop conda_packages and pass "
            "user_managed=True (the image is then used as it is)",
            always=True,
        )
        if spec.node_count > 1:
            raise SpecError(
                f"node_count={spec.node_count}: the docker target runs on this machine; use "
                "process_count_per_node for more ranks",
                field="node_count",
            )
        check_rank_count(spec)  # the container's ranks share this machine's CPUs
        if isinstance(spec.distribution, Horovod) and spec.distribution.launcher == "horovodrun":
            raise NotAvailableError(
                "horovodrun in a container is not available: use Horovod(launcher='mpirun')"
            )

    def prepare(self, spec: JobSpec, run: RunDir, show_output: bool = False) -> dict[str, Any]:
        """Build the image (once per environment hash); its log lands in the run's logs."""
        from fitdock.environments.image import ensure_image

        built = ensure_image(
            spec.environment,
            base_image=os.environ.get("FITDOCK_BASE_IMAGE") or None,
            log=run.logs / IMAGE_BUILD_LOG,
            progress=show_output,
        )
        return {
            "image": built.tag,
            "built": built.built,
            "seconds": round(built.seconds, 3),
            "layers_built": built.layers_built,
            "tier": built.tier.value,
            "packages": installed_packages(built.tag, built.tier),
        }

    def before_attempt(self, spec: JobSpec, run: RunDir) -> None:
        free_container_name(container_name(run))

    def after_attempt(self, spec: JobSpec, run: RunDir) -> None:
        free_container_name(container_name(run))

    def plan(self, spec: JobSpec, run: RunDir, resume_dir: Path | None) -> LaunchPlan:
        self.check(spec)
        python = _python(spec)
        env = job_variables(spec, run, resume_dir, hosts=["localhost"])
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONPATH=LIBRARY)
        chosen = _mpi(spec, run, python, env)
        inner = _inner_command(spec, run, python, env, chosen)
        argv = ["docker", "run", "-i", "--rm", "--name", container_name(run)]
        argv += ["--user", f"{os.getuid()}:{os.getgid()}", "--workdir", str(run.snapshot)]
        argv += ["--stop-timeout", str(math.ceil(spec.termination_grace_seconds))]
        argv += [
            "-v",
            f"{run.path}:{run.path}",
            "-v",
            f"{Path(fitdock.__file__).parent}:{LIBRARY}/fitdock:ro",
        ]
        for path in spec.inputs.values():
            argv += ["-v", f"{path}:{path}:ro"]
        docker = spec.environment.docker
        argv += ["--shm-size", docker.shm_size or DEFAULT_SHM]
        if spec.world_size > 1:
            # MPI moves data between local ranks with cross-memory attach (process_vm_readv),
            # which Docker's default seccomp profile allows only with this capability.
            argv += ["--cap-add", "SYS_PTRACE"]
        if spec.use_gpu:
            argv += ["--gpus", "all"]
        for name in sorted({*env, *PER_ATTEMPT}):
            argv += ["-e", name]  # the value comes from the docker client's environment
        argv += [*docker.arguments, image_of(spec), *reaper_argv(python, JOBTREE), *inner]
        return LaunchPlan(
            target=self.name,
            commands=[argv],
            env=env,
            cwd=str(run.snapshot),
            world_size=spec.world_size,
            interpreter=python,
            notes=[
                f"image: {image_of(spec)} ({tier_of(spec.environment).value} build)",
                *([f"MPI: {chosen.describe()}"] if chosen is not None else []),
            ],
            relay_orders=True,
            provisional=chosen is not None and not chosen.checked,
        )
