"""The stages both doors share (`POST /api/try-on` and `POST /api/try-on/jobs`), one copy each.

A request: receive (stream the upload, validate the options) -> 1. decode -> 2. fit to the working
size -> 3. infer (the device worker) -> 4. encode. The job door runs 3 and 4 later, in the job
runner; everything before is the same code, so every intake protection covers both doors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.cache.keys import cache_key, hash_files, request_fingerprint
from app.encoding import EncodedResult, encode_result
from app.errors import InvalidFieldError, describe_validation_errors
from app.intake import Intake, TryOnImages
from app.schemas import TryOnOptions, TryOnResponse
from app.uploads import ReceivedForm
from app.work import TryOnOutcome
from catvton.pipeline import RANDOM_SEED


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


@dataclass
class ReceivedTryOn:
    """A received try-on request: the raw form, its validated options, its files' hashes (lazy)."""

    form: ReceivedForm
    options: TryOnOptions
    _file_hashes: dict[str, str] | None = field(default=None, repr=False)

    async def file_hashes(self) -> dict[str, str]:
        if self._file_hashes is None:
            self._file_hashes = await run_in_threadpool(hash_files, self.form)
        return self._file_hashes

    async def fingerprint(self) -> str:
        """What Idempotency-Key compares: every text field as sent and every file byte."""
        return request_fingerprint(await self.file_hashes(), self.form.fields)

    async def cache_key(self, model_identity: str) -> str | None:
        """The result cache's key; None for a random seed (no hashing at all then)."""
        if self.options.seed == RANDOM_SEED:
            return None
        return cache_key(await self.file_hashes(), self.options, model_identity)


async def receive_try_on(request: Request, intake: Intake, timer: StageTimer) -> ReceivedTryOn:
    """Stream the upload in (byte caps, deadlines) and validate the options before any decoding."""
    with timer("upload"):
        form = await intake.receive(request)
    return ReceivedTryOn(form=form, options=parse_options(form.fields))


async def prepare_images(
    received: ReceivedTryOn, size: tuple[int, int], intake: Intake, timer: StageTimer
) -> TryOnImages:
    """Stages 1 and 2, in the thread pool: bytes -> RGB images (413/415 naming the field, within
    the decode memory budget) -> fitted to the working size."""
    with timer("decode"):
        images = await intake.decode(received.form, size)
    with timer("preprocess"):
        return await intake.fit(images, size)


async def encode_outcome(outcome: TryOnOutcome, options: TryOnOptions) -> EncodedResult:
    """Stage 4 (thread pool): the image in the requested format, the mask as PNG."""
    return await run_in_threadpool(
        encode_result, outcome.image, outcome.mask, outcome.seed, options.output_format
    )


def success_body(
    result: EncodedResult,
    *,
    request_id: str,
    timings_ms: dict[str, float],
    cached: bool,
    return_mask: bool,
) -> bytes:
    """The 200 body of POST /api/try-on (also a job's JSON result); run it in the thread pool:
    a megabyte of base64 dumped on the event loop stalls every other request for ~13 ms."""
    response = TryOnResponse(
        image_base64=result.image.base64,
        mime_type=result.image.mime_type,
        width=result.image.width,
        height=result.image.height,
        seed=result.seed,
        request_id=request_id,
        timings_ms=timings_ms,
        cached=cached,
        mask_base64=result.mask.base64 if return_mask else None,
    )
    return response.model_dump_json(by_alias=True, exclude_none=True).encode()
