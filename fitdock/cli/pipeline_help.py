"""The help texts of ``fitdock pipeline`` and its actions: one table, so each action's
``--help`` has a description and an example, and ``fitdock pipeline --help`` lists them."""

from __future__ import annotations

PIPELINE_HELP = """Pipelines of steps (fitdock.pipelines: Azure ML SDK v1's names, and SageMaker's
@step functions, ConditionStep and FailStep). Each step runs as an ordinary fitdock run; a
step whose reuse key matches an earlier completed step is reused. Records live under
$FITDOCK_HOME/pipelines/."""

PIPELINE_EPILOG = """examples:
  fitdock pipeline run examples/pipeline_azure/pipeline.py --param epochs=3
  fitdock pipeline run pipelines.py:nightly --dry-run
  fitdock pipeline list
  fitdock pipeline show RUN_ID --format dot | dot -Tsvg > pipeline.svg
  fitdock pipeline explain RUN_ID train
  fitdock pipeline result RUN_ID evaluate      # a @step function's return value, as JSON
"""

RUN_HELP = """Load FILE.py from its folder (relative paths in it are from there; the folder is
on sys.path while it loads; `if __name__ == "__main__":` blocks do not run), take the
Pipeline object named NAME, or the only Pipeline the file defines, or the one it submits
itself (a ported notebook's `Experiment(ws, name).submit(pipeline)`: the file stops there),
submit it and wait, printing each step's state as it changes. Exit status: 0
when the pipeline completed, 1 when it did not, 2 for bad input."""

RUN_EPILOG = """examples:
  fitdock pipeline run examples/pipeline_azure/pipeline.py
  fitdock pipeline run pipelines.py:nightly --param epochs=3 --param lr=0.05 --force train
  fitdock pipeline run pipelines.py --dry-run      # the DAG and what would run; runs nothing
"""

ACTIONS = {  # name: (help, description, example)
    "list": (
        "one line per pipeline run",
        "One line per pipeline run, newest last: id, name, status, steps (completed/all, "
        "how many reused), created.",
        "fitdock pipeline list --limit 5",
    ),
    "show": (
        "a pipeline run's DAG with each step's state",
        "A pipeline run's DAG: each step with its state, duration and run (or the run it "
        "reused), indented under what it depends on; a condition step says which branch it "
        "chose, a step on the branch not taken says so, and a @step function's short JSON "
        "result follows its run (-> {...}). --format dot prints Graphviz DOT: one node per "
        "step (conditions as diamonds, skipped steps grey and dotted), an edge per "
        'dependency (labelled "if" or "else" from a condition to its branches).',
        "fitdock pipeline show RUN_ID\n"
        "  fitdock pipeline show RUN_ID --format dot | dot -Tpng > run.png",
    ),
    "explain": (
        "why each step ran or was reused",
        'Why each step (or STEP) ran or was reused: "reused from <run> (key k)", or "ran: '
        '<what changed>" naming each part of its key that differs from its previous key.',
        "fitdock pipeline explain RUN_ID\n  fitdock pipeline explain RUN_ID train",
    ),
    "result": (
        "a @step function's return value, as JSON",
        "The return value of STEP, a @step function that completed, printed as JSON "
        "(indented, keys sorted) after its signed results payload is verified. Exit status 1 "
        "when STEP has no result (not a @step function, or it did not complete) or its result "
        "is not JSON data: read that one in Python with PipelineRun(RUN_ID).result(STEP).",
        "fitdock pipeline result RUN_ID evaluate\n"
        "  fitdock pipeline result RUN_ID evaluate | jq .accuracy",
    ),
    "cancel": (
        "stop a pipeline run's running steps",
        "Stop a pipeline run: its running steps get SIGTERM, the grace period, then SIGKILL.",
        "fitdock pipeline cancel RUN_ID",
    ),
    "logs": (
        "the rank logs of a pipeline run's steps",
        "The rank logs of each step run (or of STEP's), tagged [step] [rank r]; a reused "
        "step shows the logs of the run it reused.",
        "fitdock pipeline logs RUN_ID\n  fitdock pipeline logs RUN_ID train",
    ),
}
