"""The one try-on flow of both doors (`POST /api/try-on` and `POST /api/try-on/jobs`).

A request: receive (stream the upload, validate the options, resolve the stored images it names
by id, app/images) -> the result cache -> 1. decode -> 2. fit to the working size -> 3. infer
(the worker) -> 4. encode (and remember in the cache). The job door runs 3 and 4 later, in the
job runner; everything else is this same code, so every intake protection, the cache and the
usage record cover both doors alike. The two routes differ only in how they answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.cache.keys import cache_key, hash_files, request_fingerprint
from app.cache.results import ResultCache
from app.edge.clients import client_id
from app.edge.context import request_context
from app.edge.envelope import describe_validation_errors
from app.edge.errors import InvalidFieldError
from app.edge.schemas import TryOnOptions, TryOnResponse
from app.images.resolve import assemble_images, named_ids, resolve_ids
from app.images.store import ImageStore, Pixels, StoredImage
from app.inference.contract import TryOnJob, TryOnOutcome, Worker
from app.media.encoding import EncodedResult, encode_result
from app.media.intake import Intake, TryOnImages
from app.media.uploads import ReceivedForm
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
    """A received try-on request: the raw form, its validated options, the stored images it
    names (`ids` by file field; `stored` once resolved), its files' hashes (lazy)."""

    form: ReceivedForm
    options: TryOnOptions
    ids: dict[str, str] = field(default_factory=dict)
    stored: dict[str, StoredImage] = field(default_factory=dict)
    _file_hashes: dict[str, str] | None = field(default=None, repr=False)

    async def file_hashes(self) -> dict[str, str]:
        if self._file_hashes is None:
            self._file_hashes = await run_in_threadpool(hash_files, self.form)
        return self._file_hashes

    async def fingerprint(self) -> str:
        """What Idempotency-Key compares: every text field as sent and every file byte."""
        return request_fingerprint(await self.file_hashes(), self.form.fields)

    async def cache_key(self, model_identity: str) -> str | None:
        """The result cache's key; None for a random seed (no hashing at all then). A stored
        image counts by the sha256 of its upload, so by id and by file share an entry."""
        if self.options.seed == RANDOM_SEED:
            return None
        stored = {part: image.sha256 for part, image in self.stored.items()}
        return cache_key({**await self.file_hashes(), **stored}, self.options, model_identity)


async def receive_try_on(request: Request, intake: Intake, timer: StageTimer) -> ReceivedTryOn:
    """Stream the upload in (byte caps, deadlines) and validate the options before any decoding;
    each required image is a file part or the id of a stored image (422 for both or neither)."""
    with timer("upload"):
        form = await intake.receive(request, required=())
    ids = named_ids(form.files, form.fields)
    return ReceivedTryOn(form=form, options=parse_options(form.fields), ids=ids)


@dataclass
class PreparedTryOn:
    """A received try-on, ready for the worker: its images fitted, or its answer from the cache."""

    received: ReceivedTryOn
    cache_key: str | None  # None: not cacheable (random seed) or the cache is off
    cached: EncodedResult | None  # a cache hit: nothing left to do
    images: TryOnImages | None  # decoded and fitted (None on a cache hit)
    client: str = ""  # whose lane the work waits in (app/inference/waiting.py)
    # Resolves when the client hangs up; watched from the moment the body was in (`watch`).
    hung_up: asyncio.Future[Any] | None = None
    # Stored images: pinned until `release`; where the automatic mask of a stored person goes.
    image_store: ImageStore | None = None
    keep_mask: tuple[str, str] | None = None  # (person image id, cloth type)

    def stop_watching(self) -> None:
        if self.hung_up is not None:
            self.hung_up.cancel()

    @property
    def options(self) -> TryOnOptions:
        return self.received.options

    def job(self) -> TryOnJob:
        assert self.images is not None, "a cache hit has no work"
        on_outcome = None
        if self.keep_mask is not None and self.image_store is not None:
            on_outcome = partial(keep_automatic_mask, self.image_store, *self.keep_mask)
        return TryOnJob(
            images=self.images, options=self.options, client=self.client, on_outcome=on_outcome
        )

    def release(self) -> None:
        """The try-on ended (any way): its stored images may be evicted again."""
        if self.image_store is not None and self.images is not None:
            self.image_store.release([image.image_id for image in self.received.stored.values()])


