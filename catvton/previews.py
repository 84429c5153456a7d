"""Previews: a rough picture of the try-on while it denoises, without the VAE.

At each step the DDIM scheduler predicts the clean latents; a fixed linear map from the 4 SD-1.5
latent channels to RGB turns that prediction into a picture at latent resolution (the VAE decoder
would cost about as much as several UNet steps; this costs a few microseconds per pixel). The
picture is only an approximation of the final colours: good enough to watch the garment form.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

from catvton.errors import InvalidInputError

# The widely published SD-1.5 "latent_rgb_factors" (ComfyUI's comfy/latent_formats.py, class SD15;
# a least-squares fit of decoded RGB on the 4 latent channels), rows = latent channels 0..3,
# columns = R, G, B. They apply to the latents as the sampler sees them, i.e. the VAE's latents
# already multiplied by the scaling factor 0.18215 (ComfyUI samples after `process_latent_in`,
# which multiplies by it, and previews that), and give RGB in about [-1, 1]. The published SD-1.5
# set has no bias of its own; the offset below is the map from [-1, 1] to [0, 255].
LATENT_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
# [-1, 1] -> [0, 255]: pixel = RGB_SCALE * rgb + RGB_BIAS, per channel.
RGB_SCALE = 127.5
RGB_BIAS = (127.5, 127.5, 127.5)
PREVIEW_UPSCALE = 2  # latent resolution x 2: 192 x 256 for a 768 x 1024 working size
PREVIEW_JPEG_QUALITY = 80
DEFAULT_PREVIEW_EVERY = 5


def latents_to_preview(latents: torch.Tensor) -> Image.Image:
    """An RGB picture of SD-1.5 latents by the fixed linear map ``LATENT_RGB_FACTORS``.

    ``latents``: shape (1, 4, h, w), scaled as the scheduler sees them (VAE latents x 0.18215),
    any float dtype (fp16, bf16, fp32), any device. The map runs on that device in fp32; only the
    finished uint8 image (3 bytes a pixel) is copied to the CPU, which waits for the device's
    queued work. Returns a ``2w x 2h`` RGB image: each channel is
    ``round(clamp(127.5 * sum_c latents[c] * LATENT_RGB_FACTORS[c] + 127.5, 0, 255))``, upscaled
    bilinearly (smoother than repeating pixels, and exact on flat areas). Raises
    InvalidInputError naming ``latents`` for any other shape.
    """
    if latents.ndim != 4 or latents.shape[0] != 1 or latents.shape[1] != len(LATENT_RGB_FACTORS):
        raise InvalidInputError(
            f"latents must have shape (1, {len(LATENT_RGB_FACTORS)}, h, w); "
            f"got {tuple(latents.shape)}"
        )
    device = latents.device
    weights = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32, device=device)  # (4, 3)
    weights = weights * RGB_SCALE
    bias = torch.tensor(RGB_BIAS, dtype=torch.float32, device=device)  # (3,)
    # Mapping first, then upscaling: both are linear, and 3 channels are cheaper to upscale than 4.
    pixels = torch.einsum("chw,ck->khw", latents[0].float(), weights) + bias[:, None, None]
    pixels = torch.nn.functional.interpolate(
        pixels[None], scale_factor=PREVIEW_UPSCALE, mode="bilinear", align_corners=False
    )[0]  # (3, 2h, 2w)
    rgb = pixels.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()  # (2h, 2w, 3)
    return Image.fromarray(rgb.cpu().numpy())


def preview_to_jpeg(preview: Image.Image) -> bytes:
    """The preview as JPEG bytes at quality ``PREVIEW_JPEG_QUALITY`` (CPU work, ~1 ms at 192x256:
    the service does it off the device thread)."""
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
    return buffer.getvalue()


def should_preview(step: int, total_steps: int, every: int) -> bool:
    """Whether denoising step ``step`` (1..``total_steps``) gets a preview.

    A preview every ``every`` steps (``step % every == 0``) and always one at the last step, so the
    last preview is the final prediction; ``every=0`` means never; ``every > total_steps`` means
    the last step only. Raises InvalidInputError for a negative ``every`` or a ``step`` outside
    1..``total_steps``.
    """
    if every < 0:
        raise InvalidInputError(f"every must be >= 0 (0 = no previews); got {every}")
    if not 1 <= step <= total_steps:
        raise InvalidInputError(f"step must be from 1 to total_steps={total_steps}; got {step}")
    return every > 0 and (step % every == 0 or step == total_steps)
