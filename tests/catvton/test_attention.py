"""CatVTON's attention surgery: the positional key scheme, strict loading, pass-through blocks."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from catvton import CheckpointMismatchError, WeightSources
from catvton.attention import (
    attention_key_scheme,
    cross_attention_modules,
    load_self_attention_weights,
    use_pass_through_cross_attention,
)
from catvton.configs import SD15_INPAINTING_UNET_CONFIG, model_kwargs

# The published checkpoint's layout: block k -> (UNet module, width); see catvton/attention.py.
PUBLISHED_BLOCKS = [
    ("down_blocks.0.attentions.0", 320),
    ("down_blocks.0.attentions.1", 320),
    ("down_blocks.1.attentions.0", 640),
    ("down_blocks.1.attentions.1", 640),
    ("down_blocks.2.attentions.0", 1280),
    ("down_blocks.2.attentions.1", 1280),
    ("up_blocks.1.attentions.0", 1280),
    ("up_blocks.1.attentions.1", 1280),
    ("up_blocks.1.attentions.2", 1280),
    ("up_blocks.2.attentions.0", 640),
    ("up_blocks.2.attentions.1", 640),
    ("up_blocks.2.attentions.2", 640),
    ("up_blocks.3.attentions.0", 320),
    ("up_blocks.3.attentions.1", 320),
    ("up_blocks.3.attentions.2", 320),
    ("mid_block.attentions.0", 1280),
]
PROJECTIONS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")


@pytest.fixture(scope="module")
def real_unet_on_meta() -> UNet2DConditionModel:
    """The real SD-1.5 inpainting UNet's architecture, without allocating its 860 M parameters."""
    with torch.device("meta"):
        return UNet2DConditionModel(**model_kwargs(SD15_INPAINTING_UNET_CONFIG))


def test_real_unet_scheme_matches_the_published_checkpoint(real_unet_on_meta) -> None:
    scheme = attention_key_scheme(real_unet_on_meta)
    expected = {
        f"{8 * block}.{projection}": f"{module}.transformer_blocks.0.attn1.{projection}"
        for block, (module, _) in enumerate(PUBLISHED_BLOCKS)
        for projection in PROJECTIONS
    }
    assert scheme == expected
    assert len(scheme) == 80
    assert list(scheme) == list(expected)  # block order, mid block last


def test_real_unet_scheme_widths_and_parameter_count(real_unet_on_meta) -> None:
    parameters = dict(real_unet_on_meta.named_parameters())
    scheme = attention_key_scheme(real_unet_on_meta)
    for block, (_, width) in enumerate(PUBLISHED_BLOCKS):
        assert parameters[scheme[f"{8 * block}.to_q.weight"]].shape == (width, width)
        assert parameters[scheme[f"{8 * block}.to_out.0.bias"]].shape == (width,)
    # The published attention checkpoint: 80 tensors, 49,574,080 parameters.
    assert sum(parameters[name].numel() for name in scheme.values()) == 49_574_080


def test_freeing_cross_attention_saves_the_published_amount() -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**model_kwargs(SD15_INPAINTING_UNET_CONFIG))
    freed = use_pass_through_cross_attention(unet)
    assert 43e6 < freed < 45e6  # about 44 M (the cross-attention weights the pass-through drops)
    remaining = sum(p.numel() for p in unet.parameters())
    # The paper reports 815.45 M without the cross-attention; its count differs by about 0.12 M.
    assert abs(remaining / 1e6 - 815.45) < 0.2


@pytest.fixture
def tiny_unet(tiny_weights) -> UNet2DConditionModel:
    resolved = WeightSources(weights_dir=tiny_weights).resolve()
    return UNet2DConditionModel.from_pretrained(resolved.unet_dir)


@pytest.fixture
def tiny_checkpoint(tiny_weights) -> dict[str, torch.Tensor]:
    return load_file(WeightSources(weights_dir=tiny_weights).resolve().attention_file)


def test_tiny_checkpoint_has_the_published_key_naming(tiny_checkpoint) -> None:
    assert sorted(tiny_checkpoint) == sorted(
        f"{8 * block}.{projection}" for block in range(16) for projection in PROJECTIONS
    )


def test_strict_load_copies_every_tensor(tiny_unet, tiny_checkpoint) -> None:
    load_self_attention_weights(tiny_unet, tiny_checkpoint, source="tiny")
    parameters = dict(tiny_unet.named_parameters())
    for key, target in attention_key_scheme(tiny_unet).items():
        assert torch.equal(parameters[target], tiny_checkpoint[key])


def test_missing_key_is_refused_by_name(tiny_unet, tiny_checkpoint) -> None:
    del tiny_checkpoint["64.to_v.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: 64\.to_v\.weight") as error:
        load_self_attention_weights(tiny_unet, tiny_checkpoint, source="tiny")
    assert error.value.missing == ["64.to_v.weight"]


def test_unexpected_key_is_refused_by_name(tiny_unet, tiny_checkpoint) -> None:
    tiny_checkpoint["1.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: 1\.weight"):
        load_self_attention_weights(tiny_unet, tiny_checkpoint, source="tiny")


def test_wrong_shape_is_refused_by_name_and_nothing_is_copied(tiny_unet, tiny_checkpoint) -> None:
    before = {name: p.clone() for name, p in tiny_unet.named_parameters()}
    tiny_checkpoint["0.to_q.weight"] = torch.zeros(7, 7)
    with pytest.raises(CheckpointMismatchError, match=r"0\.to_q\.weight \(file \(7, 7\)") as error:
        load_self_attention_weights(tiny_unet, tiny_checkpoint, source="tiny")
    assert len(error.value.mismatched) == 1
    assert all(torch.equal(p, before[name]) for name, p in tiny_unet.named_parameters())


def test_pass_through_block_computes_norm2_plus_residual(tiny_unet) -> None:
    """Not a no-op: with the processor each block adds norm2(h) where cross-attention was."""
    use_pass_through_cross_attention(tiny_unet)
    block = tiny_unet.down_blocks[0].attentions[0].transformer_blocks[0]
    hidden = torch.randn(1, 24, block.norm1.normalized_shape[0], generator=torch.Generator())
    with torch.no_grad():
        hidden_1 = block.attn1(block.norm1(hidden)) + hidden
        hidden_2 = block.norm2(hidden_1) + hidden_1
        expected = block.ff(block.norm3(hidden_2)) + hidden_2
        actual = block(hidden, encoder_hidden_states=None)
    torch.testing.assert_close(actual, expected)


def test_cross_attention_projections_are_freed(tiny_unet) -> None:
    use_pass_through_cross_attention(tiny_unet)
    for name, module in cross_attention_modules(tiny_unet):
        assert not any(True for _ in module.parameters()), name
    assert not any(".attn2." in name for name, _ in tiny_unet.named_parameters())
