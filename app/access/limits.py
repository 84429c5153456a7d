"""Fair use per client: a rate limit on new work and a cap on each client's active work.

Both apply per `client_id` (the key's name, or the IP when keys are off), before the upload is
read, to the routes that create GPU work (`LIMITED_ROUTES`); the rate limit also applies, counted
apart, to stored-image uploads (each one decodes and fits a photo, and storing one must not spend
a try-on):

- `--rate-limit` (the `limits` library's notation, e.g. `'30/minute;500/day'`): a fixed window per
  client and item, opened by the client's first request in it. Every answer of a limited route
  carries the IETF `RateLimit-Policy` and `RateLimit` fields; past the limit, 429 `rate_limited`
  with `Retry-After` (when the window closes). Fixed rather than moving: a moving window's
  in-memory storage sweeps every client's timestamps in the background (one thread hop per
  client), which made the limiter's p99 three times worse with 1,000 clients
  (scripts/benchmark_access.py); a fixed window keeps one counter per client and item. The price
  is a burst of up to twice the limit across a window's end.
- `--max-active-per-client`: queued plus running work (synchronous requests and jobs); past it, 429
  `too_many_active_requests`. Below the queue's capacity it is what keeps one client from filling
  the queue while others wait: each client holds at most that many of its places.

Status polling (job documents, events, results) is not rate limited: it needs the key, costs a
dictionary look-up, and a client polling a long job must not spend its try-on budget doing so.

Counters live in a `limits` storage: in memory by default; pass a storage (or its URI, e.g.
`async+redis://host:6379`) to share them between replicas. The active-work counts are an
`ActiveWork`: `InMemoryActiveWork` here, a Redis one shared by the cluster's ingress replicas.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.edge.clients import client_id
from app.edge.context import request_context
from app.edge.envelope import send_error
from app.edge.errors import RateLimitedError, ServiceError, TooManyActiveRequestsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateCounter:
    """Which of a client's counters a route spends, what a refusal calls its requests, and
    whether they create GPU work (then the active-work cap applies too)."""

    namespace: str
    requests: str
    creates_work: bool


TRY_ONS = RateCounter("try-on", "try-ons", creates_work=True)
LIMITED_ROUTES = {
    ("POST", "/api/try-on"): TRY_ONS,
    ("POST", "/api/try-on/jobs"): TRY_ONS,
    ("POST", "/api/try-on/images"): RateCounter("images", "image uploads", creates_work=False),
}
LIMIT_HEADERS = ("RateLimit-Policy", "RateLimit")  # draft-ietf-httpapi-ratelimit-headers


def parse_rate_limit(text: str) -> list[RateLimitItem]:
    """`30/minute;500/day` -> items; ValueError naming the flag for what the library refuses."""
    try:
        items = parse_many(text)
    except ValueError:
        raise ValueError(
            f"--rate-limit {text!r} is not in the limits notation: AMOUNT/PERIOD items joined by "
            "';', e.g. '30/minute;500/day' (periods: second, minute, hour, day, month, year)"
        ) from None
    if any(item.amount < 1 for item in items):
        raise ValueError(f"--rate-limit {text!r}: an amount of 0 would refuse every request")
    return items


STORAGE_TIMEOUT_S = 2.0


def limits_storage(redis_url: str | None) -> Storage:
    """Where the counters live: this process's memory, or with `--redis-url` the `limits` library's
    own Redis storage (through the redis-py client), so every replica counts against one limit."""
    if redis_url is None:
        storage = storage_from_string("async+memory://")
    else:
        # Short timeouts: a Redis that does not answer costs a request 2 s at most (then
        # `count` serves it unlimited), not the client library's default of waiting forever.
        storage = storage_from_string(
            f"async+{redis_url}",
            implementation="redispy",
            socket_timeout=STORAGE_TIMEOUT_S,
            socket_connect_timeout=STORAGE_TIMEOUT_S,
        )
    # The "async+" scheme always gives an asyncio storage; the library's signature says either.
    assert isinstance(storage, Storage)
    return storage


def policy_name(item: RateLimitItem) -> str:
    multiples = "" if item.multiples == 1 else str(item.multiples)
    return f"{item.amount}/{multiples}{item.GRANULARITY.name}"


@dataclass
class RateVerdict:
    allowed: bool
    headers: dict[str, str]


class RateLimits:
    """The `--rate-limit` items, counted per client in a `limits` storage."""

    def __init__(self, items: list[RateLimitItem], storage: Storage | None = None):
        self.items = items
        self.limiter = FixedWindowRateLimiter(storage or limits_storage(None))
        self.policy = ", ".join(
            f'"{policy_name(item)}";q={item.amount};w={item.get_expiry()}' for item in items
        )

    async def hit(self, client: str, counter: RateCounter = TRY_ONS) -> RateVerdict:
        """Count one request of `client` on `counter`; the first exhausted item refuses it, and
        the items after that one are not counted."""
        key = (counter.namespace, client)
        refused = None
        for item in self.items:
            if not await self.limiter.hit(item, *key):
                refused = item
                break
        now = time.time()
        fields, waits = [], []
        for item in self.items:
            stats = await self.limiter.get_window_stats(item, *key)
            reset_s = max(1, math.ceil(stats.reset_time - now))
            remaining = max(0, stats.remaining)
            fields.append(f'"{policy_name(item)}";r={remaining};t={reset_s}')
            if remaining == 0:
                waits.append(reset_s)
        headers = {"RateLimit-Policy": self.policy, "RateLimit": ", ".join(fields)}
        if refused is not None:  # every spent item must have room again
            headers["Retry-After"] = str(max(waits, default=1))
        return RateVerdict(allowed=refused is None, headers=headers)


@dataclass
class ActiveSlot:
    """One unit of a client's active work; released once, by whoever holds it last.

    The middleware holds the slot of each work request and releases it when the response is
    done, unless a job took it over (`hand_over`) AND the answer was a success: a queued job keeps
    its client's slot until it is final, and the job's code then calls `release`. A submit that
    fails after the hand-over (503 queue full, ...) created no job, so the middleware releases
    the slot then; `release` is idempotent, so nothing is given back twice.
    """

    work: ActiveWork
    client: str
    handed_over: bool = False
    released: bool = field(default=False, repr=False)

    def hand_over(self) -> ActiveSlot:
        self.handed_over = True
        return self

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.work.release(self.client)


class ActiveWork(ABC):
    """Queued plus running work per client, capped at `max_per_client`: the interface, with an
    in-memory default here and a Redis one shared by the cluster's replicas (app/cluster)."""

    def __init__(self, max_per_client: int) -> None:
        self.max_per_client = max_per_client
        self.counts: Counter[str] = Counter()  # this process's slots, per client

    @abstractmethod
    async def acquire(self, client: str) -> ActiveSlot:
        """A slot for `client`, or TooManyActiveRequestsError when it already holds the cap."""

    @abstractmethod
    def release(self, client: str) -> None:
        """Give one of `client`'s slots back (called once per slot, by `ActiveSlot.release`)."""

    def _forget(self, client: str) -> None:
        """One of `client`'s slots in this process fewer."""
        self.counts[client] -= 1
        if self.counts[client] <= 0:
            del self.counts[client]

    def refuse(self, held: int) -> ServiceError:
        return TooManyActiveRequestsError(
            f"This client already has {held} try-ons queued or running (at most "
            f"{self.max_per_client}); wait for one to finish."
        )


