"""The curated catalogue: framework x version x device -> Environment.

Rows live in ``curated.yml`` (package data). History rows record
what Azure ML's curated images held and point at the current row that replaces
them; looking one up gives the replacement and a ``FutureWarning``.
"""

from __future__ import annotations

import functools
import warnings
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from fitdock.environments.spec import DockerSection, Environment, Platform, PythonSection
from fitdock.errors import EnvironmentResolutionError

Framework = Literal["chainer", "pytorch", "none", "script"]


class CatalogueRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    framework: Framework
    framework_version: str
    gpu: bool
    buildable: bool
    replaced_by: str | None = None
    base_image: str
    python_version: str
    platform: Platform = Field(default_factory=Platform)
    conda_packages: tuple[str, ...] = ()
    pip_packages: tuple[str, ...] = ()
    pip_extra_index_urls: tuple[str, ...] = ()
    build_constraints: tuple[str, ...] = ()
    environment_variables: dict[str, str] = Field(default_factory=dict)

    def to_environment(self) -> Environment:
        return Environment(
            name=self.name,
            version=self.framework_version,
            python=PythonSection(
                python_version=self.python_version,
                conda_packages=list(self.conda_packages),
                pip_packages=list(self.pip_packages),
                pip_extra_index_urls=list(self.pip_extra_index_urls),
                build_constraints=list(self.build_constraints),
            ),
            docker=DockerSection(base_image=self.base_image, gpu_support=self.gpu),
            platform=self.platform,
            environment_variables=dict(self.environment_variables),
        )


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: dict[str, str]
    rows: tuple[CatalogueRow, ...]

    def get(self, name: str) -> CatalogueRow:
        for row in self.rows:
            if row.name == name:
                return row
        known = ", ".join(row.name for row in self.rows)
        raise EnvironmentResolutionError(f"no curated environment {name!r}; known: {known}")

    def supported_versions(self, framework: Framework) -> list[str]:
        versions = {row.framework_version for row in self.rows if row.framework == framework}
        return sorted(versions, key=_version_key)

    def default_version(self, framework: Framework) -> str:
        return self.defaults[framework]

    def lookup(self, framework: Framework, version: str | None, gpu: bool) -> CatalogueRow:
        """The buildable row for a framework version on CPU or GPU."""
        version = version or self.default_version(framework)
        for row in self.rows:
            if (row.framework, row.framework_version, row.gpu) == (framework, version, gpu):
                if row.buildable:
                    return row
                target = self.get(row.replaced_by or "")
                warnings.warn(
                    f"{framework} {version} ({row.name}: {row.platform.os}, Python "
                    f"{row.python_version}) no longer builds; using {target.name} instead",
                    FutureWarning,
                    stacklevel=4,
                )
                return target
        supported = ", ".join(self.supported_versions(framework))
        raise EnvironmentResolutionError(
            f"framework_version={version!r} is not supported for {framework}; "
            f"choose one of: {supported} (default {self.default_version(framework)})"
        )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))


@functools.lru_cache(maxsize=1)
def load_catalogue() -> Catalogue:
    text = resources.files("fitdock.environments").joinpath("curated.yml").read_text()
    return Catalogue.model_validate(yaml.safe_load(text))
