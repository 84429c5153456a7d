"""/api/try-on/jobs: submit, status, events, result, mask, preview, cancel, delete (README,
"Try-on jobs").

Submitting runs the same try-on flow as the synchronous route (app/inference/flow.py: the same
upload caps, options, decoding, fitting and cache, so every intake protection covers both doors),
then hands stages 3 and 4 to the job runner and answers 202 at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from app.access.limits import take_active_slot
from app.edge.clients import client_id
from app.edge.context import request_context
from app.edge.dependencies import CacheDep, ImagesDep, IntakeDep, JobsDep, StreamsDep, WorkerDep
from app.edge.envelope import error_responses
from app.edge.errors import (
    IdempotencyKeyReusedError,
    InvalidFieldError,
    JobCanceledError,
    JobFailedError,
    JobNotFinishedError,
    JobNotFoundError,
    PreviewNotReadyError,
)
from app.edge.ids import ID_PATTERN, short_id
from app.inference.flow import (
    PreparedTryOn,
    StageTimer,
    prepare_try_on,
    receive_try_on,
    success_body,
)
from app.jobs.documents import JOBS_PATH, JobDocument, render_json
from app.jobs.events import event_stream
from app.jobs.records import JobRecord
from app.jobs.store import JobStore
from app.media.encoding import EncodedResult
from app.routes.try_on import TRY_ON_REQUEST_BODY

logger = logging.getLogger(__name__)
router = APIRouter(prefix=JOBS_PATH, tags=["jobs"])

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_BYTES = 255


async def valid_job_id(
    job_id: Annotated[str, Path(description="the jobId of the submit answer")],
) -> str:
    """A malformed id can name no job: 404 without a lookup (never a 422 or 500). A coroutine:
    a plain dependency would run in the thread pool, which uploads may have taken."""
    if not ID_PATTERN.match(job_id):
        raise JobNotFoundError()
    return job_id


JobId = Annotated[str, Depends(valid_job_id)]


async def owned_job(job_id: JobId, request: Request, jobs: JobsDep) -> JobRecord:
    """The job's record, for its owner only: every route of a job reads it through here.

    With keys on, a job belongs to the key's name that made it; any other client gets 404
    `job_not_found`, as for an id that never existed. With keys off there are no names to compare
    (two clients behind one proxy share an IP): the id, 128 random bits, is the capability.
    Raises 404/410 as the store does.
    """
    record = await jobs.store.get(job_id)
    caller = request_context(request).client  # the key's name; None when keys are off
    if caller is not None and record.client != caller:
        raise JobNotFoundError()
    return record


OwnedJob = Annotated[JobRecord, Depends(owned_job)]


def read_idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header: 1..255 visible ASCII characters, else 422."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_BYTES or not all("!" <= c <= "~" for c in key):
        raise InvalidFieldError(
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII "
            "characters (no spaces or control characters), e.g. a UUID"
        )
    return key


def document_response(
    record: JobRecord, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    headers = dict(headers or {})
    if not record.final:
        headers["Retry-After"] = "1"
    return Response(
        render_json(record), status_code, headers=headers, media_type="application/json"
    )


@router.post(
    "",
    status_code=202,
    response_model=JobDocument,
    responses={
        **error_responses(401, 408, 413, 415, 422, 429, 503),
        200: {"description": "Idempotency-Key replay: the same job"},
    },
    openapi_extra=TRY_ON_REQUEST_BODY,
    summary="Submit a try-on job (the same fields as POST /api/try-on)",
)
async def submit_job(
    request: Request,
    worker: WorkerDep,
    intake: IntakeDep,
    cache: CacheDep,
    images: ImagesDep,
    jobs: JobsDep,
) -> Response:
    """202 + Location at once; errors found before queueing are answered at once."""
    timer = StageTimer()
    key = read_idempotency_key(request)
    client = client_id(request)
    if key is not None and (existing := await jobs.store.claimed(client, key)) is not None:
        # A replay reads a body too, so it is bounded as a submit is, before its first byte: by
        # the client's active slot (the limits middleware holds it), else by a job admission
        # place. Its form is hashed once and dropped; only the stored fingerprint is compared.
        bound = nullcontext() if request_context(request).active_slot else worker.admission("job")
        with bound:
            received = await receive_try_on(request, intake, timer)  # the body decides: replay?
            fingerprint = await received.fingerprint()
            del received
        return replay(existing, fingerprint)

    # `submit` times the whole intake, up to the queued job (scripts/benchmark_jobs.py).
    with timer("submit"), worker.admission("job"):  # 503 before any byte: loading, full, ...
        # Receive, the result cache, then 1. decode and 2. preprocess (as the synchronous door)
        prepared = await prepare_try_on(request, worker, intake, cache, images, timer)
        received = prepared.received
        record = jobs.new_record(
            client=client,
            request_id=request_context(request).request_id,
            options=received.options,
            idempotency_key=key,
            fingerprint=await received.fingerprint() if key is not None else None,
        )
        if prepared.cached is not None:
            stored, created = await jobs.add_cached(record, prepared.cached, timer=timer)
        else:
            # 3. Infer and 4. encode: queued; the job runner takes it from here. The client's
            # active-work slot (--max-active-per-client) stays taken until the job is final.
            slot = take_active_slot(request)
            try:
                stored, created = await jobs.submit(
                    record,
                    prepared.job(),
                    timer=timer,
                    cache_key=prepared.cache_key,
                    on_final=partial(end_job, prepared, slot.release if slot else None),
                )
            except BaseException:
                prepared.release()  # never queued: its stored images are free again
                raise
    if not created:  # the same key sent twice at once: one job
        return replay(stored, record.fingerprint)
    logger.info("job %s submitted (%s)", short_id(stored.job_id), stored.status)
    location = f"{JOBS_PATH}/{stored.job_id}"
    return document_response(stored, 202, {"Location": location, "Retry-After": "1"})


def end_job(prepared: PreparedTryOn, release_slot: Callable[[], None] | None) -> None:
    """A job's work is over: its stored images and the client's active-work slot are free."""
    prepared.release()
    if release_slot is not None:
        release_slot()


def replay(existing: JobRecord, fingerprint: str | None) -> Response:
    """The same Idempotency-Key: the existing job if the body is the same, else 422."""
    if existing.fingerprint != fingerprint:
        raise IdempotencyKeyReusedError()
    headers = {"Idempotent-Replayed": "true", "Location": f"{JOBS_PATH}/{existing.job_id}"}
    return document_response(existing, 200, headers)


@router.get(
    "/{job_id}",
    response_model=JobDocument,
    responses=error_responses(401, 404, 410, 422),
    summary="The job document (poll every second; Retry-After while not final)",
)
async def get_job(record: OwnedJob) -> Response:
    return document_response(record, 200)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **error_responses(401, 404, 410, 422, 429),
    },
    summary="Server-sent events: the document, then one `job` event per change",
)
async def job_events(
    record: OwnedJob, request: Request, jobs: JobsDep, streams: StreamsDep
) -> EventSourceResponse:
    # `OwnedJob` answered 404 / 410 as a plain answer, before the stream starts; past the
    # client's streams, 429 too_many_streams.
    release = (await streams.acquire(client_id(request))).release
    return event_stream(jobs.store, record.job_id, request_context(request).request_id, release)


async def finished_result(store: JobStore, record: JobRecord) -> tuple[JobRecord, EncodedResult]:
    """A succeeded job's record and result; else the job's own error, 409 or 404/410."""
    if record.status == "succeeded":
        result = await store.result(record.job_id)
        if result is not None:
            return record, result
    if record.status == "canceled":
        raise JobCanceledError()
    if record.status == "failed" and record.error is not None:
        error = record.error
        raise JobFailedError(error.code, error.message, error.status_code, error.retry_after_s)
    raise JobNotFinishedError(record.status)


@router.get(
    "/{job_id}/result",
    responses={
        200: {"content": {"image/png": {}, "application/json": {}}},
        **error_responses(401, 404, 409, 410, 422, 500, 503),  # a failed job's own status
    },
    summary="The image (or with Accept: application/json, the body POST /api/try-on returns)",
)
async def get_result(owned: OwnedJob, request: Request, jobs: JobsDep) -> Response:
    record, result = await finished_result(jobs.store, owned)
    if "application/json" in request.headers.get("accept", ""):
        assert record.output is not None
        content = await run_in_threadpool(
            success_body,
            result,
            request_id=record.request_id,
            timings_ms=record.output.timings_ms,
            cached=record.cached,
            return_mask=record.return_mask,
        )
        return Response(content, media_type="application/json")
    return Response(result.image.data, media_type=result.image.mime_type)


@router.get(
    "/{job_id}/mask",
    responses={200: {"content": {"image/png": {}}}, **error_responses(401, 404, 409, 410, 422)},
    summary="PNG of the mask the model used (white = repainted), working size",
)
async def get_mask(record: OwnedJob, jobs: JobsDep) -> Response:
    _, result = await finished_result(jobs.store, record)
    return Response(result.mask.data, media_type=result.mask.mime_type)


def preview_etag(step: int) -> str:
    return f'"{step}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, a list, or *)."""
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/{job_id}/preview",
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "the latest preview (ETag)"},
        304: {"description": "If-None-Match names the latest preview: nothing newer"},
        **error_responses(401, 404, 410, 422),
    },
    summary="JPEG of the latest preview while the job denoises (ETag, Preview-Step; 304)",
)
async def get_preview(record: OwnedJob, request: Request, jobs: JobsDep) -> Response:
    """404 preview_not_ready before the first; the last one stays after the job ends. A poll
    with the current ETag costs one record read: no bytes read, nothing encoded."""
    if record.preview_step is None:
        raise PreviewNotReadyError()
    etag = preview_etag(record.preview_step)
    headers = {"Cache-Control": "no-cache"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        headers.update({"ETag": etag, "Preview-Step": str(record.preview_step)})
        return Response(status_code=304, headers=headers)
    preview = await jobs.store.preview(record.job_id)
    if preview is None:  # forgotten in between: the record said it had one
        raise PreviewNotReadyError()
    step, jpeg = preview
    headers.update({"ETag": preview_etag(step), "Preview-Step": str(step)})
    return Response(jpeg, media_type="image/jpeg", headers=headers)


@router.post(
    "/{job_id}/cancel",
    response_model=JobDocument,
    responses={
        202: {"description": "running: it stops at its next step"},
        **error_responses(401, 404, 410, 422),
    },
    summary="Cancel: queued or final 200, running 202 (cancelRequested)",
)
async def cancel_job(owned: OwnedJob, jobs: JobsDep) -> Response:
    record = await jobs.cancel(owned.job_id)
    return document_response(record, 200 if record.final else 202)


@router.delete(
    "/{job_id}",
    status_code=204,
    responses=error_responses(401, 404, 410, 422),
    summary="Cancel if needed, then forget the job and its result",
)
async def delete_job(record: OwnedJob, jobs: JobsDep) -> Response:
    await jobs.delete(record.job_id)
    return Response(status_code=204)
