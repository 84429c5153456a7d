"""SCHP's InPlaceABN layers in eval mode, as SCHP's own kernels compute them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catvton.masking.automasker import ATR_INPUT_SIZE, SCHP_ATR_FILE, load_schp
from catvton.masking.checkpoints import read_schp_pth
from catvton.masking.schp import FrozenABN, FrozenLeakyABN, parse_human
from catvton.masking.tiny import save_schp_checkpoint


def test_inplace_abn_scales_by_the_absolute_weight_plus_eps() -> None:
    """InPlaceABN computes (x - mean) / sqrt(var + eps) * (|weight| + eps) + bias."""
    norm = FrozenABN(3)
    norm.weight.copy_(torch.tensor([-2.0, 0.0, 3.0]))
    norm.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    norm.running_mean.copy_(torch.tensor([1.0, 2.0, -1.0]))
    norm.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))

    def expected(x: torch.Tensor) -> torch.Tensor:
        view = (1, 3, 1, 1)
        normalised = (x - norm.running_mean.view(view)) / (
            norm.running_var.view(view) + 1e-5
        ).sqrt()
        return normalised * (norm.weight.abs().view(view) + 1e-5) + norm.bias.view(view)

    torch.testing.assert_close(norm(x), expected(x))
    leaky = FrozenLeakyABN(3)
    leaky.load_state_dict(norm.state_dict())
    torch.testing.assert_close(leaky(x), torch.nn.functional.leaky_relu(expected(x), 0.01))


def test_parsing_ignores_the_sign_of_stored_norm_weights(
    masker_dir: Path, tmp_path: Path, person_image: Image.Image
) -> None:
    """A checkpoint with every InPlaceABN weight negated parses the same image identically."""
    weights = read_schp_pth(masker_dir / SCHP_ATR_FILE)
    norm_weights = [
        name
        for name in weights
        if name.endswith(".weight") and name.removesuffix("weight") + "running_var" in weights
    ]
    assert len(norm_weights) > 10
    for name in norm_weights:
        weights[name] = -weights[name]
    save_schp_checkpoint(tmp_path / "negated.pth", weights)
    image_bgr = np.ascontiguousarray(np.asarray(person_image)[:, :, ::-1])

    original = parse_human(load_schp(masker_dir / SCHP_ATR_FILE), image_bgr, ATR_INPUT_SIZE)
    negated = parse_human(load_schp(tmp_path / "negated.pth"), image_bgr, ATR_INPUT_SIZE)

    assert np.array_equal(original, negated)
