"""The command line on tiny weights: once through ``python -m catvton`` in a fresh process, the rest
in-process through ``main``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from PIL import Image

from catvton.cli import main

FILES = (("person", "jpg"), ("cloth", "png"), ("mask", "png"))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    person = Image.fromarray(rng.integers(0, 256, (400, 300, 3), dtype=np.uint8))
    person.save(folder / "person.jpg")
    Image.new("RGB", (200, 200), (0, 0, 200)).save(folder / "cloth.png")
    mask = Image.new("L", (300, 400), 0)
    mask.paste(255, (50, 100, 250, 300))
    mask.save(folder / "mask.png")
    return {name: folder / f"{name}.{ext}" for name, ext in FILES}


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "catvton", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[2],
        timeout=300,
    )


def tryon_args(tiny_weights: Path, image_files: dict[str, Path], out: Path) -> list[str | Path]:
    return [
        "tryon", "--weights", tiny_weights, "--person", image_files["person"],
        "--cloth", image_files["cloth"], "--steps", "2", "--size", "96x128", "--out", out,
    ]  # fmt: skip


def test_tryon_with_a_mask_writes_the_image_and_timings(
    tiny_weights, image_files, tmp_path, capsys
) -> None:
    out = tmp_path / "out.png"
    args = [*tryon_args(tiny_weights, image_files, out), "--mask", image_files["mask"]]
    assert main(list(map(str, args))) == 0
    captured = capsys.readouterr()
    printed = captured.out
    for stage in ("load", "preprocess", "encode", "denoise", "decode", "denoise/step"):
        assert stage in printed
    assert "seed 42" in printed
    assert "denoise: 100%" in captured.err and "2/2" in captured.err  # tqdm's bar, on stderr
    with Image.open(out) as image:
        assert image.size == (96, 128) and image.mode == "RGB"


def test_tryon_previews_writes_one_jpeg_per_preview_step(
    tiny_weights, image_files, tmp_path
) -> None:
    """Every 2nd of 5 steps and the last; 2x the latent size (12 x 16 at 96 x 128)."""
    previews = tmp_path / "previews"
    args = [*tryon_args(tiny_weights, image_files, tmp_path / "out.png"), "--mask"]
    args += [image_files["mask"], "--steps", "5", "--previews", previews, "--preview-every", "2"]
    assert main(list(map(str, args))) == 0
    assert sorted(path.name for path in previews.iterdir()) == [
        "step-002.jpg",
        "step-004.jpg",
        "step-005.jpg",
    ]
    for path in previews.iterdir():
        with Image.open(path) as preview:
            assert preview.format == "JPEG" and preview.size == (24, 32) and preview.mode == "RGB"


@pytest.mark.parametrize("every", ["-1", "often"])
def test_preview_every_must_be_a_count(every, capsys) -> None:
    args = ["tryon", "--person", "p", "--cloth", "c", "--mask", "m", "--out", "o"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--preview-every", every])
    assert exit_info.value.code == 2
    assert "--preview-every" in capsys.readouterr().err


def test_mask_command_output_feeds_tryon_for_a_landscape_photo(
    tiny_weights, image_files, tmp_path
) -> None:
    """The mask command writes the cropped frame (3:4); tryon places it on a 4:3 photo."""
    landscape = tmp_path / "landscape.jpg"
    with Image.open(image_files["person"]) as person:
        person.transpose(Image.Transpose.ROTATE_90).save(landscape)  # 400 x 300
    mask, out = tmp_path / "mask.png", tmp_path / "out.png"
    args = ["mask", "--weights", tiny_weights, "--person", landscape, "--cloth-type", "upper"]
    assert main(list(map(str, [*args, "--size", "96x128", "--out", mask]))) == 0
    tryon = tryon_args(tiny_weights, {**image_files, "person": landscape}, out)
    assert main(list(map(str, [*tryon, "--mask", mask]))) == 0
    with Image.open(out) as image:
        assert image.size == (96, 128)


def test_tryon_with_a_mask_of_another_shape_exits_1(
    tiny_weights, image_files, tmp_path, capsys
) -> None:
    """The mask is compared with the person photo as read (not with the fitted person)."""
    wide_mask = tmp_path / "wide_mask.png"
    Image.new("L", (400, 300), 255).save(wide_mask)
    args = [*tryon_args(tiny_weights, image_files, tmp_path / "out.png"), "--mask", wide_mask]
    assert main(list(map(str, args))) == 1
    assert "mask_image (400x300)" in capsys.readouterr().err


def test_python_m_catvton_tryon_with_a_cloth_type(tiny_weights, image_files, tmp_path) -> None:
    """The real entry point, in a fresh process: the AutoMasker computes the mask."""
    out = tmp_path / "out.png"
    args = [*tryon_args(tiny_weights, image_files, out), "--cloth-type", "upper_body"]
    completed = run_cli(*args, "--seed", "-1", "--repaint")
    assert completed.returncode == 0, completed.stderr
    assert "mask " in completed.stdout
    with Image.open(out) as image:
        assert image.size == (96, 128)


def test_mask_command_writes_a_binary_mask(tiny_weights, image_files, tmp_path) -> None:
    out = tmp_path / "mask.png"
    args = ["mask", "--weights", tiny_weights, "--person", image_files["person"]]
    args += ["--cloth-type", "lower", "--size", "96x128", "--out", out]
    assert main(list(map(str, args))) == 0
    with Image.open(out) as mask:
        assert mask.size == (96, 128) and mask.mode == "L"
        assert set(np.unique(np.asarray(mask))) <= {0, 255}


@pytest.mark.parametrize(
    ("option", "dtype"), [([], "torch.float32"), (["--masker-dtype", "bf16"], "torch.bfloat16")]
)
def test_the_masker_runs_in_fp32_unless_masker_dtype_says(
    tiny_weights, image_files, tmp_path, capsys, option, dtype
) -> None:
    args = ["mask", "--weights", str(tiny_weights), "--person", str(image_files["person"])]
    args += ["--cloth-type", "upper", "--size", "96x128", "--out", str(tmp_path / "m.png")]
    assert main([*args, *option]) == 0
    assert f"(load and run the AutoMasker; cpu, {dtype})" in capsys.readouterr().out


def test_mask_debug_dir_gets_every_label_map(tiny_weights, image_files, tmp_path) -> None:
    args = ["mask", "--weights", tiny_weights, "--person", image_files["person"]]
    args += ["--cloth-type", "upper", "--size", "96x128", "--out", tmp_path / "mask.png"]
    assert main(list(map(str, [*args, "--debug-dir", tmp_path / "debug"]))) == 0
    for name, labels in (("densepose", 25), ("atr", 18), ("lip", 20)):
        with Image.open(tmp_path / "debug" / f"{name}.png") as label_map:
            assert label_map.size == (96, 128) and label_map.mode == "L"
            assert np.asarray(label_map).max() < labels
        with Image.open(tmp_path / "debug" / f"{name}_color.png") as picture:
            assert picture.mode == "RGB"


def test_make_tiny_weights_writes_a_loadable_folder(tmp_path, capsys) -> None:
    assert main(["make-tiny-weights", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w/CatVTON/mix-48k-1024/attention/model.safetensors").is_file()


def test_missing_weights_exit_1_naming_the_file_and_the_command(image_files, tmp_path, capsys):
    args = ["tryon", "--weights", str(tmp_path), "--person", str(image_files["person"])]
    code = main([*args, "--cloth", str(image_files["cloth"]), "--mask", "m.png", "--out", "o.png"])
    error = capsys.readouterr().err
    assert code == 1
    assert "stable-diffusion-inpainting/unet/config.json" in error
    assert "python -m catvton download DIR" in error


def test_unknown_cloth_type_exits_1_listing_the_allowed(tiny_weights, image_files, capsys) -> None:
    args = ["mask", "--weights", str(tiny_weights), "--person", str(image_files["person"])]
    assert main([*args, "--cloth-type", "hat", "--out", "m.png"]) == 1
    assert "upper" in capsys.readouterr().err


def test_unreadable_image_is_named(tiny_weights, tmp_path, capsys) -> None:
    (tmp_path / "person.jpg").write_bytes(b"not an image")
    args = ["mask", "--weights", str(tiny_weights), "--person", str(tmp_path / "person.jpg")]
    assert main([*args, "--cloth-type", "upper", "--size", "96x128", "--out", "m.png"]) == 1
    assert "--person" in capsys.readouterr().err


def test_download_offline_names_what_it_could_not_fetch(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert main(["download", str(tmp_path / "w"), "--no-masker"]) == 1
    assert "booksforcharlie/stable-diffusion-inpainting/unet/config.json" in capsys.readouterr().err


def test_download_of_a_malformed_repo_id_exits_1_naming_it(tmp_path, capsys) -> None:
    assert main(["download", str(tmp_path / "w"), "--no-masker", "--base-model", "bad id"]) == 1
    assert "bad id/unet/config.json" in capsys.readouterr().err


def test_bad_size_is_an_argument_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["mask", "--person", "p.jpg", "--cloth-type", "upper", "--size", "big", "--out", "m"])
    assert exit_info.value.code == 2
    assert "768x1024" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["100x128", "0x128", "-96x128"])
def test_size_not_a_positive_multiple_of_8_is_refused_before_loading(size, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["mask", "--person", "p.jpg", "--cloth-type", "upper", f"--size={size}", "--out", "m"])
    assert exit_info.value.code == 2
    assert "multiples of 8" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["download"], ["make-tiny-weights"], ["tryon"], ["mask"]])
def test_help_is_plain_text_without_markup(command: list[str], capsys) -> None:
    """--help used to print the module docstring's reStructuredText (double backticks) as it is."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "python -m catvton" in usage
    assert "`" not in usage
