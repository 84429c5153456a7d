"""GET /api/try-on/jobs/{jobId}/events: the job document as server-sent events (sse-starlette).

First the current document, then one `event: job` per change (status, queue position, each
denoising step; at most `MAX_EVENTS_PER_S` a second, the newest state winning), `id:` the
record's version; `event: preview` with {"url", "step"} when a newer preview exists (the bytes
are fetched by URL, never streamed); a comment line keeps proxies from closing an idle stream;
the stream ends after the final state. A job forgotten meanwhile (deleted, evicted) ends the
stream with one `event: expired` carrying the error envelope. Closing the stream never cancels
the job.

Streams cost the server while they are open (README, "Tenants"): a client may hold at most
`--max-streams-per-client` at once (`StreamSlots`, 429 `too_many_streams` beyond; counted per
process, so per ingress replica in the cluster); a stream whose client reads nothing for
`SEND_TIMEOUT_S` is closed; the final state is always sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from app.access.limits import InMemoryActiveWork
from app.edge.errors import JobExpiredError, JobNotFoundError, ServiceError, TooManyStreamsError
from app.edge.ids import short_id
from app.jobs.documents import JobPreviewDocument, preview_url, render_json
from app.jobs.records import JobRecord
from app.jobs.store import JobStore

logger = logging.getLogger(__name__)

KEEPALIVE_S = 10  # the contract (README, "Try-on jobs"): a keep-alive at least every 15 s
SEND_TIMEOUT_S = 30  # a client that reads nothing this long (its socket full) loses the stream
MAX_EVENTS_PER_S = 10


class StreamSlots(InMemoryActiveWork):
    """Open event streams per client, at most `max_per_client` each (this process's count): the
    same counting as active work (`acquire` a slot, release it once), refused with its own 429."""

    def refuse(self, held: int) -> ServiceError:
        return TooManyStreamsError(self.max_per_client)


@dataclass
class Coalesced:
    """What one stream sends at a time: the newest record, and each preview step that came since
    the last one sent (in order, none skipped: each preview is announced)."""

    record: JobRecord
    preview_steps: list[int] = field(default_factory=list)


async def coalesced(
    records: AsyncIterator[JobRecord], interval_s: float = 1 / MAX_EVENTS_PER_S
) -> AsyncIterator[Coalesced]:
    """`records`, at most one each `interval_s`: between two, only the newest is kept, with the
    preview steps the skipped ones carried. The last record (final, or the last before the job
    was forgotten) is always yielded. Raises what `records` raised, after what it yielded."""
    latest: Coalesced | None = None
    last_preview: int | None = None
    ended = False
    error: Exception | None = None
    changed = asyncio.Event()

    async def pump() -> None:
        nonlocal latest, last_preview, ended, error
        try:
            async for record in records:
                steps = latest.preview_steps if latest is not None else []
                if record.preview_step is not None and record.preview_step != last_preview:
                    last_preview = record.preview_step
                    steps = [*steps, record.preview_step]
                latest = Coalesced(record, steps)
                changed.set()
        except Exception as exc:
            error = exc
        finally:
            ended = True
            changed.set()

    task = asyncio.create_task(pump())
    sent_at = -math.inf
    try:
        while True:
            await changed.wait()
            changed.clear()
            wait_s = sent_at + interval_s - time.monotonic()
            if wait_s > 0 and not ended:
                await asyncio.sleep(wait_s)  # what arrives meanwhile replaces `latest`
            if latest is not None:
                sending, latest, sent_at = latest, None, time.monotonic()
                yield sending
            if ended and not changed.is_set():
                if error is not None:
                    raise error
                return
    finally:
        task.cancel()


async def job_events(
    store: JobStore, job_id: str, request_id: str
) -> AsyncIterator[ServerSentEvent]:
    last: JobRecord | None = None
    try:
        async for update in coalesced(store.watch(job_id)):
            last = record = update.record
            yield ServerSentEvent(render_json(record), event="job", id=str(record.version))
            for step in update.preview_steps:
                preview = JobPreviewDocument(url=preview_url(job_id), step=step)
                yield ServerSentEvent(preview.model_dump_json(), event="preview")
    except (JobNotFoundError, JobExpiredError):
        pass
    if last is None or not last.final:
        gone = JobExpiredError()
        envelope = {"success": False, "message": gone.message, "error": gone.code}
        yield ServerSentEvent(json.dumps({**envelope, "requestId": request_id}), event="expired")


class JobEventStream(EventSourceResponse):
    """The events of one job; gives its client's stream slot back however the stream ends."""

    def __init__(self, events: AsyncIterator[ServerSentEvent], release: Callable[[], None]) -> None:
        super().__init__(
            events,
            ping=KEEPALIVE_S,
            send_timeout=SEND_TIMEOUT_S,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},  # nginx: no buffer
        )
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            logger.info("event stream closed: its client read nothing for %d s", SEND_TIMEOUT_S)
        finally:
            self.release()


def event_stream(
    store: JobStore, job_id: str, request_id: str, release: Callable[[], None]
) -> EventSourceResponse:
    """The stream of `job_id`'s events; `release` (its client's stream slot) is called once it
    ends."""
    logger.debug("event stream of job %s opened", short_id(job_id))
    return JobEventStream(job_events(store, job_id, request_id), release)
