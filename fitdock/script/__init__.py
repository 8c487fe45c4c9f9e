"""Azure ML Studio's Execute Python Script module: ``azureml_main(dataframe1, dataframe2)``
over DataFrames, with script bundles, images and a sandbox; as a call
(``execute_python_script``), a pipeline step (``fitdock.pipelines.ExecutePythonScriptStep``),
a command (``fitdock script run``) and a scoring service (``fitdock script serve``).
pandas is imported only where DataFrames are handled: ``import fitdock`` stays light."""

from __future__ import annotations

from typing import Any

__all__ = ["ScriptResult", "execute_python_script"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fitdock.script import api

        return getattr(api, name)
    raise AttributeError(f"module 'fitdock.script' has no attribute {name!r}")
