"""The ``ExecutePythonScriptStep`` of ``pipeline.py``: ``dataframe1`` is the table that
``make_table.py`` wrote (its PipelineData folder holds one CSV); the result dataset goes
to the step's output PipelineData as ``data.parquet``."""


def azureml_main(dataframe1=None, dataframe2=None):
    dataframe1["z"] = dataframe1["x"] * dataframe1["y"]
    return dataframe1
