"""The pipeline end to end on tiny generated weights, through the real loader."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from catvton import (
    CatVTONPipeline,
    DenoisingStep,
    InferenceCanceledError,
    InvalidInputError,
    WeightSources,
    load_pipeline,
)
from catvton.preprocess import fit_person
from catvton.tiny import TINY_SIZE


def run(pipeline: CatVTONPipeline, images, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    return pipeline(*images, **kwargs)


def test_result_is_rgb_at_working_size_with_stage_timings(tiny_pipeline, images) -> None:
    result = run(tiny_pipeline, images, seed=3)
    assert result.image.mode == "RGB"
    assert result.image.size == TINY_SIZE
    assert result.seed == 3
    assert {"preprocess", "encode", "denoise", "decode", "postprocess"} <= set(result.timings)
    assert all(seconds >= 0 for seconds in result.timings.values())


def test_same_seed_gives_identical_images(tiny_pipeline, images) -> None:
    first = np.asarray(run(tiny_pipeline, images, seed=7).image)
    second = np.asarray(run(tiny_pipeline, images, seed=7).image)
    assert np.array_equal(first, second)


def test_different_seeds_give_different_images(tiny_pipeline, images) -> None:
    first = np.asarray(run(tiny_pipeline, images, seed=7).image)
    second = np.asarray(run(tiny_pipeline, images, seed=8).image)
    assert not np.array_equal(first, second)


def test_random_seed_is_reported_and_reproduces_the_image(tiny_pipeline, images) -> None:
    random_run = run(tiny_pipeline, images, seed=-1)
    assert 0 <= random_run.seed < 2**32
    replay = run(tiny_pipeline, images, seed=random_run.seed)
    assert np.array_equal(np.asarray(random_run.image), np.asarray(replay.image))


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("num_inference_steps", 0),
        ("num_inference_steps", 2.5),
        ("guidance_scale", float("nan")),
        ("guidance_scale", -1.0),
        ("seed", -2),
        ("seed", 2**32),
        ("seed", "42"),
    ],
)
def test_bad_arguments_are_refused_by_name(tiny_pipeline, images, argument, value) -> None:
    with pytest.raises(InvalidInputError, match=argument):
        run(tiny_pipeline, images, **{argument: value})


def test_non_image_input_is_refused_by_name(tiny_pipeline, images) -> None:
    person, cloth, _ = images
    with pytest.raises(InvalidInputError, match="mask_image"):
        tiny_pipeline(person, cloth, np.zeros((4, 4)), num_inference_steps=1)


def test_mask_of_another_shape_is_refused_by_name(tiny_pipeline, images) -> None:
    """The person's crop would cut a differently shaped mask elsewhere: refused, not misplaced."""
    person, cloth, mask = images
    with pytest.raises(InvalidInputError, match="mask_image"):
        tiny_pipeline(person, cloth, mask.rotate(90, expand=True), num_inference_steps=1)


def count_unet_batches(pipeline: CatVTONPipeline) -> tuple[list[int], object]:
    """Record the batch size of every UNet call (a forward pre-hook; the UNet itself runs)."""
    batches: list[int] = []
    handle = pipeline.unet.register_forward_pre_hook(
        lambda module, args: batches.append(args[0].shape[0])
    )
    return batches, handle


@pytest.mark.parametrize(("guidance_scale", "batch"), [(1.0, 1), (0.5, 1), (2.5, 2)])
def test_guidance_above_one_batches_uncond_and_cond(
    tiny_pipeline, images, guidance_scale, batch
) -> None:
    batches, handle = count_unet_batches(tiny_pipeline)
    try:
        run(tiny_pipeline, images, num_inference_steps=3, guidance_scale=guidance_scale)
    finally:
        handle.remove()
    assert batches == [batch] * 3


