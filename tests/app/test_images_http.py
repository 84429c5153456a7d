"""Stored images over real HTTP on the tiny weights (README, "Upload once, try many"): a try-on
by ids is byte-identical to the same try-on by files; a stored person's automatic mask is
computed once per cloth type (the AutoMasker's forward calls are counted with hooks); ownership,
eviction, the id/file rules, a delete while a try-on naming it waits, a 48 MP photo kept fitted.

One server (keys on, the result cache off so that every try-on really runs, 3 images a client).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from http_helpers import (
    FAST,
    Part,
    assert_envelope,
    image_bytes,
    post_parts,
    post_try_on,
    serve,
    tiny_settings,
    wait_until_ready,
)
from jobs_helpers import JOBS, SLOW, masked_parts, submit
from PIL import Image

from app.images.store import InMemoryImageStore
from app.inference.worker import InferenceWorker
from app.main import create_app
from catvton.tiny import TINY_SIZE

IMAGES = "/api/try-on/images"
ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef00"
KEYS_TEXT = f"alice {ALICE}\nbob {BOB}\n"
MAX_IMAGES = 3


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


A, B = bearer(ALICE), bearer(BOB)


class Served:
    def __init__(self, base_url: str, worker: InferenceWorker, store: InMemoryImageStore) -> None:
        self.base_url, self.worker, self.store = base_url, worker, store


@pytest.fixture(scope="module")
def served(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    keys = tmp_path_factory.mktemp("images") / "keys.txt"
    keys.write_text(KEYS_TEXT)
    settings = tiny_settings(
        tiny_weights,
        api_keys_file=keys,
        cache_mb=0,
        max_images_per_client=MAX_IMAGES,
        max_image_megapixels=50,
        max_upload_mb=2.0,
    )
    worker = InferenceWorker.from_settings(settings)
    app = create_app(settings, worker)
    with serve(settings, app=app) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield Served(base_url, worker, app.state.images)


class MaskerCalls:
    """Forward calls of the AutoMasker's networks (DensePose, SCHP ATR and LIP)."""

    def __init__(self, worker: InferenceWorker) -> None:
        assert worker.device.models is not None
        masker = worker.device.models.masker
        self.count = 0
        self.handles = [
            network.register_forward_pre_hook(self.counted)
            for network in (masker.densepose, masker.schp_atr, masker.schp_lip)
        ]

    def counted(self, module: torch.nn.Module, args: tuple) -> None:
        self.count += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def masker_calls(served: Served) -> Iterator[MaskerCalls]:
    calls = MaskerCalls(served.worker)
    yield calls
    calls.remove()


PERSON = image_bytes()  # 120x160 JPEG
CLOTH = image_bytes((100, 100))


def store(served: Served, data: bytes, headers: dict[str, str] = A) -> httpx.Response:
    return post_parts(
        f"{served.base_url}{IMAGES}", [("image", data, "x.jpg", "image/jpeg")], headers
    )


def stored_id(served: Served, data: bytes, headers: dict[str, str] = A) -> str:
    response = store(served, data, headers)
    assert response.status_code == 201, response.text
    return response.json()["imageId"]


def fields(**values: str) -> list[Part]:
    return [(name, value.encode(), None, None) for name, value in values.items()]


def file_part(name: str, data: bytes) -> Part:
    return (name, data, f"{name}.jpg", "image/jpeg")


def person_by_id(image_id: str) -> list[Part]:
    return [*fields(person_image_id=image_id, **FAST), file_part("cloth_image", CLOTH)]


