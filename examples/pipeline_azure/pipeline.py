"""An Azure ML SDK v1 pipeline, ported to fitdock: the imports changed, nothing else.

    prepare   PythonScriptStep: synthetic MNIST-like arrays -> PipelineData "prepared"
    train     EstimatorStep: a Chainer estimator, ChainerMN on 2 MPI ranks -> "model"
    evaluate  PythonScriptStep: the model's accuracy on held-out samples, logged as a metric

    python examples/pipeline_azure/pipeline.py        # submit, wait, print steps and accuracy
    fitdock pipeline run examples/pipeline_azure/pipeline.py --param epochs=3

Run it twice: the second run reuses every step (nothing changed).
"""

from __future__ import annotations

from pathlib import Path

# Azure ML SDK v1:
#   from azureml.core import Experiment, RunConfiguration, Workspace
#   from azureml.pipeline.core import Pipeline, PipelineData, PipelineParameter
#   from azureml.pipeline.steps import EstimatorStep, PythonScriptStep
#   from azureml.train.dnn import Chainer, Mpi
from fitdock import Chainer, Experiment, Mpi
from fitdock.pipelines import (
    EstimatorStep,
    Pipeline,
    PipelineData,
    PipelineParameter,
    PythonScriptStep,
    RunConfiguration,
)

HERE = Path(__file__).resolve().parent
ws = None  # Azure: Workspace.from_config(); fitdock accepts a workspace and ignores it

prepared = PipelineData("prepared")
model = PipelineData("model")
samples = PipelineParameter("samples", default_value=2000)
seed = PipelineParameter("seed", default_value=0)
epochs = PipelineParameter("epochs", default_value=2)

runconfig = RunConfiguration()  # no environment: this interpreter, as it is

prepare = PythonScriptStep(
    script_name="prepare.py",
    name="prepare",
    arguments=["--out", prepared, "--samples", samples],
    outputs=[prepared],
    params={"seed": seed},  # the script reads AML_PARAMETER_seed
    source_directory=HERE / "prepare",
    runconfig=runconfig,
)

estimator = Chainer(
    source_directory=HERE / "train",
    entry_script="train.py",
    process_count_per_node=2,
    distributed_training=Mpi(),
    user_managed=True,  # this interpreter: it has Chainer, ChainerMN and mpi4py
    environment_variables={"SETUPTOOLS_USE_DISTUTILS": "stdlib"},  # Chainer 7 needs it
    max_run_duration_seconds=300,
)
train = EstimatorStep(
    name="train",
    estimator=estimator,
    estimator_entry_script_arguments=["--data", prepared, "--model", model, "--epochs", epochs],
    inputs=[prepared],
    outputs=[model],
)

evaluate = PythonScriptStep(
    script_name="evaluate.py",
    name="evaluate",
    arguments=["--data", prepared, "--model", model],
    inputs=[prepared, model],
    source_directory=HERE / "evaluate",
    runconfig=runconfig,
)

pipeline = Pipeline(ws, steps=[prepare, train, evaluate])


if __name__ == "__main__":
    run = Experiment(ws, "pipeline-example").submit(pipeline, pipeline_parameters={"epochs": 2})
    run.wait_for_completion(show_output=True)
    for step in run.get_steps():
        how = f"reused from {step.reused_from}" if step.reused else "ran"
        print(f"{step.name}: {step.get_status()} ({how})")
    (evaluation,) = run.find_step_run("evaluate")
    print("accuracy:", evaluation.get_metrics()["accuracy"])
