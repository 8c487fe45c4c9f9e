"""``LaunchPlan``: what a launcher will run, as data that can be printed and compared."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LaunchPlan:
    """The command(s) (one, or one per host when a launcher runs on each host), the variables
    fitdock sets on top of the caller's environment, the working directory, and any files
    the target needs (none for the local target)."""

    target: str
    commands: list[list[str]]
    env: dict[str, str]
    cwd: str
    world_size: int
    interpreter: str
    files: dict[str, str] = field(default_factory=dict)
    relay_orders: bool = False  # the commands are reapers themselves (e.g. inside a container)
    notes: list[str] = field(default_factory=list)
    main_file: str | None = None  # the file that *is* the plan (an sbatch script)
    # The one command is the job's only rank, run by the reaper itself, which keeps the
    # rank's logs and exit record in this folder (no rank wrapper: one interpreter less).
    rank_logs: str | None = None
    # Planned before the environment exists (a virtualenv or an image not built yet):
    # the supervisor plans again once it is prepared.
    provisional: bool = False

    @property
    def argv(self) -> list[str]:
        """The first (usually the only) command."""
        return self.commands[0]

    def dry_run_text(self) -> str:
        """What ``--dry-run`` prints: the main file as it is (ready to read or diff), else
        ``render()``."""
        if self.main_file is not None:
            return self.files[self.main_file]
        return self.render()

    def render(self) -> str:
        lines = [f"target: {self.target}", f"ranks: {self.world_size}", f"cwd: {self.cwd}", "argv:"]
        lines += ["  " + shlex.join(command) for command in self.commands]
        lines.append("environment:")
        lines += [f"  {key}={value}" for key, value in sorted(self.env.items())]
        for name, text in sorted(self.files.items()):
            lines += [f"file {name}:", *("  " + line for line in text.splitlines())]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)