def try_on(served: Served, parts: list[Part], headers: dict[str, str] = A) -> dict:
    response = post_try_on(served.base_url, parts, headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_storing_answers_the_document_and_the_sha256_of_the_upload(served: Served) -> None:
    response = store(served, PERSON)
    assert response.status_code == 201
    body = response.json()
    assert response.headers["Location"] == f"{IMAGES}/{body['imageId']}"
    assert body["success"] is True
    assert (body["width"], body["height"], body["bytes"]) == (120, 160, len(PERSON))
    assert body["sha256"] == hashlib.sha256(PERSON).hexdigest()  # what the cache key uses
    assert body["expiresAt"].endswith("Z")
    got = httpx.get(f"{served.base_url}{IMAGES}/{body['imageId']}", headers=A, timeout=10)
    assert got.status_code == 200 and got.json()["imageId"] == body["imageId"]
    assert_envelope(store(served, b"not an image"), 415, "unsupported_image", "image")


def test_a_try_on_by_ids_is_byte_identical_to_the_same_try_on_by_files(served: Served) -> None:
    options = fields(seed="7", **FAST)
    by_files = try_on(
        served, [file_part("person_image", PERSON), file_part("cloth_image", CLOTH), *options]
    )
    person_id, cloth_id = stored_id(served, PERSON), stored_id(served, CLOTH)
    by_ids = try_on(
        served, fields(person_image_id=person_id, cloth_image_id=cloth_id, seed="7", **FAST)
    )
    mixed = try_on(
        served, [*fields(person_image_id=person_id), file_part("cloth_image", CLOTH), *options]
    )
    assert by_ids["imageBase64"] == by_files["imageBase64"] == mixed["imageBase64"]
    assert by_ids["cached"] is False  # the cache is off: each one ran


def test_the_second_try_on_of_a_stored_person_runs_no_masker_and_no_decode(
    served: Served, masker_calls: MaskerCalls
) -> None:
    person_id, cloth_id = stored_id(served, PERSON), stored_id(served, CLOTH)
    request = fields(person_image_id=person_id, cloth_image_id=cloth_id, seed="3", **FAST)
    first = try_on(served, request)
    assert masker_calls.count > 0 and "mask" in first["timingsMs"]
    calls = masker_calls.count
    second = try_on(served, request)
    assert masker_calls.count == calls  # the kept mask, not the masker
    assert "mask" not in second["timingsMs"] and "decode" not in second["timingsMs"]
    assert second["imageBase64"] == first["imageBase64"]
    # Another cloth type is another mask: the masker runs once more for it, then never again.
    lower = fields(person_image_id=person_id, cloth_image_id=cloth_id, cloth_type="lower", **FAST)
    assert "mask" in try_on(served, lower)["timingsMs"] and masker_calls.count > calls
    calls = masker_calls.count
    assert "mask" not in try_on(served, lower)["timingsMs"] and masker_calls.count == calls


ANY_ID = ("person_image_id", b"x" * 22, None, None)


@pytest.mark.parametrize(
    ("parts", "says"),
    [
        (
            [file_part("person_image", PERSON), ANY_ID, file_part("cloth_image", CLOTH)],
            "person_image and person_image_id: send one of them",
        ),
        ([file_part("cloth_image", CLOTH)], "person_image: required"),
        ([file_part("person_image", PERSON)], "cloth_image: required"),
    ],
)
def test_both_a_file_and_its_id_or_neither_is_422_naming_the_field(
    served: Served, parts: list[Part], says: str
) -> None:
    assert_envelope(post_try_on(served.base_url, parts, A), 422, "invalid_field", says)


def test_ids_of_another_client_unknown_or_deleted_are_404_and_evicted_410(served: Served) -> None:
    base = served.base_url
    alices = stored_id(served, PERSON)
    for method in ("GET", "DELETE"):
        response = httpx.request(method, f"{base}{IMAGES}/{alices}", headers=B, timeout=10)
        assert_envelope(response, 404, "image_not_found", "no such stored image")
    by_bob = post_try_on(
        base, [*fields(person_image_id=alices), file_part("cloth_image", CLOTH)], B
    )
    assert_envelope(by_bob, 404, "image_not_found", "person_image_id")
    for path in ("nope", "A" * 22):
        response = httpx.get(f"{base}{IMAGES}/{path}", headers=A, timeout=10)
        assert_envelope(response, 404, "image_not_found", "no such stored image")
    assert httpx.delete(f"{base}{IMAGES}/{alices}", headers=A, timeout=10).status_code == 204
    assert_envelope(
        httpx.get(f"{base}{IMAGES}/{alices}", headers=A, timeout=10), 404, "image_not_found", ""
    )
    # Eviction: a client's own least recently used goes first; a try-on is a use.
    alices_kept = stored_id(served, PERSON)
    first, second, third = (stored_id(served, CLOTH, B) for _ in range(3))
    try_on(served, [*fields(cloth_image_id=first, **FAST), file_part("person_image", PERSON)], B)
    stored_id(served, CLOTH, B)  # the fourth: `second` is now bob's least recently used
    assert_envelope(
        httpx.get(f"{base}{IMAGES}/{second}", headers=B, timeout=10), 410, "image_expired", ""
    )
    by_evicted = post_try_on(
        base, [*fields(person_image_id=second), file_part("cloth_image", CLOTH)], B
    )
    assert_envelope(by_evicted, 410, "image_expired", "person_image_id")
    for kept in (first, third):
        assert httpx.get(f"{base}{IMAGES}/{kept}", headers=B, timeout=10).status_code == 200
    # Bob's count is his own: alice's image stored before his four is still there.
    assert httpx.get(f"{base}{IMAGES}/{alices_kept}", headers=A, timeout=10).status_code == 200


def poll_job(base_url: str, job_id: str, condition: Callable[[dict], bool]) -> dict:
    deadline = time.monotonic() + 300
    while True:
        body = httpx.get(f"{base_url}{JOBS}/{job_id}", headers=A, timeout=10).json()
        if condition(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_an_image_deleted_while_a_job_naming_it_waits_still_serves_that_job(
    served: Served,
) -> None:
    base = served.base_url
    person_id = stored_id(served, PERSON)
    blocker = submit(base, masked_parts(seed="-1", **SLOW), A).json()
    poll_job(base, blocker["jobId"], lambda body: body["progress"]["step"] >= 1)
    queued = submit(
        base, [*fields(person_image_id=person_id, **FAST), file_part("cloth_image", CLOTH)], A
    ).json()
    assert queued["status"] == "queued"
    assert httpx.delete(f"{base}{IMAGES}/{person_id}", headers=A, timeout=10).status_code == 204
    httpx.post(f"{base}{JOBS}/{blocker['jobId']}/cancel", headers=A, timeout=10)
    done = poll_job(base, queued["jobId"], lambda body: body["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded", done


def test_a_48_megapixel_photo_is_kept_fitted_not_as_decoded(served: Served) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8000, 6000), (90, 120, 200)).save(buffer, format="PNG")  # ~150 KB
    response = post_parts(
        f"{served.base_url}{IMAGES}", [("image", buffer.getvalue(), "big.png", "image/png")], A
    )
    assert response.status_code == 201, response.text
    assert (response.json()["width"], response.json()["height"]) == (8000, 6000)  # the photo's
    image_id = response.json()["imageId"]
    entry = served.store._entries[image_id]  # the kept pixels: what the memory cap counts
    for pixels in entry.image.fitted.values():
        assert (pixels.width, pixels.height) == TINY_SIZE
    assert entry.nbytes <= 3 * TINY_SIZE[0] * TINY_SIZE[1] * 3  # ~110 KB, not 144 MB
