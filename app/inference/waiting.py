"""The order in which waiting try-ons reach the device, and what each is told about its place.

Kept apart from the scheduler (app/inference/worker.py, which guards it with its lock and owns
the thread) so that the order is one small object: who is next, where each one stands, and how
long until each is done by the step times the device measured.

Fair turns (README, "Tenants"): each client has its own lane, first come first served
within it, and the device takes the lanes in turn (round robin over the clients with work
waiting, in the order they joined the round). A client that queued 40 jobs delays another
client's single job by at most one of its own, not by 40. Both doors share the lanes.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator

from app.inference.contract import Door, QueuedWork
from app.inference.estimates import StepTimes


class WaitingLine:
    """Waiting tickets in per-client lanes taken in turn, and the one running. Not thread-safe:
    the worker calls it under its lock.

    Each ticket's `position` is kept equal to its place in the real order (`order`): when the
    order changes (a ticket added ahead of others, taken, withdrawn), every ticket whose place
    changed is told (a job's listener hears `on_queue`).
    """

    def __init__(self, step_times: StepTimes) -> None:
        self.step_times = step_times
        self.running: QueuedWork | None = None
        # client -> its waiting tickets, oldest first; only clients with work waiting.
        self._lanes: dict[str, deque[QueuedWork]] = {}
        # The round: clients with work waiting, the next to be served first.
        self._turns: deque[str] = deque()
        self._doors: Counter[Door] = Counter()

    def __len__(self) -> int:
        return sum(self._doors.values())

    def waiting(self, door: Door) -> int:
        """Waiting tickets of `door` (each door has its own bound)."""
        return self._doors[door]

    def order(self) -> Iterator[QueuedWork]:
        """The waiting tickets in the order the device will take them, if nothing else arrives:
        round after round, one ticket of each client in the round's order."""
        lanes = [self._lanes[client] for client in self._turns]
        depth = 0
        while lanes:
            for lane in lanes:
                yield lane[depth]
            depth += 1
            lanes = [lane for lane in lanes if len(lane) > depth]

    def add(self, ticket: QueuedWork) -> None:
        """Put `ticket` last in its client's lane; it (and any ticket it went ahead of) learns
        its position and ETA (as of now)."""
        lane = self._lanes.get(ticket.client)
        if lane is None:
            lane = self._lanes[ticket.client] = deque()
            self._turns.append(ticket.client)
        lane.append(ticket)
        self._doors[ticket.door] += 1
        ticket.position = -1  # not placed yet: `_announce_positions` sets it
        self._announce_positions(added=ticket)

    def remove(self, ticket: QueuedWork) -> bool:
        """Take a waiting ticket out; False if it is not waiting (running, done, never queued)."""
        lane = self._lanes.get(ticket.client)
        # Identity, not equality: a dataclass compares its fields.
        index = next((i for i, waiting in enumerate(lane or ()) if waiting is ticket), None)
        if lane is None or index is None:
            return False
        del lane[index]
        self._doors[ticket.door] -= 1
        if not lane:
            del self._lanes[ticket.client]
            self._turns.remove(ticket.client)
        self._announce_positions()
        return True

    def take_next(self) -> QueuedWork:
        """The next client's oldest ticket becomes the running one; that client goes to the end
        of the round if it has more waiting; the others hear their new places."""
        client = self._turns.popleft()
        lane = self._lanes[client]
        ticket = self.running = lane.popleft()
        self._doors[ticket.door] -= 1
        if lane:
            self._turns.append(client)
        else:
            del self._lanes[client]
        self._announce_positions()
        return ticket

    def clear(self) -> list[QueuedWork]:
        """Empty the line; returns what waited, in order."""
        waiting = list(self.order())
        self._lanes.clear()
        self._turns.clear()
        self._doors.clear()
        return waiting

    def _announce_positions(self, added: QueuedWork | None = None) -> None:
        """Give each waiting ticket its place in the real order and tell each job whose place
        changed its position and ETA (the sum of the step times of the running ticket's rest
        and of every ticket up to and including it; None before any step was measured).

        One pass, O(waiting): the scheduler's cost per pick (scripts/benchmark_tenants.py).
        """
        times = self.step_times
        measured = times.step_seconds(guided=False) is not None
        eta = 0.0
        if measured and self.running is not None:
            eta = times.remaining(self.running.steps_left, self.running.guided) or 0.0
        for index, ticket in enumerate(self.order()):
            if measured:
                eta += times.remaining(ticket.steps_left, ticket.guided) or 0.0
            if ticket.position == index and ticket is not added:
                continue
            ticket.position = index
            ticket.eta_s = eta if measured else None
            if ticket.listener is not None and ticket is not added:
                ticket.notify("on_queue", index, ticket.eta_s)
