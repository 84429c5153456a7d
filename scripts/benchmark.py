"""Time the CatVTON pipeline per stage and report peak memory.

Two modes:

- default: the tiny generated weights (``catvton.tiny``) through the real loader; a CPU smoke
  benchmark of the pipeline's own overhead.
- ``--random-real-size``: the real SD-1.5 inpainting UNet and sd-vae-ft-mse architectures (built
  from the published configs in ``catvton.configs``) with random weights, at 768x1024, 50 steps,
  guidance 2.5, fp16 on CUDA. Same FLOPs and memory as the published weights, no download.

The pipeline runs ``--warmup`` times, then ``--runs`` times; each stage's median is printed, the
denoising stage also per step. Peak memory is ``torch.cuda.max_memory_allocated`` over the timed
runs on CUDA, and the process's peak RSS (model building included) on the CPU.

    python scripts/benchmark.py                                   # tiny, CPU
    python scripts/benchmark.py --random-real-size                # real size, CUDA fp16
    python scripts/benchmark.py --random-real-size --device cpu --size 192x256 --steps 2 --runs 1
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image

# Runs from anywhere without installing: the repository root holds the catvton package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catvton import CatVTONPipeline, WeightSources, load_pipeline
from catvton.attention import attention_key_scheme
from catvton.cli import size_argument
from catvton.configs import (
    SD15_INPAINTING_UNET_CONFIG,
    SD15_SCHEDULER_CONFIG,
    SD_VAE_FT_MSE_CONFIG,
    model_kwargs,
)
from catvton.devices import DTYPES
from catvton.loading import assemble_pipeline, prepare_device
from catvton.tiny import TINY_SIZE, random_like, random_model, write_tiny_weights

STAGES = ("preprocess", "encode", "prepare", "denoise", "decode", "postprocess")


def main() -> None:
    args = parse_arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = build_random_real_size(args) if args.random_real_size else build_tiny(args)
    if args.channels_last:
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    person, cloth, mask = make_inputs()
    decoder_calls = count_calls(pipeline.vae.decoder)

    # 1. Warm up (allocator, kernels, torch.compile), then time.
    for _ in range(args.warmup):
        run(pipeline, args, person, cloth, mask)
    if pipeline.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipeline.device)
    decoder_calls.clear()
    timings = [run(pipeline, args, person, cloth, mask) for _ in range(args.runs)]

    # 2. Report.
    report(pipeline, args, timings, fp32_decodes=len(decoder_calls) - args.runs)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random-real-size", action="store_true", help="real architectures")
    parser.add_argument(
        "--size", type=size_argument, help="WxH (default 96x128 tiny, 768x1024 real)"
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", help="default: the best present (cuda, mps, cpu)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default fp16 on CUDA, else fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--channels-last", action="store_true", help="channels_last UNet and VAE")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (1 on a busy machine)")
    return parser.parse_args()


def build_tiny(args: argparse.Namespace) -> CatVTONPipeline:
    weights_dir = write_tiny_weights(Path(tempfile.mkdtemp(prefix="catvton-tiny-")))
    return load_pipeline(
        WeightSources(weights_dir=weights_dir).resolve(),
        device=args.device,
        dtype=args.dtype,
        size=args.size or TINY_SIZE,
        compile_unet=args.compile,
    )


def build_random_real_size(args: argparse.Namespace) -> CatVTONPipeline:
    """The published architectures with random weights, assembled like the loaded pipeline."""
    device, dtype = prepare_device(args.device, args.dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    unet = random_model(UNet2DConditionModel, model_kwargs(SD15_INPAINTING_UNET_CONFIG), generator)
    vae = random_model(AutoencoderKL, model_kwargs(SD_VAE_FT_MSE_CONFIG), generator)
    parameters = dict(unet.named_parameters())
    attention_state = {
        key: random_like(parameters[target], target, generator)
        for key, target in attention_key_scheme(unet).items()
    }
    pipeline = assemble_pipeline(
        unet,
        vae,
        DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        attention_state,
        source="random real-size weights",
        device=device,
        dtype=dtype,
        size=args.size or (768, 1024),
        compile_unet=args.compile,
    )
    del attention_state, parameters
    if device.type == "cuda":
        torch.cuda.empty_cache()  # drop the fp32 build buffers before measuring
    return pipeline


def make_inputs() -> tuple[Image.Image, Image.Image, Image.Image]:
    """A 1200x1600 'photo', a 900x900 garment and a torso mask, so preprocessing does real work."""
    rng = np.random.default_rng(0)
    person = Image.fromarray(rng.integers(0, 256, (1600, 1200, 3), dtype=np.uint8))
    cloth = Image.fromarray(rng.integers(0, 256, (900, 900, 3), dtype=np.uint8))
    mask = Image.new("L", person.size, 0)
    mask.paste(255, (300, 400, 900, 1100))
    return person, cloth, mask


def run(pipeline, args, person, cloth, mask) -> dict[str, float]:
    result = pipeline(
        person, cloth, mask, num_inference_steps=args.steps, guidance_scale=args.guidance, seed=0
    )
    return result.timings


def count_calls(module: torch.nn.Module) -> list[None]:
    """Record each forward of ``module`` (to see whether the fp32 decode fallback ran)."""
    calls: list[None] = []
    module.register_forward_pre_hook(lambda *_: calls.append(None))
    return calls


def report(pipeline, args, timings: list[dict[str, float]], fp32_decodes: int) -> None:
    device = pipeline.device
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated (CUDA)"
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process)"
    width, height = pipeline.size
    mode = "random real-size SD-1.5 inpainting + sd-vae-ft-mse" if args.random_real_size else "tiny"
    print(f"CatVTON benchmark: {mode} weights")
    print(f"device {device} ({machine}); dtype {str(pipeline.dtype).removeprefix('torch.')}")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {sys.version[:6]}")
    print(
        f"{width}x{height}, {args.steps} steps, guidance {args.guidance}, "
        f"{args.runs} runs after {args.warmup} warm-up; compile {args.compile}, "
        f"channels_last {args.channels_last}"
    )
    print(f"{'stage':<16}{'median s':>10}")
    for stage in STAGES:
        print(f"{stage:<16}{statistics.median(t[stage] for t in timings):>10.4f}")
    per_step = statistics.median(t["denoise"] / args.steps for t in timings)
    print(f"{'denoise/step':<16}{per_step:>10.4f}")
    print(f"{'total':<16}{statistics.median(sum(t.values()) for t in timings):>10.4f}")
    print(f"peak memory     {peak}")
    if fp32_decodes:
        print(
            f"note: {fp32_decodes} decode(s) were non-finite in half precision and redone in fp32"
        )


if __name__ == "__main__":
    main()
