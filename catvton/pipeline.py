"""The CatVTON try-on pipeline: components passed in, ``__call__`` in numbered stages.

The person (with the region to repaint greyed out) and the garment are encoded by the VAE and
stacked along the HEIGHT axis into one latent image; the UNet denoises that stack and only the
person half is decoded. The published weights were trained with height (not width) concatenation.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeGuard

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image

from catvton.errors import InferenceCanceledError, InvalidInputError
from catvton.preprocess import (
    check_mask_shape,
    fit_cloth,
    fit_mask,
    fit_person,
    image_to_tensor,
    mask_to_tensor,
    repaint_blend,
    smooth_mask,
    tensor_to_image,
)

DEFAULT_SIZE = (768, 1024)
# DDIM with eta = 1 draws fresh noise each step (DDPM-like), as CatVTON was published with.
DDIM_ETA = 1.0
MAX_INFERENCE_STEPS = 1000
# Seeds stay below 2**32 so that they survive JSON and JavaScript numbers unchanged.
MAX_SEED = 2**32 - 1
RANDOM_SEED = -1


@dataclass(frozen=True)
class DenoisingStep:
    """What the step callback hears after each denoising step, on the calling thread.

    ``step`` runs 1..``total_steps``. ``predicted_latents`` is the scheduler's prediction of the
    clean latents at this step (DDIM's ``pred_original_sample``), person half only: shape
    (1, 4, h, w), fp32, on the pipeline's device, scaled as the scheduler sees them (VAE latents
    x 0.18215), ready for ``catvton.previews.latents_to_preview``. It is a view of a tensor the
    scheduler has already finished with (no copy, no device sync): keep it if you like, but do
    not write to it.
    """

    step: int
    total_steps: int
    predicted_latents: torch.Tensor


StepCallback = Callable[[DenoisingStep], None]


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` as ``(W, H)`` if both are positive multiples of 8 (the VAE's down-sampling), else
    InvalidInputError."""
    width, height = size
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise InvalidInputError(f"size must be positive multiples of 8 (WxH); got {width}x{height}")
    return width, height


