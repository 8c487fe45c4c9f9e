"""Build an environment's Docker image once: ``ensure_image(env) -> BuiltImage``.

The image is tagged ``fitdock-env:<env hash[:16]>`` and labelled with the key of its
build (``DockerBuild.key()``: the Dockerfile and context, so a changed base override or
CA certificate rebuilds). A tagged image with the right key is a cache hit: one inspect
call, nothing built. Otherwise the legacy builder builds it through the docker SDK
(``client.api.build``), its output streamed to a progress display and to a log file; a
failure raises ``ImageBuildError`` naming the step (the Dockerfile instruction) and the
last lines of its output. An ``flock`` on ``$FITDOCK_HOME/locks/image-<hash>.lock`` makes
concurrent calls for one environment build once (the kernel frees it if a builder dies).

``docker`` (the ``docker`` extra) and ``rich`` are imported lazily; without ``rich`` the
progress is plain lines.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import io
import os
import re
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fitdock.environments.dockerfile import (
    BuildTier,
    DockerBuild,
    default_ca_certificates,
    render,
    tier_of,
)
from fitdock.environments.spec import Environment
from fitdock.errors import ImageBuildError, NotAvailableError
from fitdock.shared import fitdock_home, pause_at

REPOSITORY = "fitdock-env"
KEY_LABEL = "fitdock.build_key"
TAIL_LINES = 25
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOISE = ("---> ", "Removing intermediate container", "Successfully built", "Successfully tagged")


@dataclass(frozen=True)
class BuiltImage:
    """The image an environment runs in. ``built`` is False for a cache hit and for a
    custom image used as it is; ``layers_built`` counts the steps not taken from cache."""

    tag: str
    built: bool
    seconds: float
    layers_built: int = 0
    tier: BuildTier = BuildTier.FULL
    log: Path | None = None


def image_tag(env: Environment) -> str:
    """``fitdock-env:<hash[:16]>``: the tag of ``env``'s image."""
    return f"{REPOSITORY}:{env.hash()[:16]}"


def ensure_image(
    env: Environment,
    *,
    base_image: str | None = None,
    log: Path | None = None,
    progress: bool = True,
    client: Any = None,
    ca_certificates: Iterable[Path] | None = None,
) -> BuiltImage:
    """The image of ``env``, built when it is not there yet (see the module docstring).

    ``base_image`` replaces the curated base of a full build (``local/debian:bookworm``
    where no registry is reachable); ``ca_certificates`` defaults to this host's extra CAs
    (``default_ca_certificates()``); ``log`` defaults to
    ``$FITDOCK_HOME/images/<hash[:16]>.log``; ``client`` is a ``docker.DockerClient``
    (one made here is closed here)."""
    start = time.perf_counter()
    if client is not None:
        return _ensure(client, env, base_image, log, progress, ca_certificates, start)
    with contextlib.closing(docker_client()) as own:
        return _ensure(own, env, base_image, log, progress, ca_certificates, start)


def _ensure(
    client: Any,
    env: Environment,
    base_image: str | None,
    log: Path | None,
    progress: bool,
    ca_certificates: Iterable[Path] | None,
    start: float,
) -> BuiltImage:
    tier = tier_of(env)
    certs = default_ca_certificates() if ca_certificates is None else list(ca_certificates)
    base_user = (
        _image_user(client, str(env.docker.base_image)) if tier is BuildTier.INCREMENTAL else None
    )
    build = render(env, base_image=base_image, ca_certificates=certs, base_user=base_user)
    if build.use_as_is:
        _ensure_present(client, build.base_image)
        return BuiltImage(build.base_image, False, time.perf_counter() - start, tier=tier)
    tag = image_tag(env)
    if _cached(client, tag, build.key()):
        return BuiltImage(tag, False, time.perf_counter() - start, tier=tier)
    log = log or fitdock_home() / "images" / f"{env.hash()[:16]}.log"
    with _build_lock(env.hash(), progress):
        if _cached(client, tag, build.key()):  # another process built it meanwhile
            return BuiltImage(tag, False, time.perf_counter() - start, tier=tier)
        layers = _build(client, build, tag, log, progress)
    return BuiltImage(tag, True, time.perf_counter() - start, layers, tier, log)


def docker_client() -> Any:
    """``docker.from_env()``, or a ``NotAvailableError`` that says what to install/start."""
    try:
        import docker
    except ImportError as exc:
        raise NotAvailableError(
            "building images needs the docker SDK: pip install 'fitdock[docker]'"
        ) from exc
    try:
        return docker.from_env()
    except docker.errors.DockerException as exc:
        raise NotAvailableError(
            f"no Docker engine answers ({exc}); start dockerd (scripts/install-docker.sh "
            "installs and starts one) or set DOCKER_HOST"
        ) from exc


# ---------------------------------------------------------------------------------------------
# Engine queries
# ---------------------------------------------------------------------------------------------
def _inspect(client: Any, image: str) -> dict[str, Any] | None:
    import docker

    try:
        return dict(client.api.inspect_image(image))
    except docker.errors.ImageNotFound:
        return None


def _cached(client: Any, tag: str, key: str) -> bool:
    info = _inspect(client, tag)
    labels = ((info or {}).get("Config") or {}).get("Labels") or {}
    return bool(labels.get(KEY_LABEL) == key)


