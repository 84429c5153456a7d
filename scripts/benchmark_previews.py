"""What a try-on preview costs per denoising step, against the step itself.

Everything at the real working size 768x1024: person latents (1, 4, 128, 96), preview 192x256.

- preview: ``catvton.previews.latents_to_preview`` on the device (the linear map, the 2x upscale,
  the copy of the uint8 image to the CPU, which waits for the device), on fp32 latents as the
  pipeline hands them over; median of ``--repeats``, each started with the device idle.
- JPEG: ``preview_to_jpeg`` (CPU work; the service does it off the device thread), median of
  ``--repeats``; and the bytes per JPEG for a smooth picture (what the later steps look like) and
  for white-noise latents (an upper bound).
- step: one forward of a UNet with the REAL SD-1.5 inpainting architecture (random weights, the
  pass-through cross-attention, built from ``catvton.configs`` as ``scripts/benchmark.py`` does)
  on the stacked (B, 9, 256, 96) input, as the pipeline calls it. B = 1 by default: the cheapest
  step (guidance <= 1), so the strictest comparison; the default guidance 2.5 runs B = 2, about
  twice as long. The DDIM step itself (a few element-wise ops) is left out. On a 2-core CPU one
  forward takes one to two minutes (more when the machine is busy), so the CPU default is a single
  timed forward and no warm-up (1.5 to 2.5 minutes in all); on CUDA 10 after 2 warm-ups.

The target: the device-side preview cost within 1% of the step time, even at a preview every step.

    python scripts/benchmark_previews.py                   # CPU (1.5 to 2.5 minutes)
    python scripts/benchmark_previews.py --device cuda     # fp16 UNet, fp32 latents
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

# Runs from anywhere without installing: the repository root holds the catvton package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model

from catvton.attention import use_pass_through_cross_attention
from catvton.configs import SD15_INPAINTING_UNET_CONFIG, model_kwargs
from catvton.devices import DTYPES
from catvton.loading import prepare_device
from catvton.pipeline import DEFAULT_SIZE
from catvton.previews import DEFAULT_PREVIEW_EVERY, latents_to_preview, preview_to_jpeg
from catvton.tiny import random_model

TARGET_SHARE = 0.01  # the preview's device cost at most 1% of a step


def main() -> None:
    args = parse_arguments()
    device, dtype = prepare_device(args.device, args.dtype)
    on_cpu = device.type == "cpu"
    unet_steps = args.unet_steps or (1 if on_cpu else 10)
    unet_warmup = args.unet_warmup if args.unet_warmup is not None else (0 if on_cpu else 2)
    width, height = DEFAULT_SIZE
    latent_h, latent_w = height // 8, width // 8
    generator = torch.Generator(device=device).manual_seed(0)

    # 1. The preview and its JPEG, on a smooth picture and on white noise.
    smooth_latents = torch.nn.functional.interpolate(
        torch.randn(1, 4, 8, 6, generator=generator, device=device),
        size=(latent_h, latent_w),
        mode="bicubic",
    )  # (1, 4, 128, 96), fp32
    noise_latents = torch.randn(1, 4, latent_h, latent_w, generator=generator, device=device)
    for _ in range(3):  # first calls: kernel set-up, allocator
        latents_to_preview(smooth_latents)
    preview_s = median_seconds(lambda: latents_to_preview(smooth_latents), args.repeats, device)
    smooth_preview = latents_to_preview(smooth_latents)
    jpeg_s = median_seconds(lambda: preview_to_jpeg(smooth_preview), args.repeats, device)
    smooth_bytes = len(preview_to_jpeg(smooth_preview))
    noise_bytes = len(preview_to_jpeg(latents_to_preview(noise_latents)))

    # 2. One UNet step at the same size.
    print("building the real-size UNet (random weights) ...", file=sys.stderr, flush=True)
    unet = build_unet(generator, dtype)
    unet_input = torch.randn(
        args.batch, 9, 2 * latent_h, latent_w, generator=generator, device=device
    ).to(dtype)  # (B, 9, 256, 96): noisy latents, mask, condition, stacked person over garment
    timestep = torch.tensor(981, device=device)

    def unet_step() -> None:
        unet(unet_input, timestep, encoder_hidden_states=None, return_dict=False)

    with torch.inference_mode():
        for _ in range(unet_warmup):
            unet_step()
        print(f"timing {unet_steps} UNet step(s) ...", file=sys.stderr, flush=True)
        step_s = median_seconds(unet_step, unet_steps, device)

    # 3. Report.
    report(
        args,
        device=device,
        dtype=dtype,
        shapes=(smooth_latents.shape, smooth_preview.size),
        preview_s=preview_s,
        jpeg_s=jpeg_s,
        jpeg_bytes=(smooth_bytes, noise_bytes),
        step_s=step_s,
        unet_runs=(unet_steps, unet_warmup),
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", help="default: the best present (cuda, mps, cpu)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="UNet dtype: fp16 on CUDA, else fp32")
    parser.add_argument("--batch", type=int, choices=(1, 2), default=1, help="2 = with guidance")
    parser.add_argument("--repeats", type=int, default=50, help="preview and JPEG timings")
    parser.add_argument("--unet-steps", type=int, help="timed UNet steps (default 1 CPU, 10 else)")
    parser.add_argument("--unet-warmup", type=int, help="untimed steps (default 0 CPU, 2 else)")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def build_unet(generator: torch.Generator, dtype: torch.dtype) -> UNet2DConditionModel:
    """The SD-1.5 inpainting UNet with random weights and CatVTON's pass-through cross-attention
    (the try-on self-attention weights change values, not cost)."""
    unet = random_model(UNet2DConditionModel, model_kwargs(SD15_INPAINTING_UNET_CONFIG), generator)
    use_pass_through_cross_attention(unet)
    if unet.dtype != dtype:
        unet = unet.to(dtype)
    unet.eval().requires_grad_(False)
    if generator.device.type == "cuda":
        torch.cuda.empty_cache()  # drop the fp32 build buffers
    return unet


def median_seconds(work: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``work``, each run started and finished with the device idle."""
    times = []
    for _ in range(repeats):
        wait_for(device)
        start = time.perf_counter()
        work()
        wait_for(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wait_for(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report(
    args: argparse.Namespace,
    *,
    device: torch.device,
    dtype: torch.dtype,
    shapes: tuple[torch.Size, tuple[int, int]],
    preview_s: float,
    jpeg_s: float,
    jpeg_bytes: tuple[int, int],
    step_s: float,
    unet_runs: tuple[int, int],
) -> None:
    load_1, load_5, load_15 = os.getloadavg()
    latents_shape, (preview_w, preview_h) = shapes
    accelerator = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print("CatVTON previews benchmark")
    print(
        f"machine   {cpu_model()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; load average {load_1:.2f} {load_5:.2f} {load_15:.2f}"
    )
    print(
        f"device    {device}{accelerator}; UNet {str(dtype).removeprefix('torch.')}, latents "
        f"float32; torch {torch.__version__}"
    )
    print(
        f"size      {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}: latents {tuple(latents_shape)}, "
        f"preview {preview_w}x{preview_h}"
    )
    print(f"preview   {preview_s * 1e3:9.3f} ms  latents_to_preview, median of {args.repeats}")
    print(f"JPEG      {jpeg_s * 1e3:9.3f} ms  preview_to_jpeg (CPU), median of {args.repeats}")
    print(f"bytes     {jpeg_bytes[0]:,} (smooth picture), {jpeg_bytes[1]:,} (white noise)")
    timed, warmup = unet_runs
    print(
        f"step      {step_s * 1e3:9.1f} ms  real SD-1.5 inpainting UNet, batch {args.batch}, "
        f"median of {timed} after {warmup} warm-up"
    )
    share = preview_s / step_s
    verdict = "met" if share <= TARGET_SHARE else "MISSED"
    print(
        f"summary   preview = {share:.4%} of a step ({share / DEFAULT_PREVIEW_EVERY:.4%} per step "
        f"at one preview every {DEFAULT_PREVIEW_EVERY}); target <= {TARGET_SHARE:.0%} on the "
        f"device: {verdict}. JPEG (off the device thread) = {jpeg_s / step_s:.4%} of a step"
    )


if __name__ == "__main__":
    main()
