"""Admission of /segment requests: at most `max_pending` in flight at once (waiting for their
stream, decoding, queued for the model, encoding); beyond it a request is turned away at once with
Overloaded (503) and a Retry-After estimated from the queue and the model's recent time per batch."""
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from driftseg.service.errors import Overloaded


class Admission:
    def __init__(self, max_pending: int, max_batch: int, on_change: Callable[[int], None] = lambda pending: None):
        """`on_change(pending)` is told the number in flight whenever it changes (the in-flight gauge)."""
        self.max_pending, self.max_batch, self.on_change = max_pending, max_batch, on_change
        self.pending = 0
        self.model_seconds = 0.0  # running mean of a batch's time in the model thread

    def observe_batch(self, seconds: float) -> None:
        self.model_seconds += 0.1 * (seconds - self.model_seconds)

    def retry_after(self) -> int:
        """Seconds until the queue is about empty: the model takes it max_batch frames at a time."""
        return max(1, math.ceil(self.pending / self.max_batch * self.model_seconds))

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request in flight for the block, or raise Overloaded if max_pending are already."""
        if self.pending >= self.max_pending:
            retry = self.retry_after()
            raise Overloaded(f"{self.pending} frames are in flight, the most this server takes "
                             f"(DRIFTSEG_MAX_PENDING); retry in {retry} s", retry)
        self.pending += 1
        self.on_change(self.pending)
        try:
            yield
        finally:
            self.pending -= 1
            self.on_change(self.pending)