def _image_user(client: Any, image: str) -> str | None:
    """The ``USER`` of a custom image (pulled first when it is not here)."""
    _ensure_present(client, image)
    info = _inspect(client, image) or {}
    return (info.get("Config") or {}).get("User") or None


def _ensure_present(client: Any, image: str) -> None:
    import docker

    if _inspect(client, image) is not None:
        return
    try:
        client.images.pull(image)
    except docker.errors.DockerException as exc:
        raise ImageBuildError(
            f"the custom image {image} is not here and pulling it failed: {exc}; "
            "`docker pull`/`docker load` it first",
            tag=image,
        ) from exc


@contextlib.contextmanager
def _build_lock(env_hash: str, progress: bool) -> Iterator[None]:
    """An exclusive ``flock`` per environment, held while building."""
    path = fitdock_home() / "locks" / f"image-{env_hash}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another build of {env_hash[:16]} ...", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------
def _context_tar(build: DockerBuild) -> io.BytesIO:
    """The build context as an in-memory tar with fixed metadata (cache-stable)."""
    buffer = io.BytesIO()
    files = {"Dockerfile": build.dockerfile.encode(), **build.context_files}
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[name]))
    buffer.seek(0)
    return buffer


def _build(client: Any, build: DockerBuild, tag: str, log: Path, progress: bool) -> int:
    """Run the legacy build; return the number of steps not taken from cache."""
    import docker

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink, _display(progress) as show:
        watch = _BuildWatch(sink, show)
        try:
            events = client.api.build(
                fileobj=_context_tar(build),
                custom_context=True,
                tag=tag,
                labels={KEY_LABEL: build.key()},
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                network_mode="host",
            )
            for event in events:
                watch.feed(event)
                pause_at("image")  # a test hook (fitdock.shared.pause_at); inert otherwise
        except docker.errors.DockerException as exc:
            watch.error = watch.error or str(exc)
        if not watch.error:
            show(watch.total + 1, watch.total, "built")
    if watch.error:
        raise _failure(watch, tag, build, log)
    return watch.layers_built()


def _failure(watch: _BuildWatch, tag: str, build: DockerBuild, log: Path) -> ImageBuildError:
    where = f"step {watch.number}/{watch.total}: {watch.step}" if watch.step else "before step 1"
    hint = ""
    if watch.step and watch.step.upper().startswith("FROM"):
        hint = (
            f"\nthe base image {build.base_image} is not here and cannot be pulled; "
            "`docker pull`/`docker load` it (local/debian:bookworm: scripts/install-docker.sh)"
        )
    tail = list(watch.tail)
    return ImageBuildError(
        f"building {tag} failed at {where}\n{watch.error.strip()}{hint}\n"
        + ("last lines of its output:\n  " + "\n  ".join(tail) + "\n" if tail else "")
        + f"full log: {log}",
        tag=tag,
        step=watch.step,
        tail=tail,
        log=log,
    )


class _BuildWatch:
    """Follows the build's event stream: steps, cache hits, output lines, the error."""

    def __init__(self, sink: IO[str], show: Any) -> None:
        self.sink, self.show = sink, show
        self.number, self.total = 0, 0
        self.step: str | None = None
        self.steps: dict[int, tuple[str, bool]] = {}  # number -> (instruction, from cache)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.error = ""
        self._partial = ""

    def feed(self, event: dict[str, Any]) -> None:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            self.error = str(event.get("error") or detail.get("message") or event)
            self.sink.write(f"ERROR: {self.error}\n")
            return
        text = event.get("stream")
        if not isinstance(text, str):
            return
        self.sink.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(_ANSI.sub("", line.rsplit("\r", 1)[-1]).rstrip())

    def _line(self, line: str) -> None:
        match = _STEP.match(line)
        if match:
            self.number, self.total, self.step = int(match[1]), int(match[2]), match[3]
            self.steps[self.number] = (self.step, False)
            self.tail.clear()
            self.show(self.number, self.total, self.step)
        elif line.strip() == "---> Using cache" and self.step is not None:
            self.steps[self.number] = (self.step, True)
        elif line.strip() and not line.lstrip().startswith(_NOISE) and self.step is not None:
            self.tail.append(line)

    def layers_built(self) -> int:
        return sum(
            1
            for step, cached in self.steps.values()
            if not cached and not step.upper().startswith("FROM")
        )


@contextlib.contextmanager
def _display(progress: bool) -> Iterator[Any]:
    """A ``show(n, m, instruction)`` callback (``n = m + 1``: done): a rich progress bar on
    a terminal, plain lines elsewhere (CI logs) or without rich, nothing without progress."""
    if not progress:
        yield lambda n, m, step: None
        return
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    except ImportError:
        yield _plain
        return
    if not sys.stderr.isatty():
        yield _plain
        return
    columns = (
        TextColumn("[bold]image[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.elapsed:>5.0f} s  {task.description}"),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("", total=None)

        def show(n: int, m: int, step: str) -> None:
            bar.update(task, completed=n - 1, total=m, description=step[:70])

        yield show


def _plain(n: int, m: int, step: str) -> None:
    print(f"image: step {n}/{m} {step[:90]}" if n <= m else "image: built", file=sys.stderr)
