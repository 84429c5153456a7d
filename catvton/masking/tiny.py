"""Small random masker checkpoints in the published formats, names and folder layout.

The same loader reads these and the real files: the networks' widths come from tensor shapes. They
are a few hundred kB. A masker call on them still takes about a second on a 2-core CPU, whatever
the image size: the detector works at a short edge of 800 px and the parsers at 473 and 512 px.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catvton.masking.automasker import DENSEPOSE_FILE, SCHP_ATR_FILE, SCHP_LIP_FILE
from catvton.masking.densepose import DensePoseConfig, DensePoseRCNN
from catvton.masking.rules import ATR_LABELS, LIP_LABELS
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
