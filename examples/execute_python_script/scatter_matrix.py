"""A scatter matrix of the numeric columns (pandas.plotting.scatter_matrix), saved as a
PNG: Azure ML Studio returns every PNG a script saves in its working folder."""

import matplotlib

matplotlib.use("Agg")  # no display: figures are files

import matplotlib.pyplot as plt
import pandas as pd


def azureml_main(dataframe1=None, dataframe2=None):
    numeric = dataframe1.select_dtypes("number")
    pd.plotting.scatter_matrix(numeric, figsize=(8, 8), diagonal="hist", alpha=0.6)
    plt.suptitle("iris_like.csv")
    plt.savefig("scatter_matrix.png", dpi=72)
    plt.close("all")
    return numeric.corr().reset_index(names="column")