def parse_size(text: str) -> tuple[int, int]:
    """``"768x1024"`` -> ``(768, 1024)``; InvalidInputError unless it is a valid working size."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise InvalidInputError(f"size must look like 768x1024; got {text!r}") from error
    return check_size((width, height))


@dataclass(frozen=True)
class TryOnResult:
    """One try-on: the image (RGB, working size), the seed that reproduces it, seconds per stage,
    and the mask the model used (mode L, working size, 255 = repainted)."""

    image: Image.Image
    seed: int
    mask: Image.Image
    timings: dict[str, float] = field(default_factory=dict)


class CatVTONPipeline:
    """CatVTON inference on ready components.

    ``unet`` must already carry the try-on self-attention weights and the pass-through
    cross-attention (see ``catvton.loading.load_pipeline``, which builds all of this). All
    components must sit on ``device`` in ``dtype``; ``size`` is the working size ``(W, H)``.
    One call at a time: the scheduler keeps per-call state (the service has a single device worker).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        *,
        size: tuple[int, int] = DEFAULT_SIZE,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        width, height = check_size(size)
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.size = (width, height)
        self.device = torch.device(device)
        self.dtype = dtype
        self.latent_scale = vae.config.scaling_factor  # 0.18215 for sd-vae-ft-mse

    @torch.inference_mode()
    def __call__(
        self,
        person_image: Image.Image,
        cloth_image: Image.Image,
        mask_image: Image.Image,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.5,
        seed: int = 42,
        repaint: bool = False,
        on_step: StepCallback | None = None,
        stop: threading.Event | None = None,
    ) -> TryOnResult:
        """Dress ``person_image`` in ``cloth_image`` inside ``mask_image`` (white = repaint).

        Images may have any size and mode: they are fitted to the working size here (a no-op when
        already fitted). ``mask_image`` must have ``person_image``'s aspect ratio (it gets the
        person's crop). ``guidance_scale <= 1`` runs the conditional pass alone (half the work).
        ``seed=-1`` picks a random seed; the result reports the seed used. Equal seeds give equal
        images on the same device and dtype. ``on_step`` hears a ``DenoisingStep`` after each
        step (the image stays bit-identical with or without it); a set ``stop`` ends the call
        with InferenceCanceledError before the next step. Raises InvalidInputError naming the bad
        argument.
        """
        _check_arguments(
            person_image,
            cloth_image,
            mask_image,
            num_inference_steps,
            guidance_scale,
            seed,
            self.size,
        )
        seed = secrets.randbelow(MAX_SEED + 1) if seed == RANDOM_SEED else seed
        use_guidance = guidance_scale > 1.0
        timings: dict[str, float] = {}
        width, height = self.size
        latent_h, latent_w = height // 8, width // 8

        # 1. Preprocess: fit to the working size, smooth and binarise the mask.
        with self._timed(timings, "preprocess"):
            person = fit_person(person_image, self.size)
            cloth = fit_cloth(cloth_image, self.size)
            mask = smooth_mask(fit_mask(mask_image, self.size))
            person_tensor = image_to_tensor(person).to(self.device, self.dtype)  # (1, 3, H, W)
            cloth_tensor = image_to_tensor(cloth).to(self.device, self.dtype)  # (1, 3, H, W)
            mask_tensor = mask_to_tensor(mask).to(self.device, self.dtype)  # (1, 1, H, W)

        # 2. Encode the masked person and the garment in one VAE batch; posterior mean, so equal
        #    seeds give equal images (the reference samples the posterior with the global RNG).
        with self._timed(timings, "encode"):
            masked_person = person_tensor * (mask_tensor < 0.5)  # masked pixels -> 0 (mid grey)
            images = torch.cat([masked_person, cloth_tensor])  # (2, 3, H, W)
            image_latents = self.vae.encode(images).latent_dist.mode() * self.latent_scale
            person_latents, cloth_latents = image_latents.float().chunk(2)  # (1, 4, h, w) each

        # 3. Prepare the denoising inputs. The generator's first use is the initial noise.
        with self._timed(timings, "prepare"):
            generator = torch.Generator(device=self.device).manual_seed(seed)
            self.scheduler.set_timesteps(num_inference_steps)
            noise_latents = torch.randn(
                (1, 4, 2 * latent_h, latent_w),
                generator=generator,
                device=self.device,
                dtype=torch.float32,
            )  # (1, 4, 2h, w)
            latents = noise_latents * self.scheduler.init_noise_sigma  # (1, 4, 2h, w), fp32
            mask_latents = torch.nn.functional.interpolate(
                mask_tensor, size=(latent_h, latent_w), mode="nearest"
            )  # (1, 1, h, w)
            # The garment half of the stack is always "keep": (1, 1, 2h, w).
            mask_latents = torch.cat([mask_latents, torch.zeros_like(mask_latents)], dim=-2)
            cond_latents = torch.cat([person_latents, cloth_latents], dim=-2)  # (1, 4, 2h, w)
            if use_guidance:
                # Unconditional: the same masked person with an all-zero garment half.
                uncond_latents = torch.cat([person_latents, torch.zeros_like(cloth_latents)], -2)
                cond_latents = torch.cat([uncond_latents, cond_latents])  # (2, 4, 2h, w)
                mask_latents = mask_latents.expand(2, -1, -1, -1)  # (2, 1, 2h, w)
            # The 5 condition channels never change: write them once, refresh the first 4 per step.
            unet_input = torch.cat(
                [torch.empty_like(cond_latents), mask_latents, cond_latents], dim=1
            ).to(self.dtype)  # (B, 9, 2h, w)

        # 4. Denoise: one UNet call per step on [uncond, cond] (or cond alone), DDIM with eta 1.
        with self._timed(timings, "denoise"):
            # The UNet takes its timesteps from one device copy: a Python number would be copied
            # to the device each step, which waits for the queued work (a host sync per step).
            # The scheduler indexes its CPU tables with the same steps as Python ints.
            unet_timesteps = self.scheduler.timesteps.to(self.device)
            timesteps = self.scheduler.timesteps.tolist()
            for step, timestep in enumerate(timesteps):
                if stop is not None and stop.is_set():
                    raise InferenceCanceledError(f"stopped before step {step + 1}/{len(timesteps)}")
                unet_input[:, :4] = self.scheduler.scale_model_input(latents, timestep)
                # No text conditioning: diffusers accepts None, and the pass-through
                # cross-attention never reads it.
                noise_pred = self.unet(
                    unet_input, unet_timesteps[step], encoder_hidden_states=None, return_dict=False
                )[0].float()  # (B, 4, 2h, w)
                if use_guidance:
                    noise_uncond, noise_cond = noise_pred.chunk(2)
                    noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                scheduler_output = self.scheduler.step(
                    noise_pred, timestep, latents, eta=DDIM_ETA, generator=generator
                )
                latents = scheduler_output.prev_sample  # (1, 4, 2h, w)
                if on_step is not None:
                    # A slice of a tensor the scheduler made anyway: free for a callback that
                    # ignores it, and nothing the next step reads.
                    predicted_latents = scheduler_output.pred_original_sample[:, :, :latent_h]
                    on_step(DenoisingStep(step + 1, len(timesteps), predicted_latents))

        # 5. Decode the person half only (rows 0..h-1 of the stack).
        with self._timed(timings, "decode"):
            person_half = latents[:, :, :latent_h] / self.latent_scale  # (1, 4, h, w)
            decoded = self._decode(person_half)  # (1, 3, H, W) in [-1, 1]

        # 6. Postprocess: to 8-bit RGB; optionally paste the original back outside the mask.
        with self._timed(timings, "postprocess"):
            image = tensor_to_image(decoded / 2 + 0.5)
            if repaint:
                image = repaint_blend(person, image, mask)
        return TryOnResult(image=image, seed=seed, mask=mask, timings=timings)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decode; a non-finite half-precision result is decoded again in fp32.

        sd-vae-ft-mse can overflow in fp16 at some inputs, which would come out as a black image.
        """
        decoded = self.vae.decode(latents.to(self.dtype)).sample
        if self.dtype == torch.float32 or torch.isfinite(decoded).all():
            return decoded.float()
        self.vae.to(torch.float32)
        try:
            return self.vae.decode(latents.float()).sample
        finally:
            self.vae.to(self.dtype)

    @contextmanager
    def _timed(self, timings: dict[str, float], stage: str) -> Iterator[None]:
        """Record a stage's wall time, waiting for queued device work so the time is the stage's."""
        start = time.perf_counter()
        yield
        _synchronize(self.device)
        timings[stage] = time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _check_arguments(
    person_image: object,
    cloth_image: object,
    mask_image: object,
    num_inference_steps: object,
    guidance_scale: object,
    seed: object,
    size: tuple[int, int],
) -> None:
    """Refuse bad arguments before any work, naming the argument and what is allowed."""
    check_mask_shape(
        _check_image("person_image", person_image),
        _check_image("mask_image", mask_image),
        size,
    )
    _check_image("cloth_image", cloth_image)
    if not _is_int(num_inference_steps) or not 1 <= num_inference_steps <= MAX_INFERENCE_STEPS:
        raise InvalidInputError(
            f"num_inference_steps must be an integer from 1 to {MAX_INFERENCE_STEPS}; "
            f"got {num_inference_steps!r}"
        )
    if (
        isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, int | float)
        or not math.isfinite(guidance_scale)
        or guidance_scale < 0
    ):
        raise InvalidInputError(
            f"guidance_scale must be a finite number >= 0; got {guidance_scale!r}"
        )
    if not _is_int(seed) or not RANDOM_SEED <= seed <= MAX_SEED:
        raise InvalidInputError(
            f"seed must be an integer from 0 to {MAX_SEED}, or -1 for a random seed; got {seed!r}"
        )


def _check_image(name: str, value: object) -> Image.Image:
    """`value` if it is a non-empty PIL image, else InvalidInputError naming `name`."""
    if not isinstance(value, Image.Image):
        raise InvalidInputError(f"{name} must be a PIL image; got {type(value).__name__}")
    if value.width < 1 or value.height < 1:
        raise InvalidInputError(f"{name} is empty ({value.width}x{value.height})")
    return value


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
