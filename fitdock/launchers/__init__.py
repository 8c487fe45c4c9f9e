"""Launchers: distributions (none, MPI) x targets (local, ...).

``process`` is the one process boundary: nothing else in fitdock spawns,
signals or reaps a process.
"""
