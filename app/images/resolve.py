"""Stored images in a try-on: the `*_id` fields checked and resolved, an upload turned into the
stored form, and the images of a try-on made from files and stored images alike.

One copy for both doors: app/inference/flow.py calls these from `receive_try_on` and
`prepare_try_on`. The rules (README, "Upload once, try many"):

- exactly one of a file part and its id (`person_image` / `person_image_id`, ...): both, or
  neither for the two required ones, is 422 naming the field;
- an id resolves before anything is queued: unknown (or another client's) 404, expired 410;
- a stored image enters the try-on in its fitted form (no decode), and the mask-shape rule sees
  its size as decoded, exactly as for the same file uploaded.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.edge.errors import ImageExpiredError, ImageNotFoundError, InvalidFieldError
from app.edge.ids import ID_PATTERN, new_id
from app.images.store import ImageStore, Pixels, StoredImage
from app.media.decoding import upright_size
from app.media.intake import Intake, TryOnImages, settle_all
from app.media.uploads import ACCEPTED_FORMATS, FILE_FIELDS, REQUIRED_FILE_FIELDS, Upload
from catvton.preprocess import fit_cloth, fit_mask, fit_person

if TYPE_CHECKING:
    from app.inference.flow import StageTimer

IMAGE_FIELD = "image"  # the one file part of POST /api/try-on/images
ID_FIELDS = {part: f"{part}_id" for part in FILE_FIELDS}


def named_ids(files: Mapping[str, Upload], fields: Mapping[str, str]) -> dict[str, str]:
    """The stored images a try-on names, by file field; 422 for both a file and its id, or
    neither for a required part."""
    ids: dict[str, str] = {}
    missing = []
    for part, id_field in ID_FIELDS.items():
        image_id = fields.get(id_field, "").strip()
        if image_id and part in files:
            raise InvalidFieldError(
                f"{part} and {id_field}: send one of them (the file, or the id of an image "
                "stored with POST /api/try-on/images), not both"
            )
        if image_id:
            ids[part] = image_id
        elif part not in files and part in REQUIRED_FILE_FIELDS:
            missing.append(part)
    if missing:
        raise InvalidFieldError(
            f"{', '.join(missing)}: required (a {ACCEPTED_FORMATS} file in a multipart form "
            f"part, or {', '.join(ID_FIELDS[part] for part in missing)} naming a stored image)"
        )
    return ids


async def resolve_ids(
    ids: Mapping[str, str], store: ImageStore, owner: str | None, size: tuple[int, int]
) -> dict[str, StoredImage]:
    """Each named image (now its last use), or 404/410 naming the field."""
    stored = {}
    for part, image_id in ids.items():
        id_field = ID_FIELDS[part]
        if not ID_PATTERN.match(image_id):
            raise ImageNotFoundError(id_field)  # a malformed id can name no image
        try:
            image = await store.get(image_id, owner)
        except ImageNotFoundError:
            raise ImageNotFoundError(id_field) from None
        except ImageExpiredError:
            raise ImageExpiredError(id_field) from None
        if image.size != size:  # stored by a server of another working size: refit impossible
            raise ImageExpiredError(id_field)
        stored[part] = image
    return stored


async def assemble_images(
    files: Mapping[str, Upload],
    stored: Mapping[str, StoredImage],
    size: tuple[int, int],
    intake: Intake,
    timer: StageTimer,
) -> TryOnImages:
    """Stages 1 and 2 over files and stored images: the files decoded (the `decode` stage, only
    when there are files), then everything fitted (a stored image is already: a no-op)."""
    images = {part: image.image(part) for part, image in stored.items()}
    if files:
        with timer("decode"):
            images.update(await intake.decode_files(files, size))
    with timer("preprocess"):
        return await intake.fit(
            TryOnImages(
                person_image=images["person_image"],
                cloth_image=images["cloth_image"],
                mask_image=images.get("mask_image"),
            ),
            size,
            upright_sizes={part: (image.width, image.height) for part, image in stored.items()},
        )


def _has_transparency(data: bytes) -> bool:
    """From the header only; a format Pillow cannot open here (HEIC) is taken as opaque."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    except Exception:  # the RGB decode already accepted the file; this is only a hint
        return False


async def stored_form(
    upload: Upload, intake: Intake, size: tuple[int, int], client: str
) -> StoredImage:
    """An uploaded file -> what the store keeps: fitted once for each part it may play.

    Decoded as the try-on intake decodes (caps, budget, EXIF; 413/415 naming `image`) under the
    person's name, so the person and garment forms are exactly the try-on's; the mask form is
    the same decode seen as a mask (`L`), decoded again as a mask only when the file has
    transparency (a mask's transparent pixels mean "keep", a photo's mean white).
    """
    # Keyed by the part whose decode it is (RGB, or a mask), named `image` in any error.
    image = Upload(IMAGE_FIELD, upload.data, upload.filename, upload.content_type)
    decoded = (await intake.decode_files({"person_image": image}, size))["person_image"]
    as_mask = decoded
    if await run_in_threadpool(_has_transparency, upload.data):
        as_mask = (await intake.decode_files({"mask_image": image}, size))["mask_image"]
    person, cloth = await settle_all(
        [run_in_threadpool(fit_person, decoded, size), run_in_threadpool(fit_cloth, decoded, size)]
    )
    mask = await run_in_threadpool(fit_mask, as_mask, size)
    sha256 = await run_in_threadpool(lambda: hashlib.sha256(upload.data).hexdigest())
    width, height = await run_in_threadpool(upright_size, upload)
    return StoredImage(
        image_id=new_id(),
        client=client,
        width=width,
        height=height,
        upload_bytes=len(upload.data),
        sha256=sha256,
        size=size,
        fitted={
            "person_image": Pixels.from_image(person),
            "cloth_image": Pixels.from_image(cloth),
            "mask_image": Pixels.from_image(mask),
        },
    )
