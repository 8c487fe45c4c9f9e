"""A model registry on this machine, in Azure v1's names (``Model``, ``run.register_model``).

    $FITDOCK_HOME/models/<name>/.lock                   held (filelock) while a version is added
    $FITDOCK_HOME/models/<name>/<version>/model.json    name, version, run_id, tags, properties,
                                                        description, created_time, path
    $FITDOCK_HOME/models/<name>/<version>/files/<path>  a copy of the model's file or folder

Versions count 1, 2, ... per name. A registration copies the files into a hidden folder
beside the versions first, then, holding the lock, takes the next number and renames the
folder to it: two processes registering at once get two versions, and a reader never sees
a version without its files.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fitdock.errors import SpecError
from fitdock.runs.layout import MODEL_FILES, MODEL_RECORD, MODELS
from fitdock.shared import fitdock_home, now_iso, write_json_atomic

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")  # Azure's rule for model names
LOCK = ".lock"
LOCK_TIMEOUT_S = 60.0


def registry_root(home: Path | None = None) -> Path:
    return (home or fitdock_home()) / MODELS


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError(
            f"a model name is letters, digits, '-', '_' and '.' (at most 255, not starting "
            f"with '-', '_' or '.'), got {name!r}",
            field="model_name",
        )
    return name


def versions(name: str, home: Path | None = None) -> list[int]:
    """The registered versions of ``name``, oldest first."""
    folder = registry_root(home) / name
    if not folder.is_dir():
        return []
    found = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    return sorted(v for v in found if (folder / str(v) / MODEL_RECORD).is_file())


def register(
    name: str,
    source: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    description: str | None = None,
    extra: dict[str, Any] | None = None,
    home: Path | None = None,
) -> Model:
    """Copy the file or folder ``source`` into the registry as the next version of
    ``name``; return that version."""
    from filelock import FileLock

    check_name(name)
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"cannot register model {name!r}: {source} does not exist")
    folder = registry_root(home) / name
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=folder))
    try:
        files = staging / MODEL_FILES
        files.mkdir()
        if source.is_dir():
            shutil.copytree(source, files / source.name, symlinks=True)
        else:
            shutil.copy2(source, files / source.name)
        with FileLock(folder / LOCK, timeout=LOCK_TIMEOUT_S):
            version = max(versions(name, home), default=0) + 1
            info = {
                "name": name,
                "version": version,
                "run_id": run_id,
                "tags": {k: str(v) for k, v in (tags or {}).items()},
                "properties": {k: str(v) for k, v in (properties or {}).items()},
                "description": description,
                "created_time": now_iso(),
                "path": source.name,
                **(extra or {}),
            }
            write_json_atomic(staging / MODEL_RECORD, info)
            os.rename(staging, folder / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Model(name, version=version, home=home)


class Model:
    """A registered model (Azure v1's ``azureml.core.Model``): ``Model(name)`` is its newest
    version, ``Model(name, version=2)`` that one; ``Model(workspace, name)`` and
    ``Model(id="name:2")`` work too (the workspace is accepted and ignored)."""

    def __init__(
        self,
        *args: Any,
        name: str | None = None,
        version: int | None = None,
        id: str | None = None,  # Azure's name
        workspace: Any = None,
        home: Path | None = None,
    ) -> None:
        if args and isinstance(args[0], str):
            name = args[0]
        elif len(args) > 1:  # Model(ws, name)
            name = args[1]
        if id is not None:
            name, _, given = id.partition(":")
            version = int(given) if given else version
        self._home = home
        self.name = check_name(name)
        known = versions(self.name, home)
        if not known:
            raise SpecError(f"no model {self.name!r}; {_known_text(home)}", field="name")
        if version is None:
            version = known[-1]
        if version not in known:
            raise SpecError(
                f"model {self.name!r} has no version {version}; it has {known}", field="version"
            )
        self.version: int = version
        self.folder = registry_root(home) / self.name / str(version)
        info = json.loads((self.folder / MODEL_RECORD).read_text())
        self.run_id: str | None = info.get("run_id")
        self.tags: dict[str, str] = info.get("tags") or {}
        self.properties: dict[str, str] = info.get("properties") or {}
        self.description: str | None = info.get("description")
        self.created_time: str = info.get("created_time", "")
        self.info: dict[str, Any] = info
        self.path: Path = self.folder / MODEL_FILES / info["path"]  # the registered copy

    @property
    def id(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def register(
        cls,
        workspace: Any = None,
        model_path: str | os.PathLike[str] | None = None,
        model_name: str | None = None,
        tags: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
        description: str | None = None,
        home: Path | None = None,
    ) -> Model:
        """Register a file or folder of this machine (``run.register_model`` registers one
        of a run's)."""
        if model_path is None or model_name is None:
            raise SpecError("Model.register needs model_path and model_name", field="model_path")
        return register(model_name, model_path, tags=tags, properties=properties,
                        description=description, home=home)  # fmt: skip

    @classmethod
    def list(
        cls,
        workspace: Any = None,
        name: str | None = None,
        tags: Sequence[str | Sequence[str]] | None = None,
        properties: Sequence[str | Sequence[str]] | None = None,
        latest: bool = False,
        run_id: str | None = None,
        home: Path | None = None,
    ) -> builtins.list[Model]:
        """The registered models (every version, or the newest of each with ``latest``),
        by name then version; ``tags``/``properties`` filter as in Azure: ``["key"]`` (has
        it) or ``[["key", "value"]]``."""
        root = registry_root(home)
        names = [name] if name else sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        found = []
        for each in names:
            known = versions(each, home)
            for version in known[-1:] if latest else known:
                model = cls(each, version=version, home=home)
                if (run_id is None or model.run_id == run_id) and (
                    _matches(model.tags, tags) and _matches(model.properties, properties)
                ):
                    found.append(model)
        return found

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None, _workspace: Any = None) -> str:
        """Where the registered copy of the model's file or folder is (scoring scripts)."""
        return str(Model(model_name, version=version).path)

    def download(self, target_dir: str | os.PathLike[str] = ".", exist_ok: bool = False) -> str:
        """Copy the model's file or folder into ``target_dir``; return where it went."""
        target = Path(target_dir) / self.path.name
        if target.exists() and not exist_ok:
            raise FileExistsError(f"{target} exists; pass exist_ok=True to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            shutil.copytree(self.path, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(self.path, target)
        return str(target)

    def serialize(self) -> dict[str, Any]:
        """``model.json``, as Azure's ``Model.serialize()`` gives a model's description."""
        return {**self.info, "id": self.id}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and (self.folder == other.folder)

    def __hash__(self) -> int:
        return hash(self.folder)

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, version={self.version})"


def _matches(have: dict[str, str], wanted: Iterable[str | Sequence[str]] | None) -> bool:
    for item in wanted or ():
        if isinstance(item, str):
            if item not in have:
                return False
        elif have.get(item[0]) != str(item[1]):
            return False
    return True


def _known_text(home: Path | None) -> str:
    root = registry_root(home)
    names = (
        sorted(p.name for p in root.iterdir() if versions(p.name, home)) if root.is_dir() else []
    )
    return f"the registry ({root}) has: {', '.join(names)}" if names else f"{root} has none"
