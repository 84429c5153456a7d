"""The intake of a try-on, one object both doors use: receive -> decode -> fit, each stage bounded.

`Intake` holds the limits from the settings and the one decode memory budget of the process; the
synchronous route and the job submit route call its stages inside the worker's `admission()`, so
every protection below applies to both:

- receive (event loop): the streamed multipart body with byte caps, deadlines and a bound on the
  parser's work (`app.media.uploads`);
- decode (thread pool): every file's header checked before any file is decoded, then each decode
  within the memory budget (`app.media.decoding`);
- fit (thread pool): each image fitted to the working size once, with the pipeline's own rules.

A stage returns or raises only once every thread-pool call it started has ended (`settle_all`), so
a request keeps its queue place, and the queue bound keeps meaning something, until its decodes
have finished: a request that failed fast no longer leaves decodes running for nobody.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypedDict, TypeVar

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.media.decoding import decode_cost, decode_image
from app.media.uploads import (
    FILE_FIELDS,
    REQUIRED_FILE_FIELDS,
    ReceivedForm,
    Upload,
    UploadLimits,
    receive_upload,
)
from app.settings import Settings
from catvton.preprocess import check_mask_size, fit_cloth, fit_mask, fit_person, upright_size

T = TypeVar("T")


class DecodeLimits(TypedDict):
    """What every decode of this server is bounded by (app/media/decoding.py's keywords)."""

    size: tuple[int, int]
    max_pixels: int
    max_jpeg_scans: int


@dataclass
class TryOnImages:
    person_image: Image.Image
    cloth_image: Image.Image
    mask_image: Image.Image | None


async def settle_all(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Run `awaitables` concurrently; their results in order, or the first error in order.

    Returns or raises only once every one has ended. On the first error (or when this task is
    cancelled) the others are cancelled: one still waiting (for the decode budget) ends at once,
    one in a thread-pool thread ends when its thread does (a C decoder cannot be interrupted).
    """
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # a no-op on those that ended
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return [task.result() for task in tasks]


class MemoryBudget:
    """Bytes that image decoding may hold at once, over all requests; first come, first served.

    A decode reserves what `decode_cost` says before it starts and waits while the budget is
    taken; one larger than the whole budget runs alone. Event-loop only (no lock: nothing here
    awaits between reading and writing the count).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        nbytes = min(nbytes, self.capacity)
        if self._waiting or self.in_use + nbytes > self.capacity:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append((nbytes, turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self.in_use -= nbytes  # granted in the same step as the cancellation
                else:
                    self._waiting.remove((nbytes, turn))
                self._admit()
                raise
        else:
            self.in_use += nbytes
        try:
            yield
        finally:
            self.in_use -= nbytes
            self._admit()

    def _admit(self) -> None:
        while self._waiting and self.in_use + self._waiting[0][0] <= self.capacity:
            nbytes, turn = self._waiting.popleft()
            self.in_use += nbytes
            turn.set_result(None)


class Intake:
    """The intake stages, with the limits of `settings` and the process's decode memory budget."""

    def __init__(self, settings: Settings) -> None:
        self.upload_limits = UploadLimits(
            max_file_bytes=settings.max_upload_bytes,
            timeout=settings.upload_timeout,
            idle_timeout=settings.upload_idle_timeout,
        )
        self.max_pixels = settings.max_image_pixels
        self.max_jpeg_scans = settings.max_jpeg_scans
        self.budget = MemoryBudget(settings.decode_memory_bytes)

    async def receive(
        self,
        request: Request,
        *,
        file_fields: tuple[str, ...] = FILE_FIELDS,
        required: tuple[str, ...] = REQUIRED_FILE_FIELDS,
    ) -> ReceivedForm:
        """The multipart body, within the byte caps and upload deadlines (app/media/uploads.py)."""
        return await receive_upload(
            request, self.upload_limits, file_fields=file_fields, required=required
        )

    async def decode_files(
        self, files: Mapping[str, Upload], size: tuple[int, int]
    ) -> dict[str, Image.Image]:
        """Uploaded files -> images by field name, in the thread pool (`mask_image` as a mask).

        First every file's header (pixels, JPEG scans, the decode's memory): a bad file is
        refused before any costly decode starts. Then one decode per file, each within the
        memory budget; libjpeg and zlib release the GIL, so two files decode on two cores.
        """
        names = list(files)
        limits = DecodeLimits(
            size=size, max_pixels=self.max_pixels, max_jpeg_scans=self.max_jpeg_scans
        )
        costs = await settle_all(
            [run_in_threadpool(partial(decode_cost, files[name], **limits)) for name in names]
        )
        decoded = await settle_all(
            [
                self._decode_within_budget(
                    files[name],
                    cost,
                    partial(decode_image, rgb=name != "mask_image", **limits),
                )
                for name, cost in zip(names, costs, strict=True)
            ]
        )
        return dict(zip(names, decoded, strict=True))

    async def _decode_within_budget(
        self, upload: Upload, cost: int, decode: partial[Image.Image]
    ) -> Image.Image:
        async with self.budget.reserve(cost):
            return await run_in_threadpool(decode, upload)

    @staticmethod
    async def fit(
        images: TryOnImages,
        size: tuple[int, int],
        upright_sizes: Mapping[str, tuple[int, int]] | None = None,
    ) -> TryOnImages:
        """Stage 2: fit each image to the working size once, with the pipeline's own rules.

        An image already fitted (a stored one, app/images) passes unchanged; `upright_sizes`
        gives its size as decoded by field name, for the mask-shape rule.

        Done here, in parallel thread-pool tasks (Pillow's resampling releases the GIL), so the
        device worker spends its time on the model; the pipeline's own fitting is then a no-op.
        The automatic mask is computed later, on the fitted person.
        """
        if images.mask_image is not None:
            # On the images as decoded, as the pipeline would (it sees them fitted): a mask of
            # another shape would be cropped onto a different region of the photo (422).
            sizes = upright_sizes or {}
            check_mask_size(
                sizes.get("person_image") or upright_size(images.person_image),
                sizes.get("mask_image") or upright_size(images.mask_image),
                size,
            )
        fits = [
            run_in_threadpool(fit_person, images.person_image, size),
            run_in_threadpool(fit_cloth, images.cloth_image, size),
        ]
        if images.mask_image is not None:
            fits.append(run_in_threadpool(fit_mask, images.mask_image, size))
        person_image, cloth_image, *mask_image = await settle_all(fits)
        return TryOnImages(
            person_image=person_image,
            cloth_image=cloth_image,
            mask_image=mask_image[0] if mask_image else None,
        )
