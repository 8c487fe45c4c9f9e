"""The hosts target's plans (pure: nothing runs). The real multi-host runs are in
test_hosts_runs.py, over network-namespace hosts."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from fitdock import Estimator, Hosts, Mpi, PyTorch, PyTorchConfiguration
from fitdock.distributions.mpi import Flavor, MpiLauncher
from fitdock.distributions.mpimatch import MpiMatch
from fitdock.errors import SpecError
from fitdock.specs.compute import Host
from fitdock.targets.hosts import target as hosts_target
from fitdock.targets.hosts.target import AGENT_FILE, agent_program


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('hi')\n")
    return tmp_path / "src"


def chosen(monkeypatch: pytest.MonkeyPatch, launcher: MpiLauncher) -> None:
    """The launcher the MPI match would choose: these plans reach no host to probe
    (tests/test_hosts_runs.py probes real ones)."""
    choice = MpiMatch(launcher, {"MPI4PY_LIBMPI": "libmpi.so.40"})
    monkeypatch.setattr(hosts_target.mpijob, "on_host", lambda *args: choice)


@pytest.fixture
def open_mpi(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen(monkeypatch, MpiLauncher("/usr/bin/mpirun", Flavor.OPEN_MPI, "4.1.4"))


def test_host_parsing_and_hostfile(tmp_path: Path) -> None:
    assert Host.parse("node1:4") == Host(name="node1", slots=4)
    assert Host.parse("10.0.0.2 slots=3 max_slots=8") == Host(name="10.0.0.2", slots=3)
    assert Host.parse("node3") == Host(name="node3", slots=1)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\nnode1 slots=2\n\nnode2:2  # second\n")
    assert Hosts(hostfile=hostfile).hosts == (
        Host(name="node1", slots=2),
        Host(name="node2", slots=2),
    )


@pytest.mark.parametrize("bad", ["node;rm -rf /", "$(hostname)", "-oProxyCommand=x"])
def test_host_names_cannot_smuggle_shell_or_options(bad: str) -> None:
    with pytest.raises(SpecError, match="not a host name"):
        Hosts([bad])


def test_ssh_agent_options() -> None:
    hosts = Hosts(["n1"], ssh_user="ml", ssh_port=2222, ssh_key=Path("/k"), ssh_options=("-v",))
    assert hosts.agent_argv() == [
        "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
        "-l", "ml", "-p", "2222", "-i", "/k", "-v",
    ]  # fmt: skip
    assert Hosts(["n1"], agent=("ip", "netns", "exec")).agent_argv() == ["ip", "netns", "exec"]


def test_open_mpi_plan_places_ranks_on_the_hosts(source: Path, open_mpi: None) -> None:
    target = Hosts(["n1:2", "n2:2"], agent=("/opt/agent", "--quiet"), network="10.9.0.0/24")
    est = Estimator(
        source, entry_script="train.py", compute_target=target, node_count=2,
        process_count_per_node=2, distributed_training=Mpi(), user_managed=True,
    )  # fmt: skip
    plan = est.plan()
    argv = plan.argv
    assert plan.target == "hosts" and plan.world_size == 4
    assert argv[:3] == ["/usr/bin/mpirun", "-n", "4"]
    assert argv[argv.index("--host") + 1] == "n1:2,n2:2"
    assert argv[argv.index("plm_rsh_agent") + 1] == "/opt/agent --quiet"
    assert argv[argv.index("btl_tcp_if_include") + 1] == "10.9.0.0/24"
    exported = {argv[i + 1] for i, word in enumerate(argv) if word == "-x"}
    assert {"FITDOCK_RUN_ID", "FITDOCK_LOG_DIR", "MASTER_ADDR", "PYTHONUNBUFFERED"} <= exported
    assert "FITDOCK_ATTEMPT" in exported  # set by the supervisor for each attempt
    assert plan.env["MASTER_ADDR"] == "n1"
    assert argv[-2:] == [str(Path(argv[-2])), "train.py"]


def test_torchrun_plan_is_one_quoted_agent_command_per_host(source: Path) -> None:
    config = PyTorchConfiguration(communication_backend="gloo", process_count=4, node_count=2)
    est = PyTorch(
        source, entry_script="train.py", script_params=["--tag", "$(touch PWNED)"],
        compute_target=Hosts(["n1:2", "n2:2"], agent=("/opt/agent",)),
        distributed_training=config, user_managed=True,
    )  # fmt: skip
    plan = est.plan()
    assert len(plan.commands) == 2
    for node_rank, command in enumerate(plan.commands):
        assert command[:2] == ["/opt/agent", f"n{node_rank + 1}"]
        words = shlex.split(command[2])  # what the remote shell will see
        assert words[words.index("--node-rank") + 1] == str(node_rank)
        assert words[words.index("--rdzv-endpoint") + 1].startswith("n1:")
        assert words[-2:] == ["--tag", "$(touch PWNED)"]  # one literal word, never expanded
        assert f"NODE_RANK={node_rank}" in words


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"node_count": 3, "process_count_per_node": 1}, "node_count", "lists 2 host(s)"),
        ({"node_count": 2, "process_count_per_node": 3}, "process_count_per_node", "slots=2"),
    ],
)
def test_shape_must_fit_the_hosts(
    source: Path, open_mpi: None, kwargs: dict, field: str, message: str
) -> None:
    est = Estimator(
        source, entry_script="train.py", compute_target=Hosts(["n1:2", "n2:2"]),
        distributed_training=Mpi(), user_managed=True, **kwargs,
    )  # fmt: skip
    with pytest.raises(SpecError) as caught:
        est.plan()
    assert caught.value.field == field and message in str(caught.value)


def test_mpich_needs_a_one_program_agent(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen(monkeypatch, MpiLauncher("/x/mpiexec", Flavor.MPICH, "5.0"))
    est = Estimator(
        source, entry_script="train.py", compute_target=Hosts(["n1:1", "n2:1"], agent=("/a",)),
        node_count=2, distributed_training=Mpi(), user_managed=True,
    )  # fmt: skip
    argv = est.plan().argv
    assert argv[argv.index("-launcher-exec") + 1] == "/a"
    assert argv[argv.index("-hosts") + 1] == "n1:1,n2:1"
    hosts = Hosts(["n1:1", "n2:1"], ssh_port=2222)
    est = Estimator(
        source, entry_script="train.py", compute_target=hosts,
        node_count=2, distributed_training=Mpi(), user_managed=True,
    )  # fmt: skip
    argv = est.plan().argv  # ssh with options: fitdock writes the one program before the attempt
    assert Path(argv[argv.index("-launcher-exec") + 1]).name == AGENT_FILE
    assert agent_program(hosts) == (
        '#!/bin/sh\nexec ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -p 2222 "$@"\n'
    )


def test_the_name_hosts_alone_asks_for_the_list(source: Path) -> None:
    est = Estimator(source, entry_script="train.py", compute_target="hosts", user_managed=True)
    with pytest.raises(SpecError, match=r"Hosts\(\["):
        est.plan()
