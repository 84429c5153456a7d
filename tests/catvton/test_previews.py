"""Previews: the preview rule, the latent-to-RGB map, and the pipeline's step callback on tiny
generated weights through the real loader."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from catvton import CatVTONPipeline, DenoisingStep, InvalidInputError
from catvton.previews import (
    LATENT_RGB_FACTORS,
    latents_to_preview,
    preview_to_jpeg,
    should_preview,
)
from catvton.tiny import TINY_SIZE

LATENT_W, LATENT_H = TINY_SIZE[0] // 8, TINY_SIZE[1] // 8


# --- the rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total_steps", "every", "steps"),
    [
        (12, 5, [5, 10, 12]),  # every 5th, and the last
        (10, 5, [5, 10]),  # the last is a 5th: once
        (4, 1, [1, 2, 3, 4]),
        (3, 5, [3]),  # every > total: the last step only
        (5, 5, [5]),
        (50, 0, []),  # 0: never
    ],
)
def test_should_preview_follows_the_rule(total_steps, every, steps) -> None:
    chosen = [s for s in range(1, total_steps + 1) if should_preview(s, total_steps, every)]
    assert chosen == steps


@pytest.mark.parametrize(("step", "total_steps", "every"), [(1, 5, -1), (0, 5, 5), (6, 5, 5)])
def test_should_preview_refuses_bad_arguments(step, total_steps, every) -> None:
    with pytest.raises(InvalidInputError):
        should_preview(step, total_steps, every)


# --- the map ------------------------------------------------------------------------------------


def constant_latents(values: tuple[float, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).view(1, 4, 1, 1).expand(1, 4, 8, 6)  # (1, 4, 8, 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("values", "rgb"),
    [
        # 127.5 * (1 + 0.3512) = 172.28; 127.5 * (1 + 0.2297) = 156.79; 127.5 * 1.3227 = 168.64
        ((1.0, 0.0, 0.0, 0.0), (172, 157, 169)),
        # R: 0.5*0.3512 - 0.25*0.3250 - 0.2829 - 0.75*0.2120 = -0.34705 -> 83.25
        # G: 0.5*0.2297 - 0.25*0.4974 + 0.1762 - 0.75*0.2616 = -0.0295 -> 123.74
        # B: 0.5*0.3227 - 0.25*0.2350 + 0.2721 - 0.75*0.7177 = -0.163275 -> 106.68
        ((0.5, -0.25, 1.0, 0.75), (83, 124, 107)),
        # R: 5*(0.3512 - 0.2120) = 0.696 -> 216.24; G: 5*(0.2297 - 0.2616) = -0.1595 -> 107.16;
        # B: 5*(0.3227 - 0.7177) = -1.975 -> -124.3, clamped to 0
        ((5.0, 0.0, 0.0, 5.0), (216, 107, 0)),
        ((10.0, 10.0, 0.0, 0.0), (255, 255, 255)),  # far above 1: clamped
        ((0.0, 0.0, 0.0, 0.0), (128, 128, 128)),  # 127.5 rounds half to even
    ],
)
def test_constant_latents_give_the_linear_maps_colour(values, rgb, dtype) -> None:
    preview = np.asarray(latents_to_preview(constant_latents(values, dtype)))
    assert preview.shape == (16, 12, 3)
    assert (preview == np.array(rgb, dtype=np.uint8)).all()


def test_the_factors_are_the_published_sd15_ones() -> None:
    """Rows are latent channels, columns R, G, B (a transposed copy would still run)."""
    assert LATENT_RGB_FACTORS[0] == (0.3512, 0.2297, 0.3227)
    assert LATENT_RGB_FACTORS[3] == (-0.2120, -0.2616, -0.7177)


def test_preview_is_rgb_at_twice_the_latent_size_and_keeps_its_orientation() -> None:
    latents = torch.zeros(1, 4, 128, 96)  # a 768 x 1024 working size
    latents[:, 0, :, :48] = 5.0  # the left half red-ish
    preview = latents_to_preview(latents)
    assert preview.mode == "RGB" and preview.size == (192, 256)
    pixels = np.asarray(preview).astype(int)
    assert pixels[:, :90, 0].min() == 255 and pixels[:, 102:, 0].max() == 128


@pytest.mark.parametrize("shape", [(4, 16, 12), (2, 4, 16, 12), (1, 3, 16, 12)])
def test_other_shapes_are_refused_by_name(shape) -> None:
    with pytest.raises(InvalidInputError, match="latents"):
        latents_to_preview(torch.zeros(shape))


def test_preview_jpeg_decodes_to_the_preview_size() -> None:
    jpeg = preview_to_jpeg(latents_to_preview(torch.randn(1, 4, 16, 12)))
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and image.size == (24, 32) and image.mode == "RGB"


@pytest.mark.gpu
def test_cuda_half_latents_give_the_cpu_preview() -> None:
    latents = torch.randn(1, 4, 128, 96, generator=torch.Generator().manual_seed(0))
    on_cpu = np.asarray(latents_to_preview(latents)).astype(int)
    on_cuda = np.asarray(latents_to_preview(latents.to("cuda", torch.float16))).astype(int)
    assert np.abs(on_cpu - on_cuda).max() <= 2  # fp16 rounding of the input only


# --- the pipeline's step callback ---------------------------------------------------------------


def test_the_image_is_bit_identical_with_and_without_previews(tiny_pipeline, images) -> None:
    previews: list[Image.Image] = []

    def make_previews(progress: DenoisingStep) -> None:
        previews.append(latents_to_preview(progress.predicted_latents))

    kwargs = {"num_inference_steps": 3, "guidance_scale": 2.5, "seed": 13}
    plain = tiny_pipeline(*images, **kwargs)
    watched = tiny_pipeline(*images, **kwargs, on_step=make_previews)
    assert len(previews) == 3
    assert np.array_equal(np.asarray(plain.image), np.asarray(watched.image))


def test_each_step_reports_the_person_half_of_its_prediction(tiny_pipeline, images) -> None:
    steps: list[DenoisingStep] = []
    tiny_pipeline(*images, num_inference_steps=4, on_step=steps.append)
    assert [(s.step, s.total_steps) for s in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for step in steps:
        assert step.predicted_latents.shape == (1, 4, LATENT_H, LATENT_W)
        assert step.predicted_latents.dtype == torch.float32
        # A slice of the (1, 4, 2h, w) stack, not a copy (inference mode keeps no view record).
        assert step.predicted_latents.untyped_storage().nbytes() == 2 * 4 * LATENT_H * LATENT_W * 4


def test_predicted_latents_are_ddims_clean_latent_estimate(
    tiny_pipeline: CatVTONPipeline, images
) -> None:
    """x0 = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t), from the UNet's own input and output."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x_t, eps), each (1, 4, 2h, w)
    handle = tiny_pipeline.unet.register_forward_hook(
        lambda module, args, output: calls.append((args[0][:, :4].clone(), output[0].clone()))
    )
    steps: list[DenoisingStep] = []
    try:
        # No guidance: the UNet's output is the scheduler's eps (DDIM's model input is unscaled).
        tiny_pipeline(*images, num_inference_steps=3, guidance_scale=1.0, on_step=steps.append)
    finally:
        handle.remove()
    timesteps = tiny_pipeline.scheduler.timesteps.tolist()
    for step, (noisy, eps), timestep in zip(steps, calls, timesteps, strict=True):
        alpha = tiny_pipeline.scheduler.alphas_cumprod[timestep]
        clean = (noisy - (1 - alpha).sqrt() * eps) / alpha.sqrt()  # (1, 4, 2h, w)
        torch.testing.assert_close(step.predicted_latents, clean[:, :, :LATENT_H])
