"""Command line: ``python -m catvton {download, make-tiny-weights, tryon, mask} ...``.

A thin layer: parse arguments, call the library, print where time went. Library errors are printed
as one line (with the fix they carry) and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from catvton.devices import DTYPES, choose_device
from catvton.errors import CatVTONError, InvalidInputError
from catvton.loading import default_size, load_pipeline
from catvton.masking import (
    CLOTH_TYPES,
    AutoMasker,
    load_automasker,
    parse_cloth_type,
    save_debug_maps,
)
from catvton.pipeline import DenoisingStep, parse_size
from catvton.preprocess import fit_person
from catvton.previews import (
    DEFAULT_PREVIEW_EVERY,
    latents_to_preview,
    preview_to_jpeg,
    should_preview,
)
from catvton.tiny import write_tiny_weights
from catvton.weights import (
    ATTENTION_VERSIONS,
    DEFAULT_ATTENTION_VERSION,
    DEFAULT_BASE_MODEL,
    WEIGHTS_DIR_FLAG,
    WeightSources,
    download_weights,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CatVTONError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


# What --help prints: plain text, since argparse shows the module docstring's markup as it is.
DESCRIPTION = (
    "The CatVTON model library's command line: fetch the published weights, write tiny test "
    "weights, dress a person in a garment, or compute a try-on mask."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m catvton", description=DESCRIPTION)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    download = commands.add_parser("download", help="fetch the published weights from the hub")
    download.add_argument("weights_dir", type=Path, metavar="DIR")
    download.add_argument(
        "--attention-version",
        action="append",
        choices=ATTENTION_VERSIONS,
        help=f"try-on weights to fetch (repeatable; default {DEFAULT_ATTENTION_VERSION})",
    )
    download.add_argument("--no-masker", action="store_true", help="skip SCHP and DensePose")
    download.add_argument(
        "--base-model",
        default=DEFAULT_BASE_MODEL,
        help=f"SD-1.5 inpainting hub repo (default {DEFAULT_BASE_MODEL}, a 3.4 GB pickled UNet; "
        "stable-diffusion-v1-5/stable-diffusion-inpainting ships a 1.7 GB fp16 safetensors one)",
    )
    download.set_defaults(run=run_download)

    tiny = commands.add_parser("make-tiny-weights", help="write tiny random test weights")
    tiny.add_argument("weights_dir", type=Path, metavar="DIR")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=run_make_tiny_weights)

    tryon = commands.add_parser("tryon", help="dress a person in a garment")
    add_weight_arguments(tryon)
    tryon.add_argument("--person", type=Path, required=True, help="person photo")
    tryon.add_argument("--cloth", type=Path, required=True, help="garment photo")
    source = tryon.add_mutually_exclusive_group(required=True)
    source.add_argument("--mask", type=Path, help="mask image, white = region to repaint")
    source.add_argument(
        "--cloth-type", help=f"compute the mask with the AutoMasker: {', '.join(CLOTH_TYPES)}"
    )
    tryon.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    tryon.add_argument("--guidance", type=float, default=2.5, help="guidance scale (default 2.5)")
    tryon.add_argument("--seed", type=int, default=42, help="-1 picks a random seed (default 42)")
    tryon.add_argument("--device", help="cuda, mps or cpu (default: the best present)")
    tryon.add_argument("--dtype", choices=list(DTYPES), help="default fp16 on CUDA, else fp32")
    tryon.add_argument("--repaint", action="store_true", help="keep pixels outside the mask")
    tryon.add_argument("--out", type=Path, required=True, help="output image (PNG, JPEG, ...)")
    tryon.add_argument(
        "--previews",
        type=Path,
        metavar="DIR",
        help="write a JPEG preview of the forming image there (step-005.jpg, ...)",
    )
    tryon.add_argument(
        "--preview-every",
        type=preview_every_argument,
        default=DEFAULT_PREVIEW_EVERY,
        metavar="N",
        help=f"with --previews: one every N steps and one at the last (default "
        f"{DEFAULT_PREVIEW_EVERY}; 0 = none)",
    )
    tryon.set_defaults(run=run_tryon)

    mask = commands.add_parser("mask", help="compute a try-on mask with the AutoMasker")
    add_weight_arguments(mask)
    mask.add_argument("--person", type=Path, required=True, help="person photo")
    mask.add_argument("--cloth-type", required=True, help=", ".join(CLOTH_TYPES))
    mask.add_argument("--out", type=Path, required=True, help="mask image (white = repaint)")
    mask.add_argument(
        "--debug-dir",
        type=Path,
        help="also write the DensePose, ATR and LIP maps there (label PNGs and coloured PNGs)",
    )
    mask.set_defaults(run=run_mask)
    return parser


def add_weight_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        WEIGHTS_DIR_FLAG,
        "--weights",  # the CLI's first spelling, kept
        dest="weights_dir",
        type=Path,
        help="weights folder (python -m catvton download); the server's flag has the same name",
    )
    parser.add_argument("--base-model", help="SD-1.5 inpainting: hub id or folder")
    parser.add_argument("--vae", help="sd-vae-ft-mse: hub id or folder")
    parser.add_argument("--catvton", help="CatVTON: hub id or folder")
    parser.add_argument(
        "--attention-version", choices=ATTENTION_VERSIONS, default=DEFAULT_ATTENTION_VERSION
    )
    parser.add_argument(
        "--size", type=size_argument, help="working size WxH (default 768x1024; 384x512 for *-512)"
    )
    parser.add_argument("--masker-device", help="device of the AutoMasker (default: --device)")
    parser.add_argument(
        "--masker-dtype",
        choices=list(DTYPES),
        help="precision of the AutoMasker (default fp32 on every device, as the reference)",
    )


def size_argument(text: str) -> tuple[int, int]:
    """``--size WxH``, refused (exit 2) before any weights are loaded."""
    try:
        return parse_size(text)
    except InvalidInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def preview_every_argument(text: str) -> int:
    """``--preview-every N``: an integer >= 0, refused (exit 2) before any weights are loaded."""
    if not text.isdecimal():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; got {text!r}")
    return int(text)


def run_download(args: argparse.Namespace) -> None:
    versions = tuple(args.attention_version or (DEFAULT_ATTENTION_VERSION,))
    download_weights(
        args.weights_dir,
        attention_versions=versions,
        base_model=args.base_model,
        include_masker=not args.no_masker,
    )
    print(f"weights in {args.weights_dir}")


def run_make_tiny_weights(args: argparse.Namespace) -> None:
    write_tiny_weights(args.weights_dir, seed=args.seed)
    print(f"tiny weights in {args.weights_dir}")


def run_tryon(args: argparse.Namespace) -> None:
    # 1. Load.
    start = time.perf_counter()
    resolved = weight_sources(args).resolve(require_masker=args.cloth_type is not None)
    pipeline = load_pipeline(resolved, device=args.device, dtype=args.dtype, size=args.size)
    print(
        f"load        {time.perf_counter() - start:7.3f} s  ({pipeline.device}, {pipeline.dtype})"
    )

    # 2. Read the images; compute the mask on the cropped person unless one is given (a given
    #    mask is checked against the photo as read, and gets its crop in the pipeline).
    person = read_image(args.person, "--person")
    cloth = read_image(args.cloth, "--cloth")
    if args.mask is not None:
        mask = read_image(args.mask, "--mask")
    else:
        cloth_type = parse_cloth_type(args.cloth_type)
        person = fit_person(person, pipeline.size)
        start = time.perf_counter()
        masker = load_automasker(
            resolved.catvton_dir,
            device=args.masker_device or pipeline.device,
            dtype=args.masker_dtype,
        )
        mask = masker(person, cloth_type).mask
        print(f"mask        {time.perf_counter() - start:7.3f} s  {describe_masker(masker)}")

    # 3. Try on with a progress bar (stderr) and the previews asked for; say where time went.
    if args.previews is not None:
        args.previews.mkdir(parents=True, exist_ok=True)
    with tqdm(total=args.steps, desc="denoise", unit="step", file=sys.stderr) as bar:

        def on_step(progress: DenoisingStep) -> None:
            bar.update(progress.step - bar.n)
            if args.previews is not None and should_preview(
                progress.step, progress.total_steps, args.preview_every
            ):
                preview = latents_to_preview(progress.predicted_latents)
                path = args.previews / f"step-{progress.step:03d}.jpg"
                path.write_bytes(preview_to_jpeg(preview))

        result = pipeline(
            person,
            cloth,
            mask,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            repaint=args.repaint,
            on_step=on_step,
        )
    for stage, seconds in result.timings.items():
        print(f"{stage:<11} {seconds:7.3f} s")
    print(f"denoise/step {result.timings['denoise'] / args.steps:6.3f} s")
    result.image.save(args.out)
    print(f"seed {result.seed}; wrote {args.out}")
    if args.previews is not None:
        print(f"previews in {args.previews}")


def run_mask(args: argparse.Namespace) -> None:
    cloth_type = parse_cloth_type(args.cloth_type)
    resolved = weight_sources(args).resolve(require_masker=True)
    size = args.size or default_size(resolved.attention_version)
    person = fit_person(read_image(args.person, "--person"), size)
    start = time.perf_counter()
    masker = load_automasker(
        resolved.catvton_dir, device=choose_device(args.masker_device), dtype=args.masker_dtype
    )
    result = masker(person, cloth_type)
    print(f"mask        {time.perf_counter() - start:7.3f} s  {describe_masker(masker)}")
    result.mask.save(args.out)
    print(f"wrote {args.out}")
    if args.debug_dir is not None:
        for path in save_debug_maps(result, args.debug_dir):
            print(f"wrote {path}")


def describe_masker(masker: AutoMasker) -> str:
    return f"(load and run the AutoMasker; {masker.device}, {masker.dtype})"


def weight_sources(args: argparse.Namespace) -> WeightSources:
    return WeightSources(
        weights_dir=args.weights_dir,
        base_model=args.base_model,
        vae=args.vae,
        catvton=args.catvton,
        attention_version=args.attention_version,
    )


def read_image(path: Path, option: str) -> Image.Image:
    """Open an image file; a missing or unreadable one is an InvalidInputError naming the option."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, Image.DecompressionBombError) as error:
        raise InvalidInputError(f"{option}: cannot read {path}: {error}") from error
    return image
