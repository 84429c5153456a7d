"""CatVTON's attention surgery on the SD-1.5 inpainting UNet.

Two facts define CatVTON's network:

1. Every cross-attention (``attn2``) gets a processor that returns its input unchanged. diffusers'
   ``BasicTransformerBlock`` computes ``h = attn2(norm2(h)) + h``, so each block then computes
   ``h = norm2(h) + h``. The trained weights expect exactly that, so ``attn2`` and ``norm2`` must
   stay in the graph; only the projections inside ``attn2`` are dead weight and are freed.
2. The try-on checkpoint holds only the self-attention (``attn1``) projections, under positional
   keys ``{8k}.to_q.weight`` ... for the k-th ``attn1`` in ``unet.named_modules()`` order (the
   reference saved a list of the 8 modules whose names contain ``attn1`` per block). The scheme is
   derived from the UNet here, so a tiny test UNet gets the same scheme with narrower blocks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers.models.attention_processor import Attention

from catvton.errors import CheckpointMismatchError

# The reference's list held 8 entries per self-attention: the Attention itself, to_q, to_k, to_v,
# to_out, to_out.0, to_out.1 (dropout) and the processor. Only the first entry's tensors are saved.
KEY_STRIDE = 8

# The projections inside a cross-attention that the pass-through processor never reads.
CROSS_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")


class PassThroughCrossAttnProcessor:
    """Cross-attention processor that returns ``hidden_states`` unchanged.

    Not a no-op for the block: the caller adds the result to its input, so the block computes
    ``h = norm2(h) + h``. ``encoder_hidden_states`` is ignored (the UNet is called with ``None``).
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return hidden_states


def self_attention_modules(unet: torch.nn.Module) -> list[tuple[str, Attention]]:
    """Every self-attention of ``unet`` in ``named_modules()`` order; checkpoint block k is entry k.

    diffusers registers ``up_blocks`` before ``mid_block``, so the mid block's attention comes last.
    """
    return [
        (name, module)
        for name, module in unet.named_modules()
        if name.endswith("attn1") and isinstance(module, Attention)
    ]


def cross_attention_modules(unet: torch.nn.Module) -> list[tuple[str, Attention]]:
    """Every cross-attention (``attn2``) of ``unet`` in ``named_modules()`` order."""
    return [
        (name, module)
        for name, module in unet.named_modules()
        if name.endswith("attn2") and isinstance(module, Attention)
    ]


def attention_key_scheme(unet: torch.nn.Module) -> dict[str, str]:
    """Map each checkpoint key (``"8.to_q.weight"``) to the UNet parameter it fills.

    Works on a UNet built on the meta device: only names are read, never values.
    """
    scheme: dict[str, str] = {}
    for block, (module_name, module) in enumerate(self_attention_modules(unet)):
        for param_name, _ in module.named_parameters():
            scheme[f"{block * KEY_STRIDE}.{param_name}"] = f"{module_name}.{param_name}"
    return scheme


def load_self_attention_weights(
    unet: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str
) -> None:
    """Copy the try-on checkpoint into the UNet's self-attention projections, strictly.

    Every key of the derived scheme must be present with the parameter's exact shape, and no other
    key may appear; otherwise CheckpointMismatchError names the offending keys and nothing is
    copied. Values are cast to each parameter's dtype and device.
    """
    scheme = attention_key_scheme(unet)
    parameters = dict(unet.named_parameters())
    missing = sorted(set(scheme) - set(state_dict), key=_natural_key)
    unexpected = sorted(set(state_dict) - set(scheme), key=_natural_key)
    mismatched = [
        f"{key} (file {tuple(state_dict[key].shape)}, network {tuple(parameters[target].shape)})"
        for key, target in scheme.items()
        if key in state_dict and state_dict[key].shape != parameters[target].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(
            source, missing=missing, unexpected=unexpected, mismatched=mismatched
        )
    with torch.no_grad():
        for key, target in scheme.items():
            parameters[target].copy_(state_dict[key])


def use_pass_through_cross_attention(unet: torch.nn.Module) -> int:
    """Give every cross-attention the pass-through processor and free its unused projections.

    Freeing saves about 44 M parameters on the real UNet (88 MB in fp16). The projection modules are
    deleted rather than zeroed, so any code path that still tried to use them would fail loudly.
    Returns the number of parameters freed.
    """
    freed = 0
    for _, module in cross_attention_modules(unet):
        module.set_processor(PassThroughCrossAttnProcessor())
        for name in CROSS_ATTENTION_PROJECTIONS:
            freed += sum(p.numel() for p in getattr(module, name).parameters())
            delattr(module, name)
    return freed


def _natural_key(key: str) -> tuple[int, str]:
    """Sort ``"8.to_q.weight"`` before ``"16.to_q.weight"``: error messages read in block order."""
    head, _, tail = key.partition(".")
    return (int(head), tail) if head.isdigit() else (-1, key)
