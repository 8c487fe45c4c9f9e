"""Azure ML Studio's script-bundle example: ``Hello`` comes from the zip on the third
input port, which is unpacked at run time and put on the library path."""

import pandas as pd


def azureml_main(dataframe1=None, dataframe2=None):
    import Hello  # from Hello.zip

    names = dataframe1["name"] if dataframe1 is not None else pd.Series(["World"])
    greetings = [Hello.print_hello(name) for name in names]
    print(greetings[0])
    return pd.DataFrame({"name": list(names), "greeting": greetings})
