"""Feature importances of a small random forest (scikit-learn), as Azure ML Studio's
Execute Python Script runs it: ``azureml_main`` receives the CSV as ``dataframe1`` and
returns a DataFrame, which becomes the module's result dataset.

The label is the ``species`` column; every other column is a feature.
"""

import pandas as pd
from sklearn.ensemble import RandomForestClassifier

LABEL = "species"


def azureml_main(dataframe1=None, dataframe2=None):
    features = dataframe1.drop(columns=[LABEL])
    forest = RandomForestClassifier(n_estimators=20, random_state=0)
    forest.fit(features, dataframe1[LABEL])
    print(f"training accuracy: {forest.score(features, dataframe1[LABEL]):.3f}")
    importances = pd.DataFrame(
        {"feature": features.columns, "importance": forest.feature_importances_}
    )
    return importances.sort_values("importance", ascending=False, ignore_index=True)
