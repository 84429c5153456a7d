"""/api/try-on/images: store a photo once, then name it in try-ons (README, "Upload once, try
many"). Storing goes through the try-on intake (admission before a byte, the same caps, decode
budget and EXIF handling), so an image upload costs what a try-on upload costs and no more."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from app.edge.clients import client_id
from app.edge.context import request_context
from app.edge.dependencies import ImagesDep, IntakeDep, WorkerDep
from app.edge.envelope import error_responses
from app.edge.errors import ImageNotFoundError
from app.edge.ids import ID_PATTERN, short_id
from app.edge.schemas import FILE_SCHEMA, multipart_body
from app.images.resolve import IMAGE_FIELD, stored_form
from app.images.store import StoredImage
from app.jobs.documents import iso_time

logger = logging.getLogger(__name__)
IMAGES_PATH = "/api/try-on/images"
router = APIRouter(prefix=IMAGES_PATH, tags=["images"])

IMAGE_REQUEST_BODY = multipart_body([IMAGE_FIELD], {IMAGE_FIELD: FILE_SCHEMA})


class ImageDocument(BaseModel):
    """A stored image, as POST and GET answer it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    success: bool = True
    image_id: str = Field(description="name it as person_image_id, cloth_image_id or mask_image_id")
    width: int = Field(description="pixels, upright, as decoded")
    height: int = Field(description="pixels, upright, as decoded")
    bytes: int = Field(description="size of the uploaded file")
    sha256: str = Field(description="SHA-256 (hex) of the uploaded file")
    expires_at: str | None = Field(description="forgotten then unless used again (each use renews)")


def render(image: StoredImage) -> bytes:
    document = ImageDocument(
        image_id=image.image_id,
        width=image.width,
        height=image.height,
        bytes=image.upload_bytes,
        sha256=image.sha256,
        expires_at=iso_time(image.expires_at),
    )
    return document.model_dump_json(by_alias=True).encode()


async def valid_image_id(
    image_id: Annotated[str, Path(description="the imageId of the upload's answer")],
) -> str:
    """A malformed id can name no image: 404 without a lookup (never a 422)."""
    if not ID_PATTERN.match(image_id):
        raise ImageNotFoundError()
    return image_id


ImageId = Annotated[str, Depends(valid_image_id)]


@router.post(
    "",
    status_code=201,
    response_model=ImageDocument,
    responses=error_responses(401, 408, 413, 415, 422, 429, 503),
    openapi_extra=IMAGE_REQUEST_BODY,
    summary="Store a photo (multipart part `image`) to name it in later try-ons",
)
async def store_image(
    request: Request, worker: WorkerDep, intake: IntakeDep, images: ImagesDep
) -> Response:
    """201 + Location; the image is kept fitted to the working size, never as the original."""
    with worker.admission():  # loading, failed or full: 503 before reading megabytes
        form = await intake.receive(request, file_fields=(IMAGE_FIELD,), required=(IMAGE_FIELD,))
        image = await stored_form(form.files[IMAGE_FIELD], intake, worker.size, client_id(request))
    image = await images.add(image)
    logger.info("image %s stored (%d bytes uploaded)", short_id(image.image_id), image.upload_bytes)
    return Response(
        render(image),
        201,
        headers={"Location": f"{IMAGES_PATH}/{image.image_id}"},
        media_type="application/json",
    )


@router.get(
    "/{image_id}",
    response_model=ImageDocument,
    responses=error_responses(401, 404, 410, 422),
    summary="The stored image's document",
)
async def get_image(image_id: ImageId, request: Request, images: ImagesDep) -> Response:
    image = await images.get(image_id, request_context(request).client, touch=False)
    return Response(render(image), media_type="application/json")


@router.delete(
    "/{image_id}",
    status_code=204,
    responses=error_responses(401, 404, 410, 422),
    summary="Forget the image and its masks (a queued try-on naming it still runs)",
)
async def delete_image(image_id: ImageId, request: Request, images: ImagesDep) -> Response:
    await images.delete(image_id, request_context(request).client)
    return Response(status_code=204)