async def keep_automatic_mask(
    store: ImageStore, image_id: str, cloth_type: str, outcome: TryOnOutcome
) -> None:
    """Keep the masker's mask with the stored person: the next try-on of it runs no masker."""
    if outcome.automatic_mask is not None:
        await store.put_mask(image_id, cloth_type, Pixels.from_image(outcome.automatic_mask))


async def prepare_try_on(
    request: Request,
    worker: Worker,
    intake: Intake,
    cache: ResultCache | None,
    store: ImageStore,
    timer: StageTimer,
    *,
    watch: Callable[[], Awaitable[Any]] | None = None,
) -> PreparedTryOn:
    """Receive the request, resolve its stored images, consult the cache, and on a miss decode
    and fit its images (a stored person's automatic mask, when kept, becomes the job's mask).

    Call it inside the worker's admission (503s before a byte). Records the usage (steps, cache
    hit or miss) on the request's context. Raises 408/413/415/422 naming the field, 404/410 for
    a stored image. On a miss the stored images are pinned: call `release` once the work ends.

    `watch` (the synchronous door: wait for the client's hang-up) starts as soon as the body is
    in and runs while the uploads decode, so a client that hangs up meanwhile is known before
    its work is queued (`PreparedTryOn.hung_up`); the caller stops it (`stop_watching`).
    """
    received = await receive_try_on(request, intake, timer)
    context = request_context(request)
    client = client_id(request)
    context.steps = received.options.num_inference_steps
    hung_up = asyncio.ensure_future(watch()) if watch is not None else None
    try:
        size = worker.size  # the working size: admission saw a model ready
        if received.ids:
            received.stored = await resolve_ids(received.ids, store, context.client, size)
        key = await received.cache_key(worker.model_identity) if cache is not None else None
        if key and cache is not None:
            result = await cache.get(key)
            context.cached = result is not None
            if result is not None:
                return PreparedTryOn(
                    received, key, cached=result, images=None, client=client, hung_up=hung_up
                )
        # 1. Decode and 2. preprocess (thread pool): bytes -> RGB images at the working size
        images = await assemble_images(received.form.files, received.stored, size, intake, timer)
        keep_mask = await reuse_automatic_mask(received, images, store)
    except BaseException:
        if hung_up is not None:
            hung_up.cancel()
        raise
    for image in received.stored.values():
        await store.pin(image.image_id)
    return PreparedTryOn(
        received,
        key,
        None,
        images,
        client=client,
        hung_up=hung_up,
        image_store=store,
        keep_mask=keep_mask,
    )


async def reuse_automatic_mask(
    received: ReceivedTryOn, images: TryOnImages, store: ImageStore
) -> tuple[str, str] | None:
    """A stored person's kept automatic mask for this cloth type becomes the job's mask (the
    masker's own output: the same image). Returns (image id, cloth type) where the masker's mask
    is still to be kept, else None."""
    person = received.stored.get("person_image")
    if person is None or images.mask_image is not None:
        return None
    cloth_type = received.options.cloth_type
    kept = await store.mask(person.image_id, cloth_type)
    if kept is None:
        return person.image_id, cloth_type
    images.mask_image = kept.to_image()
    return None


async def encode_outcome(
    outcome: TryOnOutcome,
    job: TryOnJob,
    timer: StageTimer,
    cache: ResultCache | None,
    cache_key: str | None,
) -> EncodedResult:
    """Stage 4 (thread pool): the image in `job`'s output format, the mask as PNG; remembered in
    the result cache under `cache_key`, when there is one; the `job`'s own `on_outcome` first."""
    options = job.options
    if job.on_outcome is not None:
        await job.on_outcome(outcome)
    timer.add_seconds(outcome.timings)
    with timer("encode"):
        result = await run_in_threadpool(
            encode_result, outcome.image, outcome.mask, outcome.seed, options.output_format
        )
    if cache is not None and cache_key is not None:
        await cache.put(cache_key, result)
    return result


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
