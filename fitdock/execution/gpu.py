"""NVIDIA GPUs on this machine: what was looked for and what it showed.

``submit`` calls :func:`warn_if_no_gpu` for ``use_gpu=True`` jobs whose ranks run here (a
job would otherwise run on the CPU without a word); ``fitdock doctor`` shows the same
probe as its ``gpu`` row.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from fitdock.errors import GpuNotFoundWarning
from fitdock.process import tool

DRIVER = Path("/proc/driver/nvidia/version")
SMI_TIMEOUT = 10.0  # seconds for `nvidia-smi -L`
# Targets whose ranks run on this machine (in a container or not): a GPU must be seen here.
RANKS_HERE = frozenset({"local", "docker"})


@dataclass(frozen=True)
class NvidiaGpus:
    """What this machine shows of NVIDIA GPUs."""

    driver: str | None  # the first line of /proc/driver/nvidia/version
    devices: tuple[str, ...]  # /dev/nvidia0, /dev/nvidia1, ...
    smi: str | None  # where nvidia-smi is
    listed: tuple[str, ...]  # `nvidia-smi -L`: "GPU 0: NVIDIA H200 (UUID: ...)"
    hidden_by: str | None = None  # CUDA_VISIBLE_DEVICES, when it hides every GPU

    @property
    def visible(self) -> bool:
        return self.hidden_by is None and bool(self.listed or (self.driver and self.devices))

    def looked_for(self) -> str:
        """What was looked for, and what each place showed."""
        smi = f"{self.smi} lists {len(self.listed)}" if self.smi else "not on PATH"
        parts = [
            f"the driver ({DRIVER}: {'present' if self.driver else 'absent'})",
            f"nvidia-smi ({smi})",
            f"devices (/dev/nvidia[0-9]*: {', '.join(self.devices) or 'none'})",
        ]
        if self.hidden_by is not None:
            parts.append(f"CUDA_VISIBLE_DEVICES={self.hidden_by!r} hides them")
        return "; ".join(parts)

    def describe(self) -> str:
        """``2: NVIDIA H200, NVIDIA H200 (driver: ...)``."""
        names = [line.split(":", 1)[1].split("(UUID")[0].strip() for line in self.listed]
        shown = f"{len(names)}: {', '.join(names)}" if names else f"{len(self.devices)} devices"
        return f"{shown} (driver: {self.driver or 'unknown'})"


def nvidia_gpus() -> NvidiaGpus:
    """Look for NVIDIA GPUs: the driver's file, /dev/nvidia*, and ``nvidia-smi -L`` (run
    only when it is on PATH)."""
    try:
        driver: str | None = DRIVER.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        driver = None
    devices = tuple(sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*")))
    smi = shutil.which("nvidia-smi")
    listed: tuple[str, ...] = ()
    if smi is not None:
        code, out, _ = tool([smi, "-L"], timeout=SMI_TIMEOUT)
        if code == 0:
            listed = tuple(line for line in out.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = [d for d in (visible or "").split(",") if d.strip() not in ("", "-1")]
    hidden_by = visible if visible is not None and not shown else None
    return NvidiaGpus(driver, devices, smi, listed, hidden_by)


@functools.cache
def _gpus_once() -> NvidiaGpus:
    return nvidia_gpus()


_warned = threading.Event()


def warn_if_no_gpu() -> None:
    """Warn (a ``GpuNotFoundWarning``, once per process) when no NVIDIA GPU is visible
    here: a ``use_gpu=True`` job whose ranks run here would run on the CPU."""
    gpus = _gpus_once()
    if gpus.visible or _warned.is_set():
        return
    _warned.set()
    warnings.warn(
        "use_gpu=True, but this machine shows no NVIDIA GPU, so the job runs on the CPU; "
        f"looked for {gpus.looked_for()}. `fitdock doctor` shows what this machine has",
        GpuNotFoundWarning,
        stacklevel=_outside_fitdock(),
    )


def forget() -> None:
    """Probe again, and warn again, on the next call (after installing a driver; tests)."""
    _gpus_once.cache_clear()
    _warned.clear()


def _outside_fitdock() -> int:
    """The stack level of the first caller outside the fitdock package (the user's fit())."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(1), 1  # level 1: our caller, the one that warns
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level
