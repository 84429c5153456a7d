"""Measure "upload once, try many" (issue 20) on the CPU demo server, through real HTTP.

Five garments on one person, two ways, with ~3 MB JPEGs (12 MP synthetic photos):
1. Bytes the client sends: every try-on uploading both photos, against the person stored once
   (POST /api/try-on/images) and named by `person_image_id` (garments still uploaded), and
   against a catalogue where the garments are stored too (all by id). Target: the second and
   later try-ons of the person send under 5 % of the first one's bytes of the person.
2. Server time saved per reuse: the decode + preprocess + mask stages of a try-on by upload
   (its `timingsMs`) against a reuse by id (no decode of the person, the kept mask).

The server is the demo (`python -m app --demo`: tiny random weights at 96x128 on the CPU,
answers upscaled), served by uvicorn in this process. Random seeds: never a cache hit.

    .venv/bin/python scripts/benchmark_images.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

from benchmark_service import jpeg_bytes, synthetic_photo  # noqa: E402
from http_helpers import multipart, serve, wait_until_ready  # noqa: E402
from machine import describe_machine  # noqa: E402

from app.settings import Settings  # noqa: E402

GARMENTS = 5
PHOTO_SIZE = (3000, 4000)  # 12 MP: ~3 MB as JPEG
OPTIONS = [
    ("num_inference_steps", b"10", None, None),
    ("guidance_scale", b"1.0", None, None),
    ("seed", b"-1", None, None),  # never a cache hit
]
SAVED_STAGES = ("decode", "preprocess", "mask")


def file_part(name: str, data: bytes) -> tuple[str, bytes, str, str]:
    return (name, data, f"{name}.jpg", "image/jpeg")


def id_part(name: str, image_id: str) -> tuple[str, bytes, None, None]:
    return (name, image_id.encode(), None, None)


class Client:
    """Counts the request body bytes it sends."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=600)
        self.sent = 0

    def post(self, path: str, parts: list) -> httpx.Response:
        body, content_type = multipart(parts)
        self.sent += len(body)
        response = self.http.post(path, content=body, headers={"Content-Type": content_type})
        response.raise_for_status()
        return response

    def store(self, data: bytes) -> str:
        return self.post("/api/try-on/images", [file_part("image", data)]).json()["imageId"]


def sent_per_try_on(client: Client, try_on: list) -> list[int]:
    """Bytes sent for each of the try-ons (`try_on[i]()` runs the i-th)."""
    counts = []
    for run in try_on:
        before = client.sent
        run()
        counts.append(client.sent - before)
    return counts


def main() -> None:
    print(f"machine: {describe_machine()}")
    started = time.perf_counter()
    person = jpeg_bytes(synthetic_photo(PHOTO_SIZE, seed=1))
    garments = [jpeg_bytes(synthetic_photo(PHOTO_SIZE, seed=10 + i)) for i in range(GARMENTS)]
    print(f"photos: person {len(person) / 1e6:.2f} MB, garments {len(garments[0]) / 1e6:.2f} MB")
    with tempfile.TemporaryDirectory() as demo_dir:
        settings = Settings(demo=True, demo_dir=Path(demo_dir), device="cpu", max_upload_mb=20)
        with serve(settings) as base_url:
            assert wait_until_ready(base_url, 300)["status"] == "ok"
            client = Client(base_url)
            timings: dict[str, list[dict]] = {"upload": [], "reuse": []}

            def by_upload(garment: bytes) -> None:
                parts = [file_part("person_image", person), file_part("cloth_image", garment)]
                answer = client.post("/api/try-on", [*parts, *OPTIONS])
                timings["upload"].append(answer.json()["timingsMs"])

            uploads = sent_per_try_on(client, [lambda g=g: by_upload(g) for g in garments])

            stored: dict[str, str] = {}

            def by_person_id(garment: bytes) -> None:
                if "person" not in stored:
                    stored["person"] = client.store(person)
                parts = [
                    id_part("person_image_id", stored["person"]),
                    file_part("cloth_image", garment),
                ]
                timing = client.post("/api/try-on", [*parts, *OPTIONS]).json()["timingsMs"]
                if "mask" not in timing:  # a reuse: the first try-on by id computed the mask
                    timings["reuse"].append(timing)

            person_ids = sent_per_try_on(client, [lambda g=g: by_person_id(g) for g in garments])

            catalogue = [client.store(garment) for garment in garments]  # the shop's, once
            shopper: dict[str, str] = {}

            def all_by_id(garment_id: str) -> None:
                if "person" not in shopper:
                    shopper["person"] = client.store(person)
                parts = [
                    id_part("person_image_id", shopper["person"]),
                    id_part("cloth_image_id", garment_id),
                ]
                client.post("/api/try-on", [*parts, *OPTIONS])

            all_ids = sent_per_try_on(client, [lambda i=i: all_by_id(i) for i in catalogue])

    def row(name: str, counts: list[int]) -> None:
        later = statistics.mean(counts[1:])
        print(
            f"{name:<34} first {counts[0] / 1e6:7.3f} MB, later four {later / 1e6:7.3f} MB each "
            f"({100 * later / counts[0]:5.1f} % of the first), all five {sum(counts) / 1e6:6.2f} MB"
        )

    print("\nbytes sent by the client, five garments on one person:")
    row("by upload (both files each time)", uploads)
    row("person by id, garments uploaded", person_ids)
    row("person and garments by id", all_ids)
    person_sent = person_ids[1] - len(garments[1])  # the body less the garment file
    print(
        f"person in a later try-on: {person_sent} B (the body less the garment), "
        f"{100 * person_sent / len(person):.3f} % of the person photo (target < 5 %)"
    )

    def saved(timing: dict) -> float:
        return sum(timing.get(stage, 0.0) for stage in SAVED_STAGES)

    upload_ms = statistics.median(saved(t) for t in timings["upload"])
    reuse_ms = statistics.median(saved(t) for t in timings["reuse"])
    print("\nserver time, decode + preprocess + mask (median ms, from timingsMs):")
    print(f"  by upload (both photos decoded, the masker runs): {upload_ms:8.1f}")
    print(f"  reuse (person by id, its mask kept; the garment still decoded): {reuse_ms:8.1f}")
    for stage in SAVED_STAGES:
        values = [t.get(stage, 0.0) for t in timings["upload"]]
        reused = [t.get(stage, 0.0) for t in timings["reuse"]]
        upload, reuse = statistics.median(values), statistics.median(reused)
        print(f"    {stage:<10} upload {upload:8.1f}  reuse {reuse:8.1f}")
    print(f"  saved per reuse: {upload_ms - reuse_ms:.1f} ms (demo: the masker at 96x128)")
    print(f"\ntook {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
