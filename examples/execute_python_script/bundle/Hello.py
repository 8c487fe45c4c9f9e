"""The module of the script bundle: ``make_bundle.py`` zips this folder into Hello.zip."""


def print_hello(name):
    return f"Hello, {name}!"
