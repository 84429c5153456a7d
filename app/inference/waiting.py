"""The order in which waiting try-ons reach the device, and what each is told about its place.

Kept apart from the scheduler (app/inference/worker.py, which guards it with its lock and owns
the thread) so that the order is one small object: who is next, where each one stands, and how
long until each is done by the step times the device measured.
"""

from __future__ import annotations

from collections import deque

from app.inference.contract import QueuedWork
from app.inference.estimates import StepTimes


class WaitingLine:
    """Waiting tickets, first come first served, and the one running. Not thread-safe: the
    worker calls it under its lock."""

    def __init__(self, step_times: StepTimes) -> None:
        self.step_times = step_times
        self.running: QueuedWork | None = None
        self._waiting: deque[QueuedWork] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def jobs(self) -> int:
        """Waiting tickets of the job door."""
        return sum(ticket.door == "job" for ticket in self._waiting)

    def add(self, ticket: QueuedWork) -> None:
        """Put `ticket` last; it learns its position and ETA (as of now) on itself."""
        self._waiting.append(ticket)
        ticket.position = len(self._waiting) - 1
        ticket.eta_s = self._eta_through(ticket.position)

    def remove(self, ticket: QueuedWork) -> bool:
        """Take a waiting ticket out; False if it is not waiting (running, done, never queued)."""
        if ticket not in self._waiting:
            return False
        index = self._waiting.index(ticket)
        del self._waiting[index]
        self._announce_positions(start=index)
        return True

    def take_next(self) -> QueuedWork:
        """The next ticket becomes the running one; the others hear their new places."""
        ticket = self.running = self._waiting.popleft()
        self._announce_positions()
        return ticket

    def clear(self) -> list[QueuedWork]:
        """Empty the line; returns what waited, in order."""
        waiting = list(self._waiting)
        self._waiting.clear()
        return waiting

    def _eta_through(self, index: int) -> float | None:
        """Seconds until the ticket at `index` is done: the running one's rest, then each waiting
        one up to and including it. None before any step was measured."""
        times = self.step_times
        if times.step_seconds(guided=False) is None:
            return None
        running = [] if self.running is None else [self.running]
        return sum(
            times.remaining(ticket.steps_left, ticket.guided) or 0.0
            for ticket in [*running, *list(self._waiting)[: index + 1]]
        )

    def _announce_positions(self, start: int = 0) -> None:
        """Tell each waiting job from `start` on its position and ETA (the line moved)."""
        for index, ticket in enumerate(self._waiting):
            if index >= start and ticket.listener is not None:
                ticket.notify("on_queue", index, self._eta_through(index))
