"""Measure previews in the service (README, "Previews"): step -> readable over HTTP, bytes.

uvicorn runs in this process on 127.0.0.1 in demo mode (tiny weights at 96x128, CPU), so the
device worker's step times and the client's clock are the same `perf_counter`:

1. Step -> preview readable: from the end of a denoising step's UNet call (a forward hook) to the
   moment a client following the events stream has the preview's JPEG bytes of that step
   (`event: preview`, then `GET .../preview` with If-None-Match). Target: under 100 ms.
2. Bytes per preview: what the demo server stored (its working size's latents x 2), and at the
   real working size 768x1024 (a 192x256 preview of noise latents: the worst case for JPEG, and
   of smooth latents: closer to a photo).

    python scripts/benchmark_previews_service.py [--steps 50] [--preview-every 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

from benchmark_jobs import parts_of, percentile, post  # noqa: E402
from benchmark_service import jpeg_bytes, synthetic_photo  # noqa: E402
from http_helpers import serve, tiny_settings, wait_until_ready  # noqa: E402
from machine import describe_machine  # noqa: E402

from app.inference.models import load_models  # noqa: E402
from app.inference.worker import InferenceWorker  # noqa: E402
from catvton.previews import latents_to_preview, preview_to_jpeg  # noqa: E402
from catvton.tiny import write_tiny_weights  # noqa: E402

JOBS = "/api/try-on/jobs"


def step_to_preview(base_url: str, worker: InferenceWorker, steps: int) -> list[int]:
    """Follows one job's events; fetches each new preview; prints the delays; returns its sizes."""
    assert worker.device.models is not None
    step_ends: list[float] = []
    handle = worker.device.models.pipeline.unet.register_forward_hook(
        lambda module, args, output: step_ends.append(time.perf_counter())
    )
    files = {
        "person_image": jpeg_bytes(synthetic_photo((768, 1024), seed=1)),
        "cloth_image": jpeg_bytes(synthetic_photo((768, 1024), seed=2)),
    }
    fields = [
        ("num_inference_steps", str(steps).encode(), None, None),
        ("guidance_scale", b"1.0", None, None),  # one UNet call per step
        ("seed", b"-1", None, None),
    ]
    readable: dict[int, float] = {}
    sizes: list[int] = []
    etag = None
    try:
        with httpx.Client(base_url=base_url, timeout=600) as client:
            job_id = post(client, JOBS, parts_of(files, *fields)).json()["jobId"]
            with client.stream("GET", f"{JOBS}/{job_id}/events") as stream:
                event = ""
                for line in stream.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "preview":
                        url = json.loads(line[5:])["url"]
                        headers = {"If-None-Match": etag} if etag else {}
                        response = client.get(url, headers=headers)
                        if response.status_code == 200:
                            step = int(response.headers["Preview-Step"])
                            readable.setdefault(step, time.perf_counter())
                            etag = response.headers["ETag"]
                            sizes.append(len(response.content))
    finally:
        handle.remove()
    delays = [(readable[step] - step_ends[step - 1]) * 1000 for step in sorted(readable)]
    print(
        f"1. step -> preview readable over HTTP: p50 {percentile(delays, 0.5):.1f} ms, "
        f"p90 {percentile(delays, 0.9):.1f} ms, max {max(delays):.1f} ms over {len(delays)} "
        f"previews of {steps} steps (target < 100 ms)"
    )
    return sizes


def real_size_bytes() -> tuple[int, int]:
    """JPEG bytes of a 192x256 preview (768x1024 working size): noise and smooth latents."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 128, 96, generator=generator)
    rows = torch.linspace(-1, 1, 128)[:, None].expand(128, 96)
    columns = torch.linspace(-1, 1, 96)[None, :].expand(128, 96)
    smooth = torch.stack([rows, columns, rows * columns, rows - columns])[None]
    return (
        len(preview_to_jpeg(latents_to_preview(noise))),
        len(preview_to_jpeg(latents_to_preview(smooth))),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--preview-every", type=int, default=1, help="1: every step is measured")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the tiny networks gain nothing from more; the server needs a core
    print(describe_machine())
    folder = Path(tempfile.mkdtemp(prefix="catvton-bench-"))
    weights_dir = write_tiny_weights(folder / "weights")
    # The demo server (answers upscaled to 768x1024), loading the tiny weights written above.
    settings = tiny_settings(
        weights_dir,
        demo=True,
        demo_dir=folder / "demo",
        size=None,
        log_level="warning",
        preview_every=args.preview_every,
    )
    worker = InferenceWorker.from_settings(
        settings, lambda progress: load_models(tiny_settings(weights_dir), progress)
    )
    with serve(settings, worker) as base_url:
        wait_until_ready(base_url)
        sizes = step_to_preview(base_url, worker, args.steps)
    noise, smooth = real_size_bytes()
    print(
        f"2. bytes per preview: demo server {statistics_of(sizes)}; at 768x1024 (192x256): "
        f"{noise} B for noise latents (worst case), {smooth} B for smooth ones"
    )
    print(f"load average at the end {os.getloadavg()[0]:.1f} (a shared machine inflates times)")


def statistics_of(sizes: list[int]) -> str:
    return f"{min(sizes)}-{max(sizes)} B ({len(sizes)} previews)" if sizes else "none"


if __name__ == "__main__":
    main()
