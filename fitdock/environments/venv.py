"""Local virtual environments, built once per environment with uv and cached.

    $FITDOCK_HOME/envs/<key[:16]>/            a complete environment (a relocatable uv venv)
        fitdock-env.json                      its completeness marker: written last, atomically
        build.log                             uv's output
        last-used                             touched each time it is reused
    $FITDOCK_HOME/envs/.<key[:16]>.lock       held (filelock) while it is built or removed
    $FITDOCK_HOME/envs/.<key[:16]>.tmp-*      a build in progress, or what a dead one left
    $FITDOCK_HOME/envs/.<key[:16]>.failed.log the log of the last failed build
    $FITDOCK_HOME/locks/<python key[:16]>.txt a pinned lock (``lock.lock_pip``): used if present

An environment is built in a temporary folder next to its final one and renamed into
place only when complete, so a build killed at any moment never leaves one that looks
done; the next build of its key, and ``prune`` (``fitdock env prune --leftovers``), remove
what it left. The key hashes what shapes a venv: the python section (``python_version`` filled
in with this interpreter's when unset), where fitdock itself comes from (it is installed
too, so scripts can ``from fitdock import Run``) and the lock's contents.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitdock.environments.lock import (
    LOCK_KEY,
    default_lock_path,
    python_key,
    python_version_of,
    sha256_json,
)
from fitdock.environments.spec import LOCAL_CONDA_ADVICE, Environment, refuse_conda
from fitdock.environments.uvtool import (
    FitdockSource,
    find_interpreter,
    installed_packages,
    note,
    run_uv,
    uv_options,
    version_of,
)
from fitdock.errors import EnvironmentResolutionError, SpecError
from fitdock.shared import fitdock_home, pause_at, write_json_atomic

__all__ = [
    "BuiltEnv",
    "CachedEnv",
    "default_lock_path",
    "ensure_venv",
    "find_interpreter",
    "list_cached",
    "prune",
    "python_key",
]

MARKER = "fitdock-env.json"
BUILD_LOG = "build.log"
LAST_USED = "last-used"


@dataclass(frozen=True)
class BuiltEnv:
    """A ready environment. ``hash`` is its cache key (see the module docstring)."""

    hash: str
    path: Path
    python: Path
    built: bool  # False: reused as it was, nothing was installed
    seconds: float
    packages: list[str]  # "name==version", as installed
    lock: Path | None


@dataclass(frozen=True)
class CachedEnv:
    """A complete environment in the cache."""

    hash: str
    path: Path
    size: int  # bytes
    created: dt.datetime
    last_used: dt.datetime
    python_version: str
    name: str


@dataclass(frozen=True)
class _Plan:
    key: str
    root: Path  # $FITDOCK_HOME/envs
    final: Path
    lock: Path | None
    source: FitdockSource


def envs_root(home: Path | None = None) -> Path:
    return (home or fitdock_home()) / "envs"


def _plan(env: Environment, home: Path | None, lock: Path | None) -> _Plan:
    if lock is None:
        found = default_lock_path(env, home)
        lock = found if found.is_file() else None
    digest = None
    if lock is not None:
        lock = lock.resolve()
        digest = hashlib.sha256(_read_lock(lock, env).encode()).hexdigest()
    source = FitdockSource.running()
    key = sha256_json({"python": python_key(env), "fitdock": source.identity, "lock": digest})
    root = envs_root(home)
    return _Plan(key, root, root / key[:16], lock, source)


def venv_path(env: Environment, home: Path | None = None) -> Path:
    """Where ``ensure_venv`` puts (or found) ``env``'s virtualenv; builds nothing."""
    return _plan(env, home, None).final


def _read_lock(lock: Path, env: Environment) -> str:
    try:
        text = lock.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the lock file {lock}: {exc}", field="lock") from exc
    made_for = LOCK_KEY.search(text)
    if made_for and made_for.group(1) != python_key(env):
        raise EnvironmentResolutionError(
            f"the lock {lock} was made for other packages or another Python than environment "
            f"{env.name!r} now has; make it again (fitdock.environments.lock.lock_pip)"
        )
    return text


def _check_buildable(env: Environment) -> None:
    py = env.python
    if py.user_managed_dependencies:
        raise SpecError(
            f"environment {env.name!r} is user-managed: it runs {py.interpreter_path!r} as it "
            "is and has no venv to build",
            field="user_managed_dependencies",
        )
    refuse_conda(env, "the local virtualenv builder", LOCAL_CONDA_ADVICE)


