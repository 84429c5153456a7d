"""Verified files -> ready pipeline: the one place that picks device and dtype and sets torch flags.

``load_pipeline`` reads the UNet, VAE and scheduler with diffusers, performs CatVTON's attention
surgery (``catvton.attention``), loads the try-on weights strictly and moves it all to the device.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from catvton.attention import load_self_attention_weights, use_pass_through_cross_attention
from catvton.errors import CheckpointMismatchError, InvalidInputError
from catvton.pipeline import DEFAULT_SIZE, CatVTONPipeline
from catvton.weights import UNET_WEIGHTS, ResolvedWeights

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The *-16k-512 checkpoints were trained at 384 x 512.
LOW_RES_SIZE = (384, 512)
INPAINTING_IN_CHANNELS = 9


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, or the best present: CUDA, then Apple MPS, then the CPU."""
    if device is not None:
        try:
            return torch.device(device)
        except RuntimeError as error:
            raise InvalidInputError(f"device {device!r} is not a torch device: {error}") from error
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The given dtype (``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype), else fp16 on CUDA and
    fp32 elsewhere (half precision on the CPU is slow and poorly supported)."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise InvalidInputError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")


def default_size(attention_version: str) -> tuple[int, int]:
    """The working size an attention version was trained at."""
    return LOW_RES_SIZE if attention_version.endswith("-512") else DEFAULT_SIZE


def load_pipeline(
    resolved: ResolvedWeights,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    size: tuple[int, int] | None = None,
    *,
    compile_unet: bool = False,
) -> CatVTONPipeline:
    """Build the CatVTON pipeline from resolved weight files.

    ``size`` (W, H) defaults to the attention version's training size. ``compile_unet`` wraps the
    UNet in ``torch.compile`` (off by default: the first calls then take minutes, and each new
    working size recompiles). Raises CheckpointMismatchError when a file does not fit its network.
    """
    # 1. Device, dtype and the torch flags: set here and nowhere else.
    device = choose_device(device)
    dtype = choose_dtype(dtype, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # 2. UNet with CatVTON's attention: pass-through cross-attention, try-on self-attention weights.
    unet = _load_unet(resolved, dtype)
    use_pass_through_cross_attention(unet)
    load_self_attention_weights(
        unet, _read_safetensors(resolved.attention_file), source=str(resolved.attention_file)
    )

    # 3. VAE and scheduler (DDIM reads the base repo's PNDM config fields).
    vae = AutoencoderKL.from_pretrained(resolved.vae_dir, torch_dtype=dtype, use_safetensors=True)
    scheduler = DDIMScheduler.from_pretrained(resolved.scheduler_dir)

    # 4. To the device, inference only.
    for model in (unet, vae):
        model.to(device).eval().requires_grad_(False)
    if compile_unet:
        unet = torch.compile(unet)
    return CatVTONPipeline(
        unet,
        vae,
        scheduler,
        size=size or default_size(resolved.attention_version),
        device=device,
        dtype=dtype,
    )


def _load_unet(resolved: ResolvedWeights, dtype: torch.dtype) -> UNet2DConditionModel:
    # Prefer the full-precision file; a folder holding only the fp16 variant loads that.
    variant = None if (resolved.unet_dir / Path(UNET_WEIGHTS[0]).name).is_file() else "fp16"
    unet = UNet2DConditionModel.from_pretrained(
        resolved.unet_dir, torch_dtype=dtype, variant=variant, use_safetensors=True
    )
    if unet.config.in_channels != INPAINTING_IN_CHANNELS:
        raise CheckpointMismatchError(
            resolved.unet_dir,
            mismatched=[
                f"conv_in: {unet.config.in_channels} input channels, an inpainting UNet has "
                f"{INPAINTING_IN_CHANNELS}"
            ],
        )
    return unet


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a corrupt one is a CheckpointMismatchError naming the file."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointMismatchError(path, mismatched=[f"unreadable file: {error}"]) from error
