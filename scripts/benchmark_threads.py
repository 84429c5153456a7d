"""Demo try-on speed beside other CPU work: torch's default intra-op threads against one thread.

Why `--torch-threads auto` is 1 in demo mode (issue 21): the tiny networks are overhead-bound, and
a team of OpenMP threads that spin-waits for each other loses its time slices to any other busy
process. Four cases, each with torch's default thread count and with one thread:

- alone;
- beside one busy core: a Python spin loop in a subprocess;
- beside a second torch process doing 1024 x 1024 matmuls with its own default threads;
- beside a busy server: a subprocess shaped like a loaded `python -m app --demo`, its device
  thread running tiny try-ons with torch's default threads while one thread per core decodes and
  resizes a 12-megapixel JPEG (the intake's thread pool).

A measurement is one demo try-on (tiny weights, 96 x 128, `--steps` steps, guidance 2.5 as the API's
default), stopped at the first step that ends after `--cap` seconds; a step is the time between two
UNet calls (median), or the one step's own time when the first already outlasted the cap. Each
case runs `--rounds` rounds, alternating the thread counts; the table shows the median of rounds.
The machine (CPU model, cores, load average) is printed first, and the load after each case.

    python scripts/benchmark_threads.py          # about 1 to 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model
from PIL import Image

# Runs from anywhere without installing: the repository root holds the catvton package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catvton import CatVTONPipeline, WeightSources, load_pipeline
from catvton.errors import InferenceCanceledError
from catvton.tiny import TINY_SIZE, write_tiny_weights

GUIDANCE = 2.5  # the API's default: the UNet runs on a batch of two
LOADS = ("spin", "torch", "server")
CASES = {
    "alone": None,
    "beside one busy core (Python spin loop)": "spin",
    "beside a second torch process (matmuls)": "torch",
    "beside a busy server (try-ons + JPEG decoding)": "server",
}
READY = "ready"


def main() -> None:
    args = parse_arguments()
    if args.load:
        run_load(args.load, args.weights)
        return
    default_threads = torch.get_num_threads()  # before anything sets it
    print(machine(default_threads))
    with tempfile.TemporaryDirectory(prefix="catvton-threads-") as folder:
        weights = write_tiny_weights(Path(folder))
        pipeline = tiny_pipeline(weights)
        inputs = demo_inputs()
        for threads in (default_threads, 1):  # warm-up: allocator, first calls
            seconds_per_step(pipeline, inputs, threads, args.steps, args.cap)
        rows = []
        for case, load in CASES.items():
            with running(load, weights):
                per_threads: dict[int, list[float]] = {default_threads: [], 1: []}
                for _ in range(args.rounds):
                    for threads in per_threads:
                        per_threads[threads].append(
                            seconds_per_step(pipeline, inputs, threads, args.steps, args.cap)
                        )
            medians = {threads: statistics.median(times) for threads, times in per_threads.items()}
            rows.append((case, medians[default_threads], medians[1], os.getloadavg()[0]))
            print(f"  {case}: {medians[default_threads]:.3f} / {medians[1]:.3f} s", flush=True)
    report(rows, default_threads, args)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    parser.add_argument(
        "--cap", type=float, default=8.0, help="seconds one try-on may take (default 8)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="measurements per case and count")
    parser.add_argument("--load", choices=LOADS, help=argparse.SUPPRESS)  # a load's own process
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def machine(default_threads: int) -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    one, five, fifteen = os.getloadavg()
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores ({usable} usable), "
        f"load average {one:.2f} / {five:.2f} / {fifteen:.2f}\n"
        f"torch {torch.__version__}, default intra-op threads {default_threads}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


def tiny_pipeline(weights: Path) -> CatVTONPipeline:
    """The demo's pipeline: tiny weights through the real loader, CPU, fp32, 96 x 128."""
    resolved = WeightSources(weights_dir=weights).resolve()
    return load_pipeline(resolved, device="cpu", dtype="fp32", size=TINY_SIZE)