# ---------------------------------------------------------------------------------------------
# ensure_venv
# ---------------------------------------------------------------------------------------------
def ensure_venv(
    env: Environment,
    *,
    home: Path | None = None,
    log: Path | None = None,
    lock: Path | None = None,
) -> BuiltEnv:
    """The venv for ``env``, built once with uv (``uv pip sync`` of ``lock``, or of the
    default lock when present, else ``uv pip install``), then reused without any install
    step. Processes asking for the same environment at once build it once."""
    start = time.monotonic()
    _check_buildable(env)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    plan = _plan(env, home, lock)
    reused = _reuse(plan, start, log)
    if reused is not None:
        return reused
    interpreter = find_interpreter(python_version_of(env))
    plan.root.mkdir(parents=True, exist_ok=True)
    with _lock(plan.root / f".{plan.final.name}.lock", wait=True, log=log):
        reused = _reuse(plan, start, log)  # another process may have built it meanwhile
        if reused is not None:
            return reused
        _clean_leftovers(plan)
        packages = _build(plan, env, interpreter, log)
    python, seconds = plan.final / "bin" / "python", time.monotonic() - start
    return BuiltEnv(plan.key, plan.final, python, True, seconds, packages, plan.lock)


def _reuse(plan: _Plan, start: float, log: Path | None) -> BuiltEnv | None:
    marker = _read_marker(plan.final)
    python = plan.final / "bin" / "python"
    if marker is None or marker.get("key") != plan.key or not python.exists():
        return None
    with contextlib.suppress(OSError):  # a shared, read-only cache
        (plan.final / LAST_USED).touch()
    if log is not None:
        note([log], f"fitdock: reusing environment {plan.final} (built {marker['created']})")
    seconds = time.monotonic() - start
    packages = list(marker["packages"])
    return BuiltEnv(plan.key, plan.final, python, False, seconds, packages, plan.lock)


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


