"""POST /api/try-on: four visible stages, CPU work in the thread pool, device work in the worker."""

from __future__ import annotations

import logging
from functools import partial

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.edge.context import request_context
from app.edge.dependencies import CacheDep, ImagesDep, IntakeDep, WorkerDep
from app.edge.envelope import error_responses
from app.edge.schemas import FILE_SCHEMA, TryOnOptions, TryOnResponse, multipart_body
from app.images.resolve import ID_FIELDS
from app.inference.flow import StageTimer, encode_outcome, prepare_try_on, success_body
from app.media.encoding import EncodedResult
from app.media.uploads import FILE_FIELDS, REQUIRED_FILE_FIELDS

logger = logging.getLogger(__name__)
router = APIRouter(tags=["try-on"])

TRY_ON_REQUEST_BODY = multipart_body(
    list(REQUIRED_FILE_FIELDS),  # or their ids: one of each file and its id (app/images)
    {
        **dict.fromkeys(FILE_FIELDS, FILE_SCHEMA),
        **{
            id_field: {"type": "string", "description": f"instead of {part}: a stored image's id"}
            for part, id_field in ID_FIELDS.items()
        },
        **TryOnOptions.model_json_schema()["properties"],
    },
)


async def wait_for_disconnect(request: Request) -> None:
    """Return once the client hangs up; after the body is read, `receive` blocks until then."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post(
    "/api/try-on",
    response_model=TryOnResponse,
    responses=error_responses(401, 408, 413, 415, 422, 429, 503),
    openapi_extra=TRY_ON_REQUEST_BODY,
    summary="Dress the person in the garment",
)
async def try_on(
    request: Request, worker: WorkerDep, intake: IntakeDep, cache: CacheDep, images: ImagesDep
) -> Response:
    """Multipart in (person_image, cloth_image, optional mask_image, or their *_id fields naming
    stored images, and options), JSON out."""
    timer = StageTimer()
    with worker.admission():  # loading, failed or full: 503 before reading megabytes
        # Receive (408/413/422 at once), the result cache, then 1. decode and 2. preprocess
        # (thread pool): bytes -> RGB images at the working size
        # The client's hang-up is watched from the moment its body is in: one that hangs up
        # while its uploads decode never reaches the queue; one that hangs up while its
        # inference runs stops it at the next step.
        prepared = await prepare_try_on(
            request,
            worker,
            intake,
            cache,
            images,
            timer,
            watch=partial(wait_for_disconnect, request),
        )
        if prepared.cached is not None:
            prepared.stop_watching()
            return await respond(request, prepared.cached, prepared.options, timer, cached=True)

    job = prepared.job()
    hung_up = prepared.hung_up
    assert hung_up is not None
    try:
        # 3. Infer (the worker): mask unless given -> pipeline -> image
        with timer("infer"):
            outcome = await worker.run(job, disconnected=lambda: hung_up)

        # 4. Encode (thread pool): PNG/JPEG/WebP bytes, the mask as PNG; kept in the result cache
        result = await encode_outcome(outcome, job, timer, cache, prepared.cache_key)
    finally:
        prepared.stop_watching()
        prepared.release()  # its stored images may be evicted again
    return await respond(request, result, prepared.options, timer, cached=False)


async def respond(
    request: Request,
    result: EncodedResult,
    options: TryOnOptions,
    timer: StageTimer,
    *,
    cached: bool,
) -> Response:
    timings_ms = timer.finish()
    logger.info(
        "try-on done%s: %s, %d steps, seed %d, %s; ms %s",
        " (cached)" if cached else "",
        options.cloth_type,
        options.num_inference_steps,
        result.seed,
        options.output_format,
        timings_ms,
    )
    content = await run_in_threadpool(
        success_body,
        result,
        request_id=request_context(request).request_id,
        timings_ms=timings_ms,
        cached=cached,
        return_mask=options.return_mask,
    )
    return Response(content, media_type="application/json")
