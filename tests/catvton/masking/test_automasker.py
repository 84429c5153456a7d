"""The AutoMasker end to end on tiny generated weights: DensePose, both SCHP parsers, the rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from catvton.errors import InvalidInputError
from catvton.masking import (
    AutoMasker,
    MaskResult,
    load_automasker,
    save_debug_maps,
    with_figure_masks,
)
from catvton.masking.automasker import ATR_INPUT_SIZE, DENSEPOSE_FILE, choose_masker_dtype
from catvton.masking.checkpoints import read_detectron2_pkl
from catvton.masking.schp import SCHP_MEAN_BGR, SCHP_STD_BGR, _square_warp, parse_human
from catvton.masking.tiny import save_detectron2_pkl, standing_figure


@pytest.fixture(scope="module")
def result(tiny_masker: AutoMasker, person_image: Image.Image) -> MaskResult:
    return tiny_masker(person_image, "upper")


def test_outputs_have_the_input_size_and_label_ranges(
    result: MaskResult, person_image: Image.Image
) -> None:
    assert result.mask.mode == "L"
    assert result.mask.size == person_image.size
    assert set(np.unique(np.asarray(result.mask))) <= {0, 255}
    for labels, highest in ((result.densepose, 24), (result.atr, 17), (result.lip, 19)):
        assert labels.shape == (person_image.height, person_image.width)
        assert labels.dtype == np.uint8
        assert labels.max() <= highest


def test_schp_warp_back_matches_opencv(tiny_masker: AutoMasker, person_image: Image.Image) -> None:
    """The logits' warp back to the image (grid_sample here) agrees with SCHP's per-channel
    `cv2.warpAffine` of the upsampled logits with the inverse transform."""
    size = ATR_INPUT_SIZE
    image_bgr = np.ascontiguousarray(np.asarray(person_image)[:, :, ::-1])
    height, width = image_bgr.shape[:2]
    warp = _square_warp(width, height, size)
    square = cv2.warpAffine(image_bgr, warp, (size, size), flags=cv2.INTER_LINEAR)
    pixels = torch.from_numpy(square).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor(SCHP_MEAN_BGR), torch.tensor(SCHP_STD_BGR)
    pixels = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = tiny_masker.schp_atr(pixels)
    logits = torch.nn.functional.interpolate(
        logits, (size, size), mode="bilinear", align_corners=True
    )
    inverse = cv2.invertAffineTransform(warp)
    channels = [
        cv2.warpAffine(channel, inverse, (width, height), flags=cv2.INTER_LINEAR)
        for channel in logits[0].numpy()
    ]
    expected = np.argmax(np.stack(channels, axis=-1), axis=-1)

    labels = parse_human(tiny_masker.schp_atr, image_bgr, size)

    assert (labels == expected).mean() > 0.99


def test_the_tiny_detector_finds_a_person_and_pastes_its_parts(result: MaskResult) -> None:
    """The tiny box classifier calls every proposal a person, so RoIAlign and paste code run."""
    assert result.densepose.any()
    rows, cols = np.nonzero(result.densepose)
    # One pasted box: the labelled pixels lie inside one rectangle, not scattered over the image.
    box_area = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert box_area < result.densepose.size


def test_no_person_above_the_threshold_gives_an_empty_map(
    masker_dir: Path, tmp_path: Path, person_image: Image.Image
) -> None:
    shutil.copytree(masker_dir, tmp_path, dirs_exist_ok=True)
    weights = read_detectron2_pkl(tmp_path / DENSEPOSE_FILE)
    weights["roi_heads.box_predictor.cls_score.bias"] = torch.tensor([-8.0, 8.0])
    save_detectron2_pkl(tmp_path / DENSEPOSE_FILE, weights)

    result = load_automasker(tmp_path)(person_image, "lower")

    assert not result.densepose.any()
    assert result.mask.size == person_image.size


def test_same_input_gives_the_same_mask(
    tiny_masker: AutoMasker, person_image: Image.Image, result: MaskResult
) -> None:
    again = tiny_masker(person_image, "upper")
    assert np.array_equal(np.asarray(again.mask), np.asarray(result.mask))
    assert np.array_equal(again.densepose, result.densepose)


def test_large_and_odd_sized_inputs_come_back_at_their_own_size(tiny_masker: AutoMasker) -> None:
    """Over 1024 px the detector input is capped first; the maps still match the input."""
    image = Image.new("RGB", (411, 1100), (120, 90, 60))
    result = tiny_masker(image, "overall")
    assert result.mask.size == (411, 1100)
    assert result.densepose.shape == result.atr.shape == result.lip.shape == (1100, 411)


@pytest.mark.parametrize("size", [(1, 3000), (3000, 1)])
def test_thin_strips_over_1024_px_are_masked(tiny_masker: AutoMasker, size: tuple[int, int]):
    """Capping 3000 px at 1024 would round a 1 px side to 0; it stays 1 px."""
    result = tiny_masker(Image.new("RGB", size, (120, 90, 60)), "upper")
    assert result.mask.size == size
    assert result.densepose.shape == (size[1], size[0])


def test_bad_arguments_are_named(tiny_masker: AutoMasker, person_image: Image.Image) -> None:
    with pytest.raises(InvalidInputError, match="cloth_type"):
        tiny_masker(person_image, "socks")
    with pytest.raises(InvalidInputError, match="person_image"):
        tiny_masker(np.zeros((8, 8, 3)), "upper")
    with pytest.raises(InvalidInputError, match="person_image must not be empty; got 0x8"):
        tiny_masker(Image.new("RGB", (0, 8)), "upper")


def test_square_warp_fits_the_image_corners_into_the_square() -> None:
    warp = _square_warp(width=96, height=128, input_size=473)
    top_left = warp @ np.array([0, 0, 1])
    bottom_right = warp @ np.array([95, 127, 1])
    assert top_left[1] == pytest.approx(0) and bottom_right[1] == pytest.approx(472)
    assert top_left[0] + bottom_right[0] == pytest.approx(472)  # centred horizontally


def test_debug_maps_are_label_and_colour_pngs(result: MaskResult, tmp_path: Path) -> None:
    written = save_debug_maps(result, tmp_path / "debug")
    assert {path.name for path in written} == {
        "densepose.png",
        "densepose_color.png",
        "atr.png",
        "atr_color.png",
        "lip.png",
        "lip_color.png",
        "mask.png",
    }
    with Image.open(tmp_path / "debug" / "lip.png") as labels:
        assert labels.mode == "L"
        assert np.array_equal(np.asarray(labels), result.lip)
    with Image.open(tmp_path / "debug" / "atr_color.png") as colours:
        assert colours.mode == "RGB" and colours.size == result.mask.size


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "cpu", "mps"])
def test_the_masker_runs_in_fp32_on_every_device_unless_asked(device: str) -> None:
    """As the reference: a label flipped by fp16 moves the mask (pure choice; no GPU needed)."""
    assert choose_masker_dtype(None, torch.device(device)) == torch.float32
    assert choose_masker_dtype("fp16", torch.device(device)) == torch.float16
    assert choose_masker_dtype(torch.bfloat16, torch.device(device)) == torch.bfloat16


def test_the_masker_loads_in_the_precision_asked(masker_dir: Path) -> None:
    masker = load_automasker(masker_dir, device="cpu", dtype="bf16")
    for network in (masker.densepose, masker.schp_atr, masker.schp_lip):
        assert next(network.parameters()).dtype == torch.bfloat16
    with pytest.raises(InvalidInputError, match="dtype must be one of"):
        load_automasker(masker_dir, device="cpu", dtype="int8")


@pytest.mark.gpu
def test_cuda_masker_agrees_with_the_cpu(
    masker_dir: Path, person_image: Image.Image, result: MaskResult
) -> None:
    """The default on CUDA is fp32 and matches the CPU; fp16 (the option) runs, keeps shapes."""
    fp32 = load_automasker(masker_dir, device="cuda")
    assert next(fp32.schp_atr.parameters()).dtype == torch.float32
    on_gpu = fp32(person_image, "upper")
    assert (on_gpu.atr == result.atr).mean() > 0.99
    assert (on_gpu.lip == result.lip).mean() > 0.99
    assert (on_gpu.densepose == result.densepose).mean() > 0.99

    fp16 = load_automasker(masker_dir, device="cuda", dtype="fp16")
    assert fp16.device.type == "cuda"
    assert next(fp16.schp_atr.parameters()).dtype == torch.float16
    half = fp16(person_image, "upper")
    assert half.mask.size == result.mask.size
    assert half.lip.shape == result.lip.shape


def test_figure_masks_put_each_cloth_type_on_its_part_of_a_standing_figure(
    tiny_masker: AutoMasker, person_image: Image.Image
) -> None:
    """What demo mode uses: the tiny networks still run, the mask comes from a drawn figure."""
    masker = with_figure_masks(tiny_masker)
    rows = {}
    for cloth_type in ("upper", "lower", "overall"):
        result = masker(person_image, cloth_type)
        assert result.mask.size == person_image.size
        assert (result.densepose == standing_figure(person_image.size)).all()
        white = np.asarray(result.mask) == 255
        rows[cloth_type] = np.nonzero(white.any(axis=1))[0]
    upper, lower, overall = rows["upper"], rows["lower"], rows["overall"]
    assert upper.max() < lower.max() and upper.min() < lower.min()  # the top above the legs
    assert overall.min() <= upper.min() and overall.max() >= lower.max() - 1  # both