@contextlib.contextmanager
def _lock(path: Path, *, wait: bool, log: Path | None = None) -> Iterator[bool]:
    """Hold the filelock at ``path`` (``flock``: freed when its holder dies, even by
    SIGKILL); yield whether it is held (always, with ``wait``)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            yield False
            return
        if log is not None:
            note([log], f"fitdock: waiting for the process building {path.name[1:17]}")
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


def _build(plan: _Plan, env: Environment, interpreter: Path, log: Path | None) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix=f".{plan.final.name}.tmp-", dir=plan.root))
    logs = [tmp / BUILD_LOG, *([log] if log else [])]
    started = time.monotonic()
    try:
        note(logs, f"fitdock: building environment {env.name!r} into {plan.final}")
        run_uv(
            ["venv", "--relocatable", "--allow-existing", "--python", str(interpreter), str(tmp)],
            logs=logs,
            cwd=plan.root,
        )
        pause_at("environment")  # a test hook (fitdock.shared.pause_at); inert otherwise
        _install(plan, env, tmp, logs)
        python = tmp / "bin" / "python"  # uv resolved the set: no `pip check` needed
        packages = installed_packages(python)
        write_json_atomic(tmp / MARKER, _marker(plan, env, interpreter, packages, started))
        (tmp / LAST_USED).touch()
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700
        os.rename(tmp, plan.final)
        (plan.root / f".{plan.final.name}.failed.log").unlink(missing_ok=True)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.copyfile(tmp / BUILD_LOG, plan.root / f".{plan.final.name}.failed.log")
        _remove(tmp)
        raise
    note(logs[1:], f"fitdock: built {plan.final} in {time.monotonic() - started:.1f} s")
    return packages


def _install(plan: _Plan, env: Environment, tmp: Path, logs: Sequence[Path]) -> None:
    python = tmp / "bin" / "python"
    common = ["--python", str(python), *uv_options(env, tmp)]
    source = plan.source
    if plan.lock is not None:
        run_uv(["pip", "sync", *common, str(plan.lock)], logs=logs, cwd=plan.root)
        if source.checkout is not None:
            editable = ["--no-deps", "-e", str(source.checkout)]
            run_uv(["pip", "install", *common, *editable], logs=logs, cwd=plan.root)
    else:
        packages = env.canonical()["python"]["pip_packages"]
        install = ["pip", "install", *common, *packages, *source.install_args()]
        run_uv(install, logs=logs, cwd=plan.root)
    if source.checkout is None:
        source.copy_into(python)


def _marker(
    plan: _Plan, env: Environment, interpreter: Path, packages: list[str], started: float
) -> dict[str, Any]:
    return {
        "key": plan.key,
        "name": env.name,
        "env_hash": env.hash(),
        "python_version": version_of(interpreter),
        "interpreter": str(interpreter),
        "fitdock": plan.source.identity,
        "lock": str(plan.lock) if plan.lock else None,
        "packages": packages,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 3),
    }


# ---------------------------------------------------------------------------------------------
# Leftovers, listing and pruning
# ---------------------------------------------------------------------------------------------
def _clean_leftovers(plan: _Plan) -> None:
    """With the key's lock held: remove what dead builds of it left, and an environment
    that is there but not reusable (its interpreter is gone, say)."""
    for leftover in plan.root.glob(f".{plan.final.name}.t*-*"):  # .tmp-* and .trash-*
        _remove(leftover)
    if plan.final.exists():
        _discard(plan.final)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _discard(path: Path) -> None:
    """Rename first, so a half-removed environment never looks complete; then remove."""
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.trash-", dir=path.parent))
    os.rename(path, trash / path.name)
    _remove(trash)


def list_cached(home: Path | None = None) -> list[CachedEnv]:
    """The complete environments in the cache, least recently used first."""
    found = [_cached(path, marker) for path, marker in _complete(envs_root(home))]
    return sorted(found, key=lambda cached: cached.last_used)


def _cached(path: Path, marker: dict[str, Any]) -> CachedEnv:
    return CachedEnv(
        hash=marker["key"],
        path=path,
        size=_tree_size(path),
        created=dt.datetime.fromisoformat(marker["created"]),
        last_used=_last_used(path),
        python_version=marker["python_version"],
        name=marker["name"],
    )


def prune(
    home: Path | None = None,
    *,
    keep_hashes: set[str] | frozenset[str] = frozenset(),
    older_than_days: float | None = None,
    leftovers_only: bool = False,
) -> list[Path]:
    """Remove cached environments, except those whose key starts with one of
    ``keep_hashes`` and, with ``older_than_days``, those used more recently; also what
    dead builds left (half-built folders, lock files of keys with no environment).
    ``leftovers_only``: only what dead builds left. Environments being built are left
    alone. Returns what was removed."""
    root = envs_root(home)
    if not root.is_dir():
        return []
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    removed = []
    for path, marker in [] if leftovers_only else _complete(root):
        if any(h and marker["key"].startswith(h) for h in keep_hashes):
            continue
        if cutoff is not None and _last_used(path).timestamp() >= cutoff:
            continue
        with _lock(root / f".{path.name}.lock", wait=False) as held:
            if held:
                _discard(path)
                removed.append(path)
    return removed + _sweep(root)


def _complete(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        marker = _read_marker(path) if not path.name.startswith(".") else None
        if marker is not None and str(marker.get("key", "")).startswith(path.name):
            yield path, marker


def _sweep(root: Path) -> list[Path]:
    """Remove the temporary folders of builds that are no longer running (returned), then
    the lock files of keys that have no environment and no build running (bookkeeping, not
    returned). A lock file goes while held; a build that opened it in that instant could
    run beside a later one, which costs a failed build, never one that looks complete."""
    removed = []
    for leftover in sorted(root.glob(".*.t*-*")):
        name = leftover.name[1:].split(".", 1)[0]
        if not leftover.is_dir() or not re.fullmatch(r"[0-9a-f]{16}", name):
            continue
        with _lock(root / f".{name}.lock", wait=False) as held:
            if held:
                _remove(leftover)
                removed.append(leftover)
    for lock in sorted(root.glob(".*.lock")):
        name = lock.name[1:-5]
        if re.fullmatch(r"[0-9a-f]{16}", name) and not (root / name).exists():
            with _lock(lock, wait=False) as held:
                if held and not any(root.glob(f".{name}.t*-*")):
                    lock.unlink(missing_ok=True)
    return removed


def _last_used(path: Path) -> dt.datetime:
    try:
        stamp = (path / LAST_USED).stat().st_mtime
    except OSError:
        stamp = (path / MARKER).stat().st_mtime
    return dt.datetime.fromtimestamp(stamp, dt.timezone.utc)


def _tree_size(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total
