"""Measure the service's own overhead per try-on: upload intake, preprocessing, response encoding.

Two 12-megapixel JPEG uploads (a phone portrait stored landscape with an EXIF rotation, and a
landscape garment photo), median over `--requests` requests, PNG and JPEG output:

1. At the production working size (768x1024), by running exactly the functions the route runs for
   stages 1, 2 and 4 (multipart parsing of the streamed body, decoding, fitting, encoding plus the
   JSON body), with a naive baseline beside it: full-size decode and PNG at Pillow's default level.
   The model is left out here: tiny random networks at 768x1024 take minutes per image on a CPU.
2. Through real HTTP on tiny generated weights (uvicorn in this process, 96x128 working size), to
   show the overhead as a share of the whole request as the client sees it.

    python scripts/benchmark_service.py [--requests 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from starlette.requests import Request

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

from app.edge.schemas import TryOnResponse  # noqa: E402
from app.images.resolve import assemble_images  # noqa: E402
from app.inference.flow import StageTimer  # noqa: E402
from app.media.encoding import encode_image  # noqa: E402
from app.media.intake import Intake  # noqa: E402
from app.settings import Settings  # noqa: E402
from catvton.preprocess import fit_cloth, fit_person  # noqa: E402

WORKING_SIZE = (768, 1024)
CHUNK_BYTES = 64 * 1024  # what uvicorn hands the app per receive() at most, roughly


def synthetic_photo(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth shapes plus sensor-like noise: compresses like a real photo (a few MB at 12 MP)."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        127 + 60 * np.sin(x / (300 + 40 * c) + c) * np.cos(y / (500 - 60 * c)) for c in range(3)
    ]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def multipart_body(files: dict[str, bytes], boundary: str = "benchmark-boundary") -> bytes:
    chunks = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files.items()
    ]
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def streamed_request(body: bytes, boundary: str = "benchmark-boundary") -> Request:
    """A Starlette request whose body arrives in chunks, as uvicorn delivers it."""
    chunks = [body[start : start + CHUNK_BYTES] for start in range(0, len(body), CHUNK_BYTES)]

    async def receive() -> dict:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    headers = [
        (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def time_ms(function: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return (time.perf_counter() - started) * 1000, result


def service_overhead(body: bytes, output_format: str) -> dict[str, float]:
    """Stages 1, 2 and 4 of the route, with the route's own functions, in milliseconds."""
    request = streamed_request(body)
    intake = Intake(Settings())  # the defaults: 20 MB a file, 40 megapixels
    upload_ms, form = time_ms(lambda: asyncio.run(intake.receive(request)))
    # Stages 1 and 2 exactly as the try-on flow runs them, timed by the flow's own timer.
    timer = StageTimer()
    images = asyncio.run(assemble_images(form.files, {}, WORKING_SIZE, intake, timer))
    decode_ms, preprocess_ms = timer.timings_ms["decode"], timer.timings_ms["preprocess"]
    # The model's output stands in for the result: same size, photo-like content.
    encode_ms, encoded = time_ms(lambda: encode_image(images.person_image, output_format))
    respond_ms, _ = time_ms(
        lambda: TryOnResponse(
            image_base64=encoded.base64,
            mime_type=encoded.mime_type,
            width=encoded.width,
            height=encoded.height,
            seed=42,
            request_id="benchmark",
            timings_ms={},
        ).model_dump_json(by_alias=True)
    )
    stages = {
        "upload": upload_ms,
        "decode": decode_ms,
        "preprocess": preprocess_ms,
        "encode": encode_ms + respond_ms,
    }
    return {**stages, "total": sum(stages.values())}


def naive_overhead(files: dict[str, bytes]) -> float:
    """The straightforward way: full-size decode, fit, PNG at Pillow's default level, base64."""
    started = time.perf_counter()
    person = ImageOps.exif_transpose(Image.open(io.BytesIO(files["person_image"]))).convert("RGB")
    cloth = ImageOps.exif_transpose(Image.open(io.BytesIO(files["cloth_image"]))).convert("RGB")
    person, _ = fit_person(person, WORKING_SIZE), fit_cloth(cloth, WORKING_SIZE)
    buffer = io.BytesIO()
    person.save(buffer, format="PNG")
    base64.b64encode(buffer.getvalue())
    return (time.perf_counter() - started) * 1000


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}


def benchmark_http(files: dict[str, bytes], requests: int) -> None:
    """Whole requests through uvicorn on tiny weights; overhead = everything but the model."""
    from http_helpers import post_try_on, serve, tiny_settings, wait_until_ready

    from catvton.tiny import write_tiny_weights

    weights_dir = write_tiny_weights(Path(tempfile.mkdtemp(prefix="catvton-bench-")))
    parts = [(name, data, f"{name}.jpg", "image/jpeg") for name, data in files.items()]
    parts += [("num_inference_steps", b"10", None, None), ("guidance_scale", b"1.0", None, None)]
    # No result cache: every request must run its stages (a fixed seed would hit it from the 2nd).
    with serve(tiny_settings(weights_dir, log_level="warning", cache_mb=0)) as base_url:
        wait_until_ready(base_url)
        for output_format in ("png", "jpeg"):
            rows = []
            for _ in range(requests):
                fields = [*parts, ("output_format", output_format.encode(), None, None)]
                started = time.perf_counter()
                response = post_try_on(base_url, fields)
                client_ms = (time.perf_counter() - started) * 1000
                assert response.status_code == 200, response.text
                timings = response.json()["timingsMs"]
                overhead = sum(timings[s] for s in ("upload", "decode", "preprocess", "encode"))
                rows.append({"overhead": overhead, "infer": timings["infer"], "client": client_ms})
            row = median_of(rows)
            share = row["overhead"] / row["client"]
            print(
                f"  {output_format:4}  overhead {row['overhead']:6.0f} ms   "
                f"model {row['infer']:6.0f} ms   whole request {row['client']:6.0f} ms   "
                f"overhead share {share:5.1%}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--skip-http", action="store_true", help="only the 768x1024 part")
    args = parser.parse_args()

    person = synthetic_photo((4032, 3024), seed=1)  # stored landscape, shown portrait (EXIF 6)
    cloth = synthetic_photo((4000, 3000), seed=2)
    files = {"person_image": jpeg_bytes(person, orientation=6), "cloth_image": jpeg_bytes(cloth)}
    body = multipart_body(files)
    sizes = ", ".join(f"{name} {len(data) / 1e6:.1f} MB" for name, data in files.items())
    print(f"two 12 MP JPEGs ({sizes}); working size {WORKING_SIZE[0]}x{WORKING_SIZE[1]}")
    cores, load = os.cpu_count(), os.getloadavg()[0]
    print(f"{cores} CPU cores, load average {load:.1f} at the start (other work inflates times)")
    print(f"median of {args.requests} requests, milliseconds:")
    for output_format in ("png", "jpeg"):
        row = median_of([service_overhead(body, output_format) for _ in range(args.requests)])
        stages = "  ".join(f"{stage} {ms:5.0f}" for stage, ms in row.items())
        print(f"  {output_format:4}  {stages}")
    naive = statistics.median(naive_overhead(files) for _ in range(min(args.requests, 5)))
    print(f"  naive (full decode, PNG level 6): total {naive:5.0f}")
    if not args.skip_http:
        print(f"through HTTP on tiny weights (96x128), median of {args.requests} requests:")
        benchmark_http(files, args.requests)


if __name__ == "__main__":
    main()
