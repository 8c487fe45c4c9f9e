"""Targets by name: fitdock's own behind one base class, and a third party's through the
``fitdock.targets`` entry-point group, installed here as a real distribution (a
``.dist-info`` folder on sys.path) and used for a real fit."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import write_script

from fitdock import Estimator, RunStatus
from fitdock.errors import SpecError
from fitdock.targets import registry
from fitdock.targets.base import Target

PLUGIN = '''
from fitdock.targets.local import LocalTarget


class ToyTarget(LocalTarget):
    """This machine, under another name: what a third-party target looks like."""

    name = "toy"

    def plan(self, spec, run, resume_dir):
        plan = super().plan(spec, run, resume_dir)
        plan.env["TOY_TARGET"] = "yes"
        return plan


class NotATarget:
    name = "broken"
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    site = tmp_path / "site"
    (site / "toy_fitdock_target-1.0.dist-info").mkdir(parents=True)
    (site / "toy_fitdock_target.py").write_text(PLUGIN)
    info = site / "toy_fitdock_target-1.0.dist-info"
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: toy-fitdock-target\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [fitdock.targets]
            toy = toy_fitdock_target:ToyTarget
            broken = toy_fitdock_target:NotATarget
            local = toy_fitdock_target:ToyTarget
            """
        )
    )
    monkeypatch.syspath_prepend(str(site))
    registry._plugins.cache_clear()
    registry.get_target.cache_clear()
    yield
    registry._plugins.cache_clear()
    registry.get_target.cache_clear()
    sys.modules.pop("toy_fitdock_target", None)


def test_every_builtin_target_is_a_target() -> None:
    for name in ("local", "docker", "hosts", "slurm"):
        target = registry.get_target(name)
        assert isinstance(target, Target) and target.name == name
    assert registry.get_target("slurm").schedules_attempts
    assert not registry.get_target("local").schedules_attempts


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match="not a known target; known: docker, hosts, local, slurm"):
        registry.get_target("kubernetes")


def test_a_third_party_target_comes_from_its_entry_point(tmp_path: Path, plugin: None) -> None:
    assert registry.known() == ["broken", "docker", "hosts", "local", "slurm", "toy"]
    assert registry.get_target("local").__class__.__module__ == "fitdock.targets.local"  # kept
    with pytest.raises(SpecError, match="is not a fitdock Target class"):
        registry.get_target("broken")
    source = write_script(
        tmp_path / "src", "import os\nprint('toy', os.environ['TOY_TARGET'], flush=True)\n"
    )
    run = Estimator(source, entry_script="train.py", compute_target="toy", user_managed=True).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.record["target"] == "toy"
    assert (run.log_dir / "rank_0.stdout.log").read_text() == "toy yes\n"