class InMemoryActiveWork(ActiveWork):
    """The single process's: the event loop is the only caller, so plain counts suffice."""

    async def acquire(self, client: str) -> ActiveSlot:
        if self.counts[client] >= self.max_per_client:
            raise self.refuse(self.counts[client])
        self.counts[client] += 1
        return ActiveSlot(self, client)

    def release(self, client: str) -> None:
        self._forget(client)


def take_active_slot(connection: HTTPConnection) -> ActiveSlot | None:
    """For the jobs' submit route: keep this request's active slot for the job's lifetime.

    Returns None when `--max-active-per-client` is off. The caller must `release()` the slot
    when the job is final (succeeded, failed, canceled); if the request answers an error instead,
    the middleware releases it.
    """
    slot = request_context(connection).active_slot
    return slot.hand_over() if slot is not None else None


class LimitsMiddleware:
    """Applies the rate limit to `LIMITED_ROUTES` and the active-work cap to those that create
    GPU work, before the body is read."""

    def __init__(
        self, app: ASGIApp, rate_limits: RateLimits | None, active_work: ActiveWork | None
    ) -> None:
        self.app = app
        self.rate_limits = rate_limits
        self.active_work = active_work

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counter = None
        if scope["type"] == "http":
            counter = LIMITED_ROUTES.get((scope["method"], scope["path"]))
        if counter is None:
            await self.app(scope, receive, send)
            return
        client = client_id(HTTPConnection(scope))
        headers: dict[str, str] = {}
        slot = None
        try:
            if self.rate_limits is not None and (verdict := await self.count(client, counter)):
                headers = verdict.headers
                if not verdict.allowed:
                    raise RateLimitedError(
                        f"Too many {counter.requests}: this client's limit is "
                        f"{self.describe()}; try again in {headers['Retry-After']} s."
                    )
            if self.active_work is not None and counter.creates_work:
                slot = await self.active_work.acquire(client)
                request_context(scope).active_slot = slot
        except ServiceError as error:
            logger.info("refused %s: %s", client, error.code)
            error.headers = {**headers, **error.headers}
            await send_error(scope, receive, send, error)
            return
        status = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, with_headers(send_and_watch, headers))
        finally:
            if slot is not None and not (slot.handed_over and 200 <= status < 300):
                slot.release()

    async def count(self, client: str, counter: RateCounter) -> RateVerdict | None:
        """`rate_limits.hit`, or None when the counters' storage cannot be reached (a shared Redis
        restarting): the request is then served without a limit rather than refused, logged each
        time, as synchronous try-ons keep working while Redis is down."""
        assert self.rate_limits is not None
        try:
            return await self.rate_limits.hit(client, counter)
        except Exception as exc:  # whatever the storage's client raises
            logger.warning("rate limit not counted for %s: storage unavailable (%s)", client, exc)
            return None

    def describe(self) -> str:
        assert self.rate_limits is not None
        return "; ".join(policy_name(item) for item in self.rate_limits.items)


def with_headers(send: Send, headers: dict[str, str]) -> Send:
    """`send` that adds `headers` to the response start."""
    if not headers:
        return send
    encoded = [(name.lower().encode(), value.encode()) for name, value in headers.items()]

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *encoded]}
        await send(message)

    return send_with_headers
