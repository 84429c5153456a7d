"""GET /api/try-on/jobs/{jobId}/events: the job document as server-sent events (sse-starlette).

First the current document, then one `event: job` per change (status, queue position, each
denoising step), `id:` the record's version; `event: preview` with {"url", "step"} when a newer
preview exists (the bytes are fetched by URL, never streamed); a comment line keeps proxies
from closing an idle stream; the stream ends after the final state. A job forgotten meanwhile
(deleted, evicted) ends the stream with one `event: expired` carrying the error envelope. Closing
the stream never cancels the job.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent

from app.edge.errors import JobExpiredError, JobNotFoundError
from app.jobs.documents import preview_document, render_json
from app.jobs.records import JobRecord
from app.jobs.store import JobStore

KEEPALIVE_S = 10  # the contract (README, "Try-on jobs"): a keep-alive at least every 15 s


async def job_events(
    store: JobStore, job_id: str, request_id: str
) -> AsyncIterator[ServerSentEvent]:
    last: JobRecord | None = None
    previewed: int | None = None
    try:
        async for record in store.watch(job_id):
            last = record
            yield ServerSentEvent(render_json(record), event="job", id=str(record.version))
            if record.preview_step is not None and record.preview_step != previewed:
                previewed = record.preview_step
                preview = preview_document(record)
                assert preview is not None
                yield ServerSentEvent(preview.model_dump_json(), event="preview")
    except (JobNotFoundError, JobExpiredError):
        pass
    if last is None or not last.final:
        gone = JobExpiredError()
        envelope = {"success": False, "message": gone.message, "error": gone.code}
        yield ServerSentEvent(json.dumps({**envelope, "requestId": request_id}), event="expired")


def event_stream(store: JobStore, job_id: str, request_id: str) -> EventSourceResponse:
    return EventSourceResponse(
        job_events(store, job_id, request_id),
        ping=KEEPALIVE_S,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},  # nginx: do not buffer
    )
