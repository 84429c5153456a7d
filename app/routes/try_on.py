"""POST /api/try-on: four visible stages, CPU work in the thread pool, device work in the worker."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.dependencies import IntakeDep, WorkerDep
from app.encoding import encode_image
from app.errors import InvalidFieldError, describe_validation_errors, error_responses
from app.schemas import TryOnOptions, TryOnResponse
from app.uploads import FILE_FIELDS
from app.worker import TryOnJob

logger = logging.getLogger(__name__)
router = APIRouter(tags=["try-on"])

_FILE_SCHEMA = {"type": "string", "format": "binary"}
# The body is parsed by `Intake.receive` (streamed, capped), so /docs learns its shape from here.
TRY_ON_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["person_image", "cloth_image"],
                    "properties": {
                        **{name: _FILE_SCHEMA for name in FILE_FIELDS},
                        **TryOnOptions.model_json_schema()["properties"],
                    },
                }
            }
        },
    }
}


class StageTimer:
    """Wall-clock milliseconds per named stage, for the response and the log line."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.timings_ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings_ms[stage] = round((time.perf_counter() - started) * 1000, 1)

    def add_seconds(self, timings: dict[str, float]) -> None:
        self.timings_ms.update({stage: round(s * 1000, 1) for stage, s in timings.items()})

    def finish(self) -> dict[str, float]:
        self.timings_ms["total"] = round((time.perf_counter() - self.started) * 1000, 1)
        return self.timings_ms


async def wait_for_disconnect(request: Request) -> None:
    """Return once the client hangs up; after the body is read, `receive` blocks until then."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def parse_options(fields: dict[str, str]) -> TryOnOptions:
    """The text fields -> validated options, or 422 naming each bad field and its allowed range."""
    try:
        return TryOnOptions.model_validate(fields)
    except ValidationError as exc:
        names = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        ranges = [
            f"{name} {allowed}"
            for name in sorted(names)
            if (allowed := TryOnOptions.allowed_values(name)) is not None
        ]
        hint = f" (allowed: {', '.join(ranges)})" if ranges else ""
        raise InvalidFieldError(describe_validation_errors(exc.errors()) + hint) from exc


@router.post(
    "/api/try-on",
    response_model=TryOnResponse,
    responses=error_responses(401, 408, 413, 415, 422, 429, 503),
    openapi_extra=TRY_ON_REQUEST_BODY,
    summary="Dress the person in the garment",
)
async def try_on(request: Request, worker: WorkerDep, intake: IntakeDep) -> Response:
    """Multipart in (person_image, cloth_image, optional mask_image and options), JSON out."""
    timer = StageTimer()
    with worker.admission():  # loading, failed or full: 503 before reading megabytes
        with timer("upload"):
            form = await intake.receive(request)  # 408 when too slow, 413/422 when malformed
        options = parse_options(form.fields)  # before any decoding: bad options cost nothing
        size = worker.size

        # 1. Decode the uploads (thread pool): bytes -> RGB images, or 413/415 naming the field
        with timer("decode"):
            images = await intake.decode(form, size)

        # 2. Preprocess (thread pool): fit to the working size
        with timer("preprocess"):
            images = await intake.fit(images, size)

    # 3. Infer (the single device worker): mask unless given -> pipeline -> image
    with timer("infer"):
        outcome = await worker.run(
            TryOnJob(images=images, options=options),
            disconnected=partial(wait_for_disconnect, request),
        )
    timer.add_seconds(outcome.timings)
    request.state.usage_steps = options.num_inference_steps  # for the usage record

    # 4. Encode (thread pool): PNG/JPEG/WebP -> base64 -> response
    with timer("encode"):
        encoded = await run_in_threadpool(encode_image, outcome.image, options.output_format)
    timings_ms = timer.finish()
    logger.info(
        "try-on done: %s, %d steps, seed %d, %s; ms %s",
        options.cloth_type,
        options.num_inference_steps,
        outcome.seed,
        options.output_format,
        timings_ms,
    )
    response = TryOnResponse(
        image_base64=encoded.base64,
        mime_type=encoded.mime_type,
        width=encoded.width,
        height=encoded.height,
        seed=outcome.seed,
        request_id=request.state.request_id,
        timings_ms=timings_ms,
    )
    # Serialised in the thread pool: a returned model would be validated again and dumped on the
    # event loop (about 13 ms for a megabyte of base64, while /health waits).
    content = await run_in_threadpool(response.model_dump_json, by_alias=True)
    return Response(content, media_type="application/json")
