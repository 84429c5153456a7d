"""Small random masker checkpoints in the published formats, names and folder layout.

The same loader reads these and the real files: the networks' widths come from tensor shapes. They
are a few hundred kB. A masker call on them still takes about a second on a 2-core CPU, whatever
the image size: the detector works at a short edge of 800 px and the parsers at 473 and 512 px.

Their label maps are noise (the parsers call most pixels a hat, sunglasses or a scarf, which the
rules keep), so the mask they give is a few specks that the pipeline's smoothing erases: a demo's
"Show mask" showed nothing. `with_figure_masks` makes such a masker draw its masks from a standing
figure through the same rules, so a demo shows where the garment would go for each cloth type.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from catvton.masking.automasker import (
    DENSEPOSE_FILE,
    SCHP_ATR_FILE,
    SCHP_LIP_FILE,
    AutoMasker,
    MaskResult,
)
from catvton.masking.densepose import DensePoseConfig, DensePoseRCNN
from catvton.masking.rules import ATR_LABELS, DENSEPOSE_PARTS, LIP_LABELS, build_mask
from catvton.masking.schp import AugmentCE2P, SCHPConfig

TINY_SCHP: dict[str, Any] = {
    "stem_channels": (8, 8, 16),
    "layer_planes": (4, 8, 8, 16),
    "layer_blocks": (1, 1, 2, 1),
    "context_channels": 16,
    "edge_channels": 8,
    "decoder_channels": 8,
    "decoder_skip_channels": 4,
    "fusion_channels": 8,
}
TINY_DENSEPOSE = DensePoseConfig(
    stem_channels=4,
    stage_blocks=(1, 1, 2, 1),
    stage_bottleneck_channels=(4, 4, 8, 8),
    stage_out_channels=(8, 16, 32, 64),
    fpn_channels=8,
    box_head_channels=16,
    decoder_channels=8,
    decoder_out_channels=8,
    head_channels=8,
    head_convs=2,
)
# Box classifier bias (person, background) with zero weights: every proposal scores ~1 as a person,
# and zero box deltas keep the proposals on their anchors.
PERSON_LOGITS = (8.0, -8.0)
ZEROED_FOR_PERSON = (
    "proposal_generator.rpn_head.anchor_deltas.weight",
    "proposal_generator.rpn_head.anchor_deltas.bias",
    "roi_heads.box_predictor.bbox_pred.weight",
    "roi_heads.box_predictor.bbox_pred.bias",
    "roi_heads.box_predictor.cls_score.weight",
)


def random_state_dict(network: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """He-scaled random weights and plausible batch-norm statistics, from `generator` only."""
    shapes = {name: tensor.shape for name, tensor in network.state_dict().items()}
    state_dict = {}
    for name, shape in shapes.items():
        is_norm_scale = (
            name.endswith(".weight") and name[: -len("weight")] + "running_var" in shapes
        )
        if name.endswith("running_var"):
            value = torch.rand(shape, generator=generator) + 0.5
        elif len(shape) > 1:
            value = torch.randn(shape, generator=generator) * (2.0 / shape[1:].numel()) ** 0.5
        elif is_norm_scale:
            value = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            value = 0.1 * torch.randn(shape, generator=generator)
        state_dict[name] = value
    return state_dict


def save_schp_checkpoint(
    path: Path, state_dict: dict[str, torch.Tensor], *, legacy_format: bool = False
) -> None:
    """Save SCHP weights as published: under `state_dict`, with DataParallel's `module.` prefix.

    `legacy_format` writes torch's pre-1.6 (non-zip) serialization, as files from 2019 may use.
    """
    checkpoint = {"state_dict": {f"module.{name}": value for name, value in state_dict.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)


def save_detectron2_pkl(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Save detector weights as published: a plain pickle of numpy arrays under `model`."""
    checkpoint = {
        "model": {name: value.numpy() for name, value in state_dict.items()},
        "__author__": "catvton random weights",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(checkpoint, handle)


def _tiny_schp(num_classes: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        network = AugmentCE2P(SCHPConfig(num_classes=num_classes, **TINY_SCHP))
    return random_state_dict(network, generator)


def make_detector_see_a_person(weights: dict[str, torch.Tensor]) -> None:
    """Edit random detector weights in place so that every anchor becomes a certain person.

    Random weights would rarely pass the 0.8 score threshold, and their box deltas throw boxes off
    the image; with this edit the box, RoIAlign, DensePose head and paste code always run.
    """
    for name in ZEROED_FOR_PERSON:
        weights[name].zero_()
    weights["roi_heads.box_predictor.cls_score.bias"] = torch.tensor(PERSON_LOGITS)


def _tiny_densepose(generator: torch.Generator) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        network = DensePoseRCNN(TINY_DENSEPOSE)
    weights = random_state_dict(network, generator)
    make_detector_see_a_person(weights)
    return weights


def write_tiny_masker_weights(catvton_dir: Path, *, seed: int = 0) -> None:
    """Write tiny random `SCHP/` and `DensePose/` checkpoints under `catvton_dir`."""
    catvton_dir = Path(catvton_dir)
    generator = torch.Generator().manual_seed(seed)
    save_schp_checkpoint(catvton_dir / SCHP_ATR_FILE, _tiny_schp(len(ATR_LABELS), generator))
    save_schp_checkpoint(catvton_dir / SCHP_LIP_FILE, _tiny_schp(len(LIP_LABELS), generator))
    save_detectron2_pkl(catvton_dir / DENSEPOSE_FILE, _tiny_densepose(generator))


# A person standing in the middle of the frame, as a try-on photo shows one: (region, left, top,
# right, bottom) as fractions of the width and height, drawn in this order (later parts on top).
STANDING_FIGURE = (
    ("torso", 0.34, 0.20, 0.66, 0.56),
    ("upper arms", 0.24, 0.21, 0.34, 0.42),
    ("upper arms", 0.66, 0.21, 0.76, 0.42),
    ("forearms", 0.22, 0.42, 0.32, 0.58),
    ("forearms", 0.68, 0.42, 0.78, 0.58),
    ("hands", 0.22, 0.58, 0.32, 0.64),
    ("hands", 0.68, 0.58, 0.78, 0.64),
    ("thighs", 0.36, 0.56, 0.49, 0.76),
    ("thighs", 0.51, 0.56, 0.64, 0.76),
    ("lower legs", 0.37, 0.76, 0.48, 0.93),
    ("lower legs", 0.52, 0.76, 0.63, 0.93),
    ("feet", 0.36, 0.93, 0.48, 0.98),
    ("feet", 0.52, 0.93, 0.64, 0.98),
    ("face", 0.43, 0.04, 0.57, 0.18),
)


def standing_figure(size: tuple[int, int]) -> np.ndarray:
    """DensePose part labels (H, W) uint8 of `STANDING_FIGURE` in a (W, H) frame; 0 around it."""
    width, height = size
    labels = np.zeros((height, width), dtype=np.uint8)
    for region, left, top, right, bottom in STANDING_FIGURE:
        rows = slice(round(top * height), round(bottom * height))
        columns = slice(round(left * width), round(right * width))
        labels[rows, columns] = DENSEPOSE_PARTS[region][0]
    return labels


class FigureMasker(AutoMasker):
    """An AutoMasker for tiny random weights: the networks run as usual (so a demo's timings and
    code path stay the real ones), then the mask is built from a drawn standing figure.

    Random weights' label maps are noise, and the mask the rules make of them is a few specks
    (erased by the pipeline's smoothing at the demo's 96 x 128) or blobs in a corner: either way
    nothing a person could read. The figure goes through the same rules (`build_mask`) as the
    DensePose map, with both parsers answering background, so each cloth type gets its own region
    (upper: torso and arms; lower: legs; overall: both). Never for real weights.
    """

    def __call__(self, person_image: Image.Image, cloth_type: str) -> MaskResult:
        networks_result = super().__call__(person_image, cloth_type)  # checks the arguments too
        densepose = standing_figure(networks_result.mask.size)
        background = np.zeros_like(densepose)  # label 0 in both ATR and LIP
        mask = build_mask(densepose, background, background, cloth_type)
        figure_mask = Image.fromarray(mask, mode="L")
        return MaskResult(mask=figure_mask, densepose=densepose, atr=background, lip=background)


def with_figure_masks(masker: AutoMasker) -> FigureMasker:
    """The same networks, masks from `FigureMasker`'s figure."""
    return FigureMasker(masker.densepose, masker.schp_atr, masker.schp_lip)