def test_first_unet_input_follows_the_published_layout(tiny_pipeline, images) -> None:
    """Noise from a fresh generator first; height stack; zero garment half in the uncond input."""
    inputs: list[torch.Tensor] = []
    handle = tiny_pipeline.unet.register_forward_pre_hook(
        lambda module, args: inputs.append(args[0].clone())
    )
    try:
        run(tiny_pipeline, images, num_inference_steps=1, guidance_scale=2.5, seed=11)
    finally:
        handle.remove()
    (unet_input,) = inputs  # (2, 9, 2h, w): [uncond, cond]
    latent_h = TINY_SIZE[1] // 8
    assert unet_input.shape == (2, 9, 2 * latent_h, TINY_SIZE[0] // 8)
    noise = torch.randn(
        (1, 4, 2 * latent_h, TINY_SIZE[0] // 8), generator=torch.Generator().manual_seed(11)
    )
    torch.testing.assert_close(unet_input[:, :4], noise.expand(2, -1, -1, -1))
    mask, uncond, cond = unet_input[:, 4:5], unet_input[0, 5:], unet_input[1, 5:]
    assert mask[:, :, latent_h:].eq(0).all() and mask[:, :, :latent_h].eq(1).any()
    assert torch.equal(mask[0], mask[1])
    assert torch.equal(uncond[:, :latent_h], cond[:, :latent_h])  # the same masked person
    assert uncond[:, latent_h:].eq(0).all() and cond[:, latent_h:].ne(0).any()


def test_repaint_keeps_the_person_outside_the_mask(tiny_pipeline, images) -> None:
    person, cloth, mask = images
    # A person and mask already at the working size, so "outside" is easy to index.
    person = fit_person(person, TINY_SIZE)
    mask = Image.new("L", TINY_SIZE, 0)
    mask.paste(255, (30, 40, 66, 90))
    result = tiny_pipeline(person, cloth, mask, num_inference_steps=2, repaint=True)
    plain = tiny_pipeline(person, cloth, mask, num_inference_steps=2, repaint=False)
    outside = np.ones((TINY_SIZE[1], TINY_SIZE[0]), dtype=bool)
    outside[40 - 20 : 90 + 20, 30 - 20 : 66 + 20] = False  # box + blur 9 + repaint blur 3
    assert np.array_equal(np.asarray(result.image)[outside], np.asarray(person)[outside])
    assert not np.array_equal(np.asarray(plain.image)[outside], np.asarray(person)[outside])
    inside = np.asarray(result.image)[55:75, 40:56]
    assert np.array_equal(inside, np.asarray(plain.image)[55:75, 40:56])


def test_non_finite_half_precision_decode_is_retried_in_fp32(tiny_weights, images) -> None:
    """Inject one overflow into the bf16 decoder: the pipeline decodes again in fp32."""
    # bf16 convolutions are slow on a CPU: a 32 x 64 working size keeps this test quick.
    resolved = WeightSources(weights_dir=tiny_weights).resolve()
    pipeline = load_pipeline(resolved, device="cpu", dtype="bf16", size=(32, 64))
    decoder_dtypes: list[torch.dtype] = []

    def overflow_in_half(module, args, output):
        decoder_dtypes.append(output.dtype)
        return output * float("inf") if output.dtype == torch.bfloat16 else output

    handle = pipeline.vae.decoder.register_forward_hook(overflow_in_half)
    try:
        result = run(pipeline, images, num_inference_steps=1, guidance_scale=1.0)
    finally:
        handle.remove()
    assert decoder_dtypes == [torch.bfloat16, torch.float32]
    assert np.asarray(result.image).std() > 0  # not a black (or white) picture
    assert pipeline.vae.dtype == torch.bfloat16  # the VAE goes back to the pipeline's dtype


@pytest.mark.gpu
def test_cuda_defaults_to_fp16_with_tf32_and_is_reproducible(tiny_weights, images) -> None:
    resolved = WeightSources(weights_dir=tiny_weights).resolve()
    pipeline = load_pipeline(resolved, device="cuda", size=TINY_SIZE)
    assert pipeline.dtype == torch.float16
    assert torch.backends.cuda.matmul.allow_tf32
    first, second = (np.asarray(run(pipeline, images, seed=5).image) for _ in range(2))
    # Bit-identity is promised on the CPU only; GPU kernels may differ in the last bit.
    assert np.abs(first.astype(int) - second.astype(int)).max() <= 2
    assert first.std() > 0


def test_every_denoising_step_is_reported_in_order(tiny_pipeline, images) -> None:
    batches, handle = count_unet_batches(tiny_pipeline)
    reported: list[tuple[int, int, int]] = []  # (done, total, UNet calls so far)
    try:
        result = run(
            tiny_pipeline,
            images,
            num_inference_steps=4,
            guidance_scale=1.0,
            on_step=lambda progress: reported.append(
                (progress.step, progress.total_steps, len(batches))
            ),
        )
    finally:
        handle.remove()
    assert reported == [(1, 4, 1), (2, 4, 2), (3, 4, 3), (4, 4, 4)]  # after each step's UNet call
    assert result.mask.mode == "L" and result.mask.size == TINY_SIZE
    assert set(np.unique(np.asarray(result.mask))) <= {0, 255}


def test_stop_ends_the_call_before_the_next_step_and_the_next_call_runs(
    tiny_pipeline, images
) -> None:
    stop = threading.Event()

    def stop_after_two(progress: DenoisingStep) -> None:
        if progress.step == 2:
            stop.set()

    batches, handle = count_unet_batches(tiny_pipeline)
    try:
        with pytest.raises(InferenceCanceledError, match="before step 3/6"):
            run(tiny_pipeline, images, num_inference_steps=6, on_step=stop_after_two, stop=stop)
        assert len(batches) == 2
        stopped_early = threading.Event()
        stopped_early.set()
        with pytest.raises(InferenceCanceledError, match="before step 1/"):
            run(tiny_pipeline, images, stop=stopped_early)
        assert len(batches) == 2  # a stop set beforehand: no UNet call at all
        # The pipeline keeps no state from a stopped call: the same seed gives the same image.
        after = run(tiny_pipeline, images, num_inference_steps=2, seed=5, stop=threading.Event())
    finally:
        handle.remove()
    fresh = run(tiny_pipeline, images, num_inference_steps=2, seed=5)
    assert np.array_equal(np.asarray(after.image), np.asarray(fresh.image))