def demo_inputs() -> tuple[Image.Image, Image.Image, Image.Image]:
    """Person, garment and mask already at the working size: the steps are what is timed."""
    rng = np.random.default_rng(0)
    width, height = TINY_SIZE
    person = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    cloth = Image.new("RGB", TINY_SIZE, (200, 40, 40))
    mask = Image.new("L", TINY_SIZE, 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return person, cloth, mask


def seconds_per_step(
    pipeline: CatVTONPipeline,
    inputs: tuple[Image.Image, Image.Image, Image.Image],
    threads: int,
    steps: int,
    cap: float,
) -> float:
    """Median seconds between two UNet calls of one try-on on `threads` intra-op threads."""
    torch.set_num_threads(threads)
    starts: list[float] = []
    hook = pipeline.unet.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    stop = threading.Event()
    timer = threading.Timer(cap, stop.set)
    timer.start()
    try:
        pipeline(*inputs, num_inference_steps=steps, guidance_scale=GUIDANCE, seed=0, stop=stop)
    except InferenceCanceledError:
        pass  # past the cap: the steps so far are enough
    finally:
        timer.cancel()
        hook.remove()
    intervals = [later - earlier for earlier, later in itertools.pairwise(starts)]
    if not intervals:  # the first step outlasted the cap; the stop came right after it
        return time.perf_counter() - starts[0]
    return statistics.median(intervals)


@contextmanager
def running(load: str | None, weights: Path) -> Iterator[None]:
    """The load `load` in a subprocess of its own while the block runs (None: nothing)."""
    if load is None:
        yield
        return
    command = [sys.executable, __file__, "--load", load, "--weights", str(weights)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != READY:
            raise SystemExit(f"the {load} load did not start")
        time.sleep(1.0)  # let it reach its steady state
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def run_load(load: str, weights: Path) -> None:
    """Keep the CPU busy the way `load` says, until terminated."""
    if load == "spin":
        print(READY, flush=True)
        while True:
            pass
    if load == "torch":
        matrix = torch.randn(1024, 1024)
        print(READY, flush=True)
        while True:
            matrix @ matrix
    pipeline = tiny_pipeline(weights)
    inputs = demo_inputs()
    photo = twelve_megapixel_jpeg()
    for _ in range(os.cpu_count() or 1):
        threading.Thread(target=decode_forever, args=(photo,), daemon=True).start()
    print(READY, flush=True)
    while True:
        pipeline(*inputs, num_inference_steps=10, guidance_scale=GUIDANCE, seed=0)


def twelve_megapixel_jpeg() -> bytes:
    """A smooth 4000 x 3000 photo-like JPEG (noise would compress unlike a photo)."""
    image = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decode_forever(photo: bytes) -> None:
    """What the intake's thread pool does with each upload: decode, then fit (Pillow releases
    the GIL for both)."""
    while True:
        with Image.open(io.BytesIO(photo)) as image:
            image.convert("RGB").resize((768, 1024), Image.Resampling.LANCZOS)


def report(
    rows: list[tuple[str, float, float, float]], default_threads: int, args: argparse.Namespace
) -> None:
    print(
        f"\nseconds per denoising step, tiny weights, {TINY_SIZE[0]}x{TINY_SIZE[1]}, "
        f"guidance {GUIDANCE}, median of {args.rounds} try-ons (each at most {args.steps} steps "
        f"or {args.cap:g} s); load average: the 1-minute one after the case"
    )
    header = (
        f"{'case':<48} {f'{default_threads} threads':>10} {'1 thread':>10} {'ratio':>7} "
        f"{'load avg':>9}"
    )
    print(header)
    print("-" * len(header))
    for case, default_s, one_s, load in rows:
        print(
            f"{case:<48} {default_s:>10.3f} {one_s:>10.3f} {default_s / one_s:>6.1f}x {load:>9.2f}"
        )
    print("\n" + machine(default_threads).split("\n")[0].replace("machine:", "machine at the end:"))


if __name__ == "__main__":
    main()
