"""The pipeline end to end on tiny generated weights, through the real loader."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from catvton import CatVTONPipeline, InvalidInputError
from catvton.tiny import TINY_SIZE


@pytest.fixture(scope="module")
def images() -> tuple[Image.Image, Image.Image, Image.Image]:
    """A person (tall, patterned), a garment (square) and a mask over the torso, all generated."""
    rng = np.random.default_rng(0)
    person = Image.fromarray(rng.integers(0, 256, (400, 240, 3), dtype=np.uint8))
    cloth = Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))
    mask = Image.new("L", person.size, 0)
    mask.paste(255, (60, 100, 180, 260))
    return person, cloth, mask


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
