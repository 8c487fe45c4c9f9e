"""The end of a run's mirror with values left (``Mirror.drain``): several requests at
once, each lane taking the next batch of ``metrics.jsonl``; the mirror's count and offset
follow the batches done in file order, so what a failure leaves is one contiguous tail.

MLflow takes a value it already holds (same key, step, time and value) again without
complaint, so a sync that resends batches sent out of order adds nothing twice.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING

from fitdock.execution.tracking_data import BATCH, Value
from fitdock.execution.tracking_session import GiveUp

if TYPE_CHECKING:
    from fitdock.execution.tracking import Mirror


class Drain:
    """The lanes of ``Mirror.drain``: each takes the next batch from the file and sends
    it; the mirror's count and offset follow the batches done in file order."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.reading = threading.Lock()
        self.taken = 0  # batches handed out
        self.next = 0  # the first batch not yet counted
        self.done: dict[int, tuple[int, int]] = {}  # batch -> (values, offset after it)
        self.given_up = False

    def take(self) -> tuple[int, list[Value], int] | None:
        mirror = self.mirror
        with self.reading:
            if self.given_up:
                return None
            values, mirror.pending = mirror.pending or mirror.reader.read(BATCH), []
            if not values:
                return None
            self.taken += 1
            return self.taken - 1, values, mirror.reader.offset

    def lane(self) -> None:
        mirror = self.mirror
        while (batch := self.take()) is not None:
            number, values, offset = batch
            try:
                sent = mirror.call(functools.partial(mirror.log_values, values))
            except GiveUp:
                self.given_up = True
                return
            except Exception as exc:  # a fault here must never reach the run
                mirror.note(exc)
                self.given_up = True
                return
            if not sent:  # refused: these values cannot be mirrored
                with self.reading:
                    for value in values:
                        skipped = mirror.reader.skipped
                        skipped[value.key] = skipped.get(value.key, 0) + 1
            with mirror.lock:
                self.done[number] = (len(values), offset)
                while self.next in self.done:
                    count, mirror.offset = self.done.pop(self.next)
                    mirror.sent += count
                    self.next += 1
