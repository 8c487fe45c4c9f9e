"""The words between the server of ``fitdock script serve`` and its warm workers: the lines
they exchange (written by :mod:`fitdock.script.worker`, read by
:mod:`fitdock.script.handle`) and how a call ended (:class:`Outcome`, :class:`Answer`,
which :mod:`fitdock.script.serve` turns into HTTP statuses), and what never passes to a
worker: the variable holding the server's token (:data:`TOKEN_VARIABLE`). Stdlib only.

One request per line on the worker's stdin, one answer per line on its stdout::

    server -> worker   {"id": 7, "inputs": [rows, ...]}       rows: a list of JSON objects
    worker -> server   0 ready {"required": 1, "arity": 2}    once, after loading
                       0 failed {"message": ..., ...}         once, when loading failed
                       7 ok {"Results": {"output1": rows, "output2": rows}}
                       7 error {"message": ..., "exception": ..., "line": ...}

An ``ok`` body is the HTTP response as it is sent. Missing values (NaN, NA, NaT) and
infinities become ``null``.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

READY, FAILED, OK, ERROR = b"ready", b"failed", b"ok", b"error"
# The bearer token, for ``fitdock script serve`` (which reads it when --token is absent);
# dropped from the workers' environment: the script has no business with it.
TOKEN_VARIABLE = "FITDOCK_SERVE_TOKEN"

Rows = list[dict[str, Any]]


def request_line(number: int, inputs: list[Rows]) -> bytes:
    """Request ``number``: azureml_main over ``inputs``."""
    return json.dumps({"id": number, "inputs": inputs}).encode() + b"\n"


def answer_line(number: int, status: bytes, body: bytes) -> bytes:
    """The answer to request ``number`` (0: the answer to loading the script)."""
    return b"%d %s %s\n" % (number, status, body)


def parse_answer(line: bytes) -> tuple[int, bytes, bytes] | None:
    """``(number, status, body)`` of an answer line; None when it is not one."""
    parts = line.rstrip(b"\n").split(b" ", 2)
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1], parts[2]


class Outcome(str, enum.Enum):
    """How one call ended."""

    OK = "ok"  # the script's outputs
    SCRIPT_ERROR = "script_error"  # azureml_main raised, or returned what is not a table
    TIMED_OUT = "timed_out"  # over the time limit: its worker was killed and is replaced
    WORKER_LOST = "worker_lost"  # its worker died or broke the protocol: replaced
    BUSY = "busy"  # no worker became free within the time limit


@dataclass
class Answer:
    outcome: Outcome
    body: bytes = b""  # OK: the response body; SCRIPT_ERROR: the error as JSON
    message: str = ""  # the other outcomes: what happened
