"""Time the AutoMasker with real-size random weights (the published shapes) on the CPU or a GPU.

    .venv/bin/python scripts/benchmark_masker.py --device cpu --repeats 3
    .venv/bin/python scripts/benchmark_masker.py --device cuda --repeats 5

Writes real-size checkpoints in the published formats to a temporary folder, loads them through
`load_automasker`, and times each stage and the whole call on a synthetic 768 x 1024 person. The
detector is edited to see a person so the DensePose head runs, as it does on real photos.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

# Runs from anywhere without installing: the repository root holds the catvton package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catvton.devices import DTYPES
from catvton.masking import load_automasker
from catvton.masking.automasker import (
    ATR_INPUT_SIZE,
    DENSEPOSE_FILE,
    LIP_INPUT_SIZE,
    SCHP_ATR_FILE,
    SCHP_LIP_FILE,
)
from catvton.masking.densepose import DensePoseConfig, DensePoseRCNN
from catvton.masking.detector import detect_densepose
from catvton.masking.rules import build_mask
from catvton.masking.schp import AugmentCE2P, SCHPConfig, parse_human
from catvton.masking.tiny import (
    make_detector_see_a_person,
    random_state_dict,
    save_detectron2_pkl,
    save_schp_checkpoint,
)


def write_real_size_weights(catvton_dir: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    for path, classes in ((SCHP_ATR_FILE, 18), (SCHP_LIP_FILE, 20)):
        with torch.device("meta"):
            network = AugmentCE2P(SCHPConfig(num_classes=classes))
        save_schp_checkpoint(catvton_dir / path, random_state_dict(network, generator))
    with torch.device("meta"):
        network = DensePoseRCNN(DensePoseConfig())
    weights = random_state_dict(network, generator)
    make_detector_see_a_person(weights)
    save_detectron2_pkl(catvton_dir / DENSEPOSE_FILE, weights)


def synthetic_person(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.4, height * 0.05, width * 0.6, height * 0.2), fill=(230, 190, 160))
    draw.rectangle((width * 0.3, height * 0.2, width * 0.7, height * 0.55), fill=(40, 60, 160))
    draw.rectangle((width * 0.33, height * 0.55, width * 0.67, height * 0.95), fill=(30, 30, 30))
    return image


def timed(function: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on every device"
    )
    parser.add_argument("--size", default="768x1024", help="person image size WxH")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.lower().split("x"))
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_real_size_weights(Path(folder))
        print(f"write real-size weights: {time.perf_counter() - start:.1f} s")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        masker = load_automasker(folder, device=device, dtype=args.dtype)
        print(f"load: {time.perf_counter() - start:.1f} s")

    person = synthetic_person(width, height)
    person_bgr = np.ascontiguousarray(np.asarray(person)[:, :, ::-1])
    dtype = next(masker.densepose.parameters()).dtype
    print(
        f"device {device}, dtype {dtype}, {torch.get_num_threads()} CPU threads, {width}x{height}"
    )

    masker(person, "upper")  # warm-up: kernel selection, allocator
    densepose = detect_densepose(masker.densepose, person)
    atr = parse_human(masker.schp_atr, person_bgr, ATR_INPUT_SIZE)
    lip = parse_human(masker.schp_lip, person_bgr, LIP_INPUT_SIZE)
    print(f"person found by the biased detector: {bool(densepose.any())}")
    stages = {
        "densepose": lambda: detect_densepose(masker.densepose, person),
        "schp atr": lambda: parse_human(masker.schp_atr, person_bgr, ATR_INPUT_SIZE),
        "schp lip": lambda: parse_human(masker.schp_lip, person_bgr, LIP_INPUT_SIZE),
        "rules": lambda: build_mask(densepose, atr, lip, "upper"),
        "whole call": lambda: masker(person, "upper"),
    }
    for name, function in stages.items():
        seconds = timed(function, device, args.repeats)
        print(
            f"{name:>11}: median {statistics.median(seconds):.3f} s "
            f"(min {min(seconds):.3f}, max {max(seconds):.3f}, n={len(seconds)})"
        )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        print(f"peak GPU memory allocated (weights included): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
