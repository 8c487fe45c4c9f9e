"""``ExecutePythonScriptStep`` in pipelines: inputs from a script step's PipelineData, a
file and a DataFrame; outputs as PipelineData read by later steps; reuse keyed on the
script's text, the bundle's content and the inputs' content. Real runs, this interpreter."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest

from fitdock import RunStatus
from fitdock.errors import ScriptBundleError, SpecError
from fitdock.pipelines import (
    ExecutePythonScriptStep,
    Pipeline,
    PipelineData,
    PythonScriptStep,
    RunConfiguration,
    step,
)
from fitdock.script.api import this_interpreter

pytestmark = pytest.mark.usefixtures("workspace")  # run from a small folder

HERE = RunConfiguration(environment=this_interpreter())
WRITE = """\
import os, sys
os.makedirs(sys.argv[1], exist_ok=True)
open(os.path.join(sys.argv[1], "table.csv"), "w").write("a,b\\n1,\\n3,4\\n")
"""
DOUBLE = """\
def azureml_main(dataframe1):
    dataframe1['s'] = dataframe1['a'] * 2
    return dataframe1
"""


@step
def column_sum(folder: str, column: str) -> float:
    import os

    import pandas

    table = pandas.read_parquet(os.path.join(folder, "data.parquet"), use_threads=False)
    return float(table[column].sum())


def chain(tmp_path: Path, script: str = DOUBLE, bundle: Path | None = None) -> Pipeline:
    src = tmp_path / "src"
    if not src.is_dir():
        src.mkdir()
        (src / "write.py").write_text(WRITE)
    raw, scored = PipelineData("raw"), PipelineData("scored")
    write = PythonScriptStep("write.py", arguments=[raw], outputs=[raw], source_directory=src)
    score = ExecutePythonScriptStep(
        script, name="score", inputs=[raw], outputs=[scored], script_bundle=bundle,
        runconfig=HERE,
    )  # fmt: skip
    assert write is not None
    return Pipeline("scripts", steps=[score, column_sum(scored, "s")])


def test_a_script_step_between_a_script_step_and_a_function(tmp_path: Path) -> None:
    run = chain(tmp_path).start()
    run.wait_for_completion(show_output=False, raise_on_error=False)
    assert run.status is RunStatus.COMPLETED, (run.error, run.explain())
    assert run.result("column_sum") == 8.0
    data = pd.read_parquet(run.get_output_data("scored") / "data.parquet", use_threads=False)
    assert list(data.columns) == ["a", "b", "s"] and data["b"].isna().tolist() == [True, False]


def test_reuse_follows_script_text_input_content_and_bundle(tmp_path: Path) -> None:
    def states(pipeline: Pipeline) -> dict[str, bool]:
        run = pipeline.start()
        run.wait_for_completion(show_output=False, raise_on_error=False)
        assert run.status is RunStatus.COMPLETED, run.error
        return {name: s.reused for name, s in run.record.steps.items() if name != "column_sum"}

    assert states(chain(tmp_path)) == {"write.py": False, "score": False}
    assert states(chain(tmp_path)) == {"write.py": True, "score": True}
    edited = DOUBLE.replace("* 2", "* 3")
    assert states(chain(tmp_path, edited)) == {"write.py": True, "score": False}
    (tmp_path / "src" / "write.py").write_text(WRITE.replace("3,4", "5,6"))
    assert states(chain(tmp_path, edited)) == {"write.py": False, "score": False}
    bundle = tmp_path / "b.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("helper.py", "K = 1\n")
    assert states(chain(tmp_path, edited, bundle))["score"] is False
    assert states(chain(tmp_path, edited, bundle))["score"] is True
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("helper.py", "K = 2\n")
    run = chain(tmp_path, edited, bundle).start()
    run.wait_for_completion(show_output=False, raise_on_error=False)
    assert "input script_bundle: its content changed" in run.explain("score")


def test_dataframe_and_file_inputs_and_bad_arguments(tmp_path: Path) -> None:
    csv = tmp_path / "b.csv"
    csv.write_text("k\n10\n20\n")
    both = (
        "import pandas as pd\n"
        "def azureml_main(dataframe1, dataframe2):\n"
        "    return pd.DataFrame({'total': [dataframe1['a'].sum() + dataframe2['k'].sum()]})\n"
    )
    out = PipelineData("out")
    frame = pd.DataFrame({"a": [1, 2]}, index=[7, 9])
    score = ExecutePythonScriptStep(both, inputs=[frame, csv], outputs=[out], runconfig=HERE)
    run = Pipeline("inputs", steps=[score, column_sum(out, "total")]).start()
    run.wait_for_completion(show_output=False, raise_on_error=False)
    assert run.result("column_sum") == 33.0
    with pytest.raises(SpecError, match="at most two inputs"):
        ExecutePythonScriptStep(DOUBLE, inputs=[csv, csv, csv])
    with pytest.raises(SpecError, match="sandbox must be one of"):
        ExecutePythonScriptStep(DOUBLE, sandbox="maybe")
    with pytest.raises(SpecError, match="must be a PipelineData, a path"):
        ExecutePythonScriptStep(DOUBLE, inputs=[42])
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.py", "x = 1\n")
    with pytest.raises(ScriptBundleError, match=r"\.\./escape\.py"):
        ExecutePythonScriptStep(DOUBLE, script_bundle=evil)


def test_a_failing_script_fails_its_step_with_azures_message(tmp_path: Path) -> None:
    bad = "def azureml_main(dataframe1):\n    raise ValueError('no rows')\n"
    out = PipelineData("never")
    score = ExecutePythonScriptStep(bad, inputs=[tmp_path / "x.csv"], outputs=[out], runconfig=HERE)
    (tmp_path / "x.csv").write_text("a\n1\n")
    run = Pipeline("failing_script", steps=[score]).start()
    run.wait_for_completion(show_output=False, raise_on_error=False)
    assert run.status is RunStatus.FAILED
    (step_run,) = run.find_step_run("execute_python_script")
    stderr = (step_run.log_dir / "rank_0.stderr.log").read_text()
    assert "Got exception when invoking script at line 2 in function azureml_main" in stderr


def test_runs_show_lists_the_images_and_the_sandbox(capsys: pytest.CaptureFixture[str]) -> None:
    from fitdock.cli import main
    from fitdock.script import execute_python_script

    plot = (
        "import matplotlib.pyplot as plt\n"
        "def azureml_main():\n"
        "    plt.plot([1, 2, 3]); plt.savefig('line.png')\n"
    )
    result = execute_python_script(plot, environment=this_interpreter())
    assert result.run is not None and len(result.images) == 1
    assert main(["runs", "show", result.run.id]) == 0
    shown = capsys.readouterr().out
    assert f"image: {result.images[0]}" in shown
    assert "sandbox: " in shown
