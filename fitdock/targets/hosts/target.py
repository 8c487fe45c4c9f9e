"""The hosts target: ranks on a list of machines, started through a launch agent (ssh).

MPI jobs run one ``mpirun`` here that reaches the hosts through the agent
(Open MPI: ``--host`` and ``plm_rsh_agent``; MPICH: ``-hosts`` and
``-launcher-exec``). torchrun jobs run one torchrun per host, each started
through the agent, with the c10d rendezvous on the first host. Remote commands
are quoted with ``shlex`` for the agent's shell: no user string is interpreted.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

from fitdock.distributions import mpi, mpijob
from fitdock.distributions.mpi import Flavor
from fitdock.distributions.torchrun import torchrun_argv, torchrun_env
from fitdock.errors import NotAvailableError, SpecError
from fitdock.process import rank_wrapper_argv
from fitdock.runs.layout import HOSTS_AGENT
from fitdock.runs.store import RunDir
from fitdock.specs.compute import Hosts
from fitdock.specs.distribution import Horovod, Mpi, PyTorchConfiguration
from fitdock.specs.job import JobSpec
from fitdock.targets import local
from fitdock.targets.base import Target
from fitdock.targets.hosts import staging
from fitdock.targets.plan import LaunchPlan
from fitdock.targets.variables import free_port, job_variables

RDZV_PORTS = (29400, 500)  # torchrun's c10d port on the first host: 29400 + hash(run id) % 500
PER_ATTEMPT = ("FITDOCK_ATTEMPT",)  # set for each attempt, after the plan
AGENT_FILE = HOSTS_AGENT  # in the run folder: the agent as one program, for MPICH's hydra


def _hosts(spec: JobSpec) -> Hosts:
    assert isinstance(spec.compute_target, Hosts)  # get_target routes only Hosts here
    return spec.compute_target


def agent_program(hosts: Hosts) -> str:
    """A shell script that runs the agent with its options on its arguments: MPICH's hydra
    takes the agent as one program (``-launcher-exec``), without options."""
    return f'#!/bin/sh\nexec {shlex.join(hosts.agent_argv())} "$@"\n'


def _mpi_agent(hosts: Hosts, flavor: Flavor, run: RunDir) -> tuple[str, ...]:
    """The agent as the launcher takes it: hydra gets ``AGENT_FILE`` when the agent has
    options (ssh's, by default), written before each attempt (``before_attempt``)."""
    argv = tuple(hosts.agent_argv())
    if flavor is Flavor.MPICH and len(argv) > 1:
        return (str(run.path / AGENT_FILE),)
    return argv


def _remote(
    hosts: Hosts, host: str, run: RunDir, env: dict[str, str], command: list[str]
) -> list[str]:
    """``AGENT HOST 'cd SNAPSHOT && exec env K=V ... command'``, quoted for the remote shell."""
    assignments = [f"{key}={value}" for key, value in sorted(env.items())]
    remote = f"cd {shlex.quote(str(run.snapshot))} && exec " + shlex.join(
        ["env", *assignments, *command]
    )
    return [*hosts.agent_argv(), host, remote]


def _torchrun_commands(
    spec: JobSpec, hosts: Hosts, python: str, wrapped: list[str], env: dict[str, str], run: RunDir
) -> list[list[str]]:
    assert isinstance(spec.distribution, PyTorchConfiguration)
    used = hosts.hosts[: spec.node_count]
    base, span = RDZV_PORTS
    port = base + int(hashlib.sha256(run.id.encode()).hexdigest(), 16) % span
    endpoint = f"{used[0].name}:{port}"
    commands = []
    for rank, host in enumerate(used):
        argv = torchrun_argv(
            python, spec.distribution, len(used), spec.process_count_per_node, wrapped,
            run_id=run.id, endpoint=endpoint, node_rank=rank, local_addr=host.name,
        )  # fmt: skip
        commands.append(_remote(hosts, host.name, run, env | {"NODE_RANK": str(rank)}, argv))
    return commands


class HostsTarget(Target):
    """Ranks on a list of machines, started through a launch agent (ssh)."""

    name = "hosts"

    def check(self, spec: JobSpec) -> None:
        hosts = _hosts(spec)
        if spec.use_docker:
            raise NotAvailableError("use_docker=True is not available on the hosts target yet")
        if not spec.environment.python.user_managed_dependencies:
            raise NotAvailableError(
                "user_managed=False: building environments on remote hosts is not available yet; "
                "pass user_managed=True and install the packages on every host"
            )
        if spec.hang_timeout_seconds is not None and not hosts.shared_filesystem:
            # The watchdog reads the rank logs here; without a shared filesystem they stay on
            # the hosts until the attempt ends, so every job would look hung.
            raise NotAvailableError(
                "hang_timeout_seconds with Hosts(shared_filesystem=False): the hang watchdog "
                "reads the ranks' logs, which reach this machine only after the attempt; "
                "use a shared filesystem or leave hang_timeout_seconds unset"
            )
        if spec.node_count > len(hosts.hosts):
            raise SpecError(
                f"node_count={spec.node_count} but the Hosts target lists "
                f"{len(hosts.hosts)} host(s)",
                field="node_count",
            )
        for host in hosts.hosts[: spec.node_count]:
            if spec.process_count_per_node > host.slots:
                raise SpecError(
                    f"process_count_per_node={spec.process_count_per_node} is more than host "
                    f"{host.name} offers (slots={host.slots}); raise its slots ('{host.name}:"
                    f"{spec.process_count_per_node}') or use fewer processes",
                    field="process_count_per_node",
                )

    def plan(self, spec: JobSpec, run: RunDir, resume_dir: Path | None) -> LaunchPlan:
        self.check(spec)
        hosts = _hosts(spec)
        used = hosts.hosts[: spec.node_count]
        python = hosts.python or local.interpreter(spec)
        wrapped = [*rank_wrapper_argv(python, run.logs), python, spec.entry_script, *spec.arguments]
        env = job_variables(spec, run, resume_dir, hosts=[h.name for h in used])
        env.update(MASTER_ADDR=used[0].name, MASTER_PORT=str(free_port()))
        if hosts.interface:
            env.update(GLOO_SOCKET_IFNAME=hosts.interface, NCCL_SOCKET_IFNAME=hosts.interface)
        config = spec.distribution
        if isinstance(config, Horovod) and config.launcher != "mpirun":
            raise NotAvailableError(
                "Horovod on the hosts target runs through mpirun (the MPI controller): "
                "pass Horovod(launcher='mpirun')"
            )
        listed = ", ".join(f"{h.name}:{h.slots}" for h in used)
        notes = [f"hosts: {listed}; agent: {shlex.join(hosts.agent_argv())}"]
        if isinstance(config, PyTorchConfiguration):
            env.update(torchrun_env(config))
            commands = _torchrun_commands(spec, hosts, python, wrapped, env, run)
        elif isinstance(config, (Mpi, Horovod)):
            user_env = spec.environment.environment_variables
            chosen = mpijob.on_host(config, python, hosts.agent_argv(), used[0].name, user_env)
            env.update(mpijob.variables(chosen, run, spec.world_size, None))
            settings = mpijob.settings(config)
            where = mpi.HostPlacement(
                host_list=",".join(f"{h.name}:{spec.process_count_per_node}" for h in used),
                agent=_mpi_agent(hosts, chosen.launcher.flavor, run),
                wdir=str(run.snapshot),
                exported=tuple(sorted({*env, *PER_ATTEMPT})),  # set by the supervisor
                network=hosts.network,
                local_address=hosts.local_address,
            )
            argv = mpi.mpi_argv(chosen.launcher, settings, spec.world_size, wrapped, where)
            commands = [argv]
            notes.append(f"MPI: {chosen.describe()}")
        else:
            commands = [
                _remote(hosts, used[0].name, run, env | {"RANK": "0", "WORLD_SIZE": "1"}, wrapped)
            ]
        if not hosts.shared_filesystem:
            notes.append(
                "no shared filesystem: the snapshot is copied to each host before each attempt"
            )
        return LaunchPlan(
            target=self.name,
            commands=commands,
            env=env,
            cwd=str(run.snapshot),
            world_size=spec.world_size,
            interpreter=python,
            notes=notes,
        )

    def before_attempt(self, spec: JobSpec, run: RunDir) -> None:
        hosts = _hosts(spec)
        if isinstance(spec.distribution, (Mpi, Horovod)) and len(hosts.agent_argv()) > 1:
            agent = run.path / AGENT_FILE
            agent.write_text(agent_program(hosts))
            agent.chmod(0o700)
        if not hosts.shared_filesystem:
            staging.stage_in(hosts, [h.name for h in hosts.hosts[: spec.node_count]], run)

    def after_attempt(self, spec: JobSpec, run: RunDir) -> None:
        hosts = _hosts(spec)
        if not hosts.shared_filesystem:
            staging.stage_out(hosts, [h.name for h in hosts.hosts[: spec.node_count]], run)
