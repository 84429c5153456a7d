"""Tiny random checkpoints in the published layout, for tests, the CLI and the server's demo mode.

``write_tiny_weights(DIR)`` writes the same folder tree, file names, formats, config fields and key
names as ``python -m catvton download DIR``, with narrow networks and deterministic random values,
so every test goes through the real loader. Values come from one seeded ``torch.Generator``;
networks are built on the meta device first, so nothing draws from torch's global RNG.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from catvton import weights
from catvton.attention import attention_key_scheme
from catvton.configs import (
    SD15_SCHEDULER_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    model_kwargs,
)
from catvton.masking import write_tiny_masker_weights

# A working size for the tiny networks: 3:4 like the real one, small enough for a 2-step run in well
# under a second on a 2-core CPU. Multiples of 32 keep every UNet level an integer size.
TINY_SIZE = (96, 128)
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def write_tiny_weights(weights_dir: Path, *, seed: int = 0) -> Path:
    """Write a complete tiny weights folder (all attention versions, the masker files); return it.

    Deterministic: the same ``seed`` writes byte-identical tensors. Takes a few seconds on a CPU.
    """
    weights_dir = Path(weights_dir)
    generator = torch.Generator().manual_seed(seed)

    # 1. UNet and scheduler, in the base repo's layout.
    base_dir = weights_dir / weights.BASE_MODEL_FOLDER
    unet = random_model(UNet2DConditionModel, model_kwargs(TINY_UNET_CONFIG), generator)
    unet.save_pretrained(base_dir / "unet")
    scheduler_dir = base_dir / "scheduler"
    scheduler_dir.mkdir(parents=True, exist_ok=True)
    (scheduler_dir / "scheduler_config.json").write_text(
        json.dumps(SD15_SCHEDULER_CONFIG, indent=2)
    )

    # 2. VAE, in the sd-vae-ft-mse repo's layout.
    vae = random_model(AutoencoderKL, model_kwargs(TINY_VAE_CONFIG), generator)
    vae.save_pretrained(weights_dir / weights.VAE_FOLDER)

    # 3. Try-on attention weights: fresh values (not the UNet's own), so a test can see them loaded.
    catvton_dir = weights_dir / weights.CATVTON_FOLDER
    parameters = dict(unet.named_parameters())
    key_scheme = attention_key_scheme(unet)
    for version in weights.ATTENTION_VERSIONS:
        tensors = {
            key: random_like(parameters[target], target, generator)
            for key, target in key_scheme.items()
        }
        path = catvton_dir / weights.attention_file_name(version)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"format": "pt"})

    # 4. AutoMasker checkpoints (SCHP, DensePose), written by the masking package in their formats.
    write_tiny_masker_weights(catvton_dir, seed=seed)
    return weights_dir


def random_model(
    model_class: type[ModuleT], kwargs: dict[str, Any], generator: torch.Generator
) -> ModuleT:
    """``model_class(**kwargs)`` in fp32 on the generator's device, filled from ``generator``.

    Built on the meta device first, so the global RNG is never touched and no time is spent on
    the default initialisation (the benchmark builds the 860 M-parameter UNet this way).
    """
    with torch.device("meta"):
        model = model_class(**kwargs)
    model = model.to_empty(device=generator.device)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            tensor.copy_(random_like(tensor, name, generator))
    return model.eval()


def random_like(tensor: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    """Values with sane activation statistics: norms near 1, small biases, fan-in scaled weights."""
    noise = torch.randn(tensor.shape, generator=generator, device=generator.device)
    if tensor.ndim == 1 and name.endswith("weight"):
        return 1.0 + 0.1 * noise
    if tensor.ndim == 1:
        return 0.02 * noise
    return noise * tensor[0].numel() ** -0.5
