"""Verified files -> ready pipeline: the one place that picks device and dtype and sets torch flags.

``load_pipeline`` reads the UNet, VAE and scheduler with diffusers, performs CatVTON's attention
surgery (``catvton.attention``), loads the try-on weights strictly and moves it all to the device.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from catvton.attention import load_self_attention_weights, use_pass_through_cross_attention
from catvton.devices import choose_device, choose_dtype
from catvton.errors import CheckpointMismatchError, InvalidInputError
from catvton.pipeline import DEFAULT_SIZE, CatVTONPipeline
from catvton.weights import ResolvedWeights

# diffusers builds each network under context managers (accelerate's `init_empty_weights`, its own
# `no_init_weights`) that swap torch.nn.Module methods and torch.nn.init functions for the whole
# process and put back what they found on exit. Two loads at once (two servers in one test run, a
# reload while an abandoned load still runs) put back each other's swaps and leave every network
# built afterwards on the meta device. So one diffusers read at a time in this process.
_ONE_READ_AT_A_TIME = threading.Lock()

# The *-16k-512 checkpoints were trained at 384 x 512.
LOW_RES_SIZE = (384, 512)
INPAINTING_IN_CHANNELS = 9


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
    num_threads: int | None = None,
) -> CatVTONPipeline:
    """Build the CatVTON pipeline from resolved weight files.

    ``size`` (W, H) defaults to the attention version's training size. ``compile_unet`` wraps the
    UNet in ``torch.compile`` (off by default: the first calls then take minutes, and each new
    working size recompiles). ``num_threads``: see ``prepare_device``. Raises
    CheckpointMismatchError when a file does not fit its network.
    """
    # 1. Device, dtype and torch flags.
    device, dtype = prepare_device(device, dtype, num_threads)

    # 2. Read every file: UNet, try-on attention weights, VAE, scheduler config (DDIM reads the
    #    base repo's PNDM config fields).
    with _ONE_READ_AT_A_TIME:
        unet = _load_unet(resolved, dtype)
        with _reading(resolved.vae_dir):
            vae = AutoencoderKL.from_pretrained(
                resolved.vae_dir, torch_dtype=dtype, use_safetensors=True
            )
    with _reading(resolved.attention_file):
        attention_state = load_file(str(resolved.attention_file))
    with _reading(resolved.scheduler_dir):
        scheduler = DDIMScheduler.from_pretrained(resolved.scheduler_dir)

    # 3. Attention surgery, device placement, pipeline.
    return assemble_pipeline(
        unet,
        vae,
        scheduler,
        attention_state,
        source=str(resolved.attention_file),
        device=device,
        dtype=dtype,
        size=size or default_size(resolved.attention_version),
        compile_unet=compile_unet,
    )


def prepare_device(
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    num_threads: int | None = None,
) -> tuple[torch.device, torch.dtype]:
    """Choose the device and dtype, and set torch's global flags for them: the only place that does.

    On CUDA, TF32 matmuls and convolutions are allowed (fp32 work runs on tensor cores, as the
    reference does). ``num_threads`` sets torch's intra-op threads (None: torch's default, one a
    core); call this on the thread that will run the models, since OpenMP keeps the count per
    thread and a thread that already ran a parallel operation keeps its own. Nothing else is
    changed.
    """
    device = choose_device(device)
    dtype = choose_dtype(dtype, device)
    if num_threads is not None:
        if num_threads < 1:
            raise InvalidInputError(f"num_threads must be 1 or more; got {num_threads}")
        torch.set_num_threads(num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, dtype


def assemble_pipeline(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: DDIMScheduler,
    attention_state: Mapping[str, torch.Tensor],
    *,
    source: str,
    device: torch.device,
    dtype: torch.dtype,
    size: tuple[int, int],
    compile_unet: bool = False,
) -> CatVTONPipeline:
    """CatVTON from an SD-1.5 inpainting UNet, a VAE, a scheduler and the try-on weights.

    Gives the UNet the pass-through cross-attention (freeing its projections) and loads
    ``attention_state`` strictly (CheckpointMismatchError names ``source`` and the keys). Used by
    ``load_pipeline`` and by the benchmark's random real-size networks.
    """
    use_pass_through_cross_attention(unet)
    load_self_attention_weights(unet, attention_state, source=source)
    # The pipeline encodes person and garment in one call; slicing runs them one after the other
    # inside it, halving the encoder's peak activation memory (each full-resolution activation is
    # 0.2 GB per image in fp16 at 768 x 1024) for a small share of the run (VAE work is ~2% of it).
    vae.enable_slicing()
    for model in (unet, vae):
        if model.dtype != dtype:
            model.to(dtype=dtype)
        model.to(device).eval().requires_grad_(False)
    if compile_unet:
        unet = torch.compile(unet)
    return CatVTONPipeline(unet, vae, scheduler, size=size, device=device, dtype=dtype)


def _load_unet(resolved: ResolvedWeights, dtype: torch.dtype) -> UNet2DConditionModel:
    name = resolved.unet_weights.name
    with _reading(resolved.unet_dir):
        unet = UNet2DConditionModel.from_pretrained(
            resolved.unet_dir,
            torch_dtype=dtype,
            variant="fp16" if ".fp16." in name else None,
            use_safetensors=name.endswith(".safetensors"),
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


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A file that cannot be read or does not fit (corrupt, truncated, not JSON, wrong shapes) is a
    CheckpointMismatchError naming ``path``; the reader's own message names the exact file."""
    try:
        yield
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointMismatchError(path, unreadable=str(error)) from error
