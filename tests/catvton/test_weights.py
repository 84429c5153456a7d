"""Weight resolution and the tiny weights' published layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from catvton import InvalidInputError, WeightsNotFoundError, WeightSources, load_pipeline
from catvton.configs import SD15_INPAINTING_UNET_CONFIG, SD15_SCHEDULER_CONFIG
from catvton.masking import MASKER_FILES
from catvton.tiny import write_tiny_weights
from catvton.weights import ATTENTION_VERSIONS, download_weights

PUBLISHED_FILES = [
    "stable-diffusion-inpainting/unet/config.json",
    "stable-diffusion-inpainting/unet/diffusion_pytorch_model.safetensors",
    "stable-diffusion-inpainting/scheduler/scheduler_config.json",
    "sd-vae-ft-mse/config.json",
    "sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
    *(f"CatVTON/{version}/attention/model.safetensors" for version in ATTENTION_VERSIONS),
    *(f"CatVTON/{name}" for name in MASKER_FILES),
]


@pytest.fixture
def weights_copy(tiny_weights: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny weights that a test may damage."""
    return Path(shutil.copytree(tiny_weights, tmp_path / "weights"))


def test_tiny_weights_have_the_published_layout(tiny_weights: Path) -> None:
    written = sorted(
        str(path.relative_to(tiny_weights)) for path in tiny_weights.rglob("*") if path.is_file()
    )
    assert written == sorted(PUBLISHED_FILES)


def test_tiny_configs_have_the_published_fields(tiny_weights: Path) -> None:
    unet_config = json.loads(
        (tiny_weights / "stable-diffusion-inpainting/unet/config.json").read_text()
    )
    assert unet_config["_class_name"] == "UNet2DConditionModel"
    assert set(SD15_INPAINTING_UNET_CONFIG) <= set(unet_config)
    for field in ("in_channels", "out_channels", "down_block_types", "up_block_types"):
        assert unet_config[field] == SD15_INPAINTING_UNET_CONFIG[field]
    scheduler_config = json.loads(
        (tiny_weights / "stable-diffusion-inpainting/scheduler/scheduler_config.json").read_text()
    )
    assert scheduler_config == SD15_SCHEDULER_CONFIG


def test_attention_file_is_fp32_safetensors_with_positional_keys(tiny_weights: Path) -> None:
    path = tiny_weights / "CatVTON/mix-48k-1024/attention/model.safetensors"
    with safe_open(path, framework="pt") as checkpoint:
        keys = list(checkpoint.keys())
        assert len(keys) == 80
        assert {checkpoint.get_slice(key).get_dtype() for key in keys} == {"F32"}
        assert checkpoint.metadata() == {"format": "pt"}


def test_writing_is_deterministic(tiny_weights: Path, tmp_path: Path) -> None:
    again = write_tiny_weights(tmp_path / "again")
    for name in PUBLISHED_FILES:
        assert (again / name).read_bytes() == (tiny_weights / name).read_bytes(), name


def test_resolve_finds_every_file(tiny_weights: Path) -> None:
    resolved = WeightSources(weights_dir=tiny_weights).resolve(require_masker=True)
    assert resolved.unet_dir == tiny_weights / "stable-diffusion-inpainting/unet"
    assert resolved.scheduler_dir == tiny_weights / "stable-diffusion-inpainting/scheduler"
    assert resolved.vae_dir == tiny_weights / "sd-vae-ft-mse"
    assert (
        resolved.attention_file == tiny_weights / "CatVTON/mix-48k-1024/attention/model.safetensors"
    )
    assert resolved.catvton_dir == tiny_weights / "CatVTON"


def test_resolve_selects_the_attention_version(tiny_weights: Path) -> None:
    resolved = WeightSources(
        weights_dir=tiny_weights, attention_version="vitonhd-16k-512"
    ).resolve()
    assert resolved.attention_file.parts[-3] == "vitonhd-16k-512"
    with pytest.raises(InvalidInputError, match="attention_version"):
        WeightSources(weights_dir=tiny_weights, attention_version="v2").resolve()


@pytest.mark.parametrize(
    "name",
    [
        "stable-diffusion-inpainting/unet/diffusion_pytorch_model.safetensors",
        "stable-diffusion-inpainting/scheduler/scheduler_config.json",
        "sd-vae-ft-mse/config.json",
        "CatVTON/mix-48k-1024/attention/model.safetensors",
    ],
)
def test_missing_file_is_named_with_the_download_command(weights_copy: Path, name: str) -> None:
    (weights_copy / name).unlink()
    with pytest.raises(WeightsNotFoundError) as error:
        WeightSources(weights_dir=weights_copy).resolve()
    assert error.value.missing == str(weights_copy / name)
    assert "python -m catvton download" in str(error.value)


def test_missing_masker_file_only_matters_when_required(weights_copy: Path) -> None:
    (weights_copy / "CatVTON" / MASKER_FILES[2]).unlink()
    WeightSources(weights_dir=weights_copy).resolve()
    with pytest.raises(WeightsNotFoundError, match=r"model_final_162be9\.pkl"):
        WeightSources(weights_dir=weights_copy).resolve(require_masker=True)


def test_fp16_unet_variant_alone_is_enough(weights_copy: Path) -> None:
    unet_dir = weights_copy / "stable-diffusion-inpainting/unet"
    (unet_dir / "diffusion_pytorch_model.safetensors").rename(
        unet_dir / "diffusion_pytorch_model.fp16.safetensors"
    )
    assert WeightSources(weights_dir=weights_copy).resolve().unet_dir == unet_dir


def test_components_can_be_given_as_folders(tiny_weights: Path, tmp_path: Path) -> None:
    vae = Path(shutil.copytree(tiny_weights / "sd-vae-ft-mse", tmp_path / "my-vae"))
    resolved = WeightSources(weights_dir=tiny_weights, vae=vae).resolve()
    assert resolved.vae_dir == vae


def test_missing_component_folder_is_named(tiny_weights: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="no-such-folder"):
        WeightSources(weights_dir=tiny_weights, vae=tmp_path / "no-such-folder").resolve()


@pytest.mark.parametrize("given", ["./no-such-folder", "owner/name with spaces"])
def test_missing_folder_that_is_no_hub_id_is_named(tiny_weights: Path, given: str) -> None:
    """A string that is neither a folder nor a valid hub id: our error, not the hub's ValueError."""
    with pytest.raises(WeightsNotFoundError, match="Give a folder that exists"):
        WeightSources(weights_dir=tiny_weights, base_model=given).resolve()


@pytest.fixture
def offline_empty_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_hub_id_offline_without_cache_names_the_file(tiny_weights, offline_empty_hub_cache) -> None:
    sources = WeightSources(weights_dir=tiny_weights, vae="stabilityai/sd-vae-ft-mse")
    with pytest.raises(
        WeightsNotFoundError, match=r"stabilityai/sd-vae-ft-mse/config\.json"
    ) as error:
        sources.resolve()
    assert "HF_HUB_OFFLINE" in error.value.fix


def test_download_offline_keeps_present_files_and_names_absent_ones(
    weights_copy: Path, offline_empty_hub_cache
) -> None:
    (weights_copy / "sd-vae-ft-mse/config.json").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"sd-vae-ft-mse/config\.json"):
        download_weights(weights_copy)


# What the default mirror ships (its UNet only as a pickle; no fp16 variant).
MIRROR_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/pytorch_model.bin",
    "unet/config.json",
    "unet/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.bin",
]


@pytest.mark.parametrize(
    ("repo_files", "chosen"),
    [
        (MIRROR_FILES, "unet/diffusion_pytorch_model.bin"),
        (
            [*MIRROR_FILES, "unet/diffusion_pytorch_model.fp16.safetensors"],
            "unet/diffusion_pytorch_model.fp16.safetensors",
        ),
        (["unet/config.json"], None),
    ],
)
def test_download_picks_the_safest_unet_file_the_repo_ships(
    monkeypatch, tmp_path: Path, repo_files: list[str], chosen: str | None
) -> None:
    requested: list[str] = []
    monkeypatch.setattr(
        "catvton.weights.hf_hub_download",
        lambda repo_id, filename, *, local_dir: requested.append(filename),
    )
    monkeypatch.setattr("catvton.weights.list_repo_files", lambda repo_id: repo_files)
    if chosen is None:
        with pytest.raises(WeightsNotFoundError, match=r"SD-1\.5 inpainting repo"):
            download_weights(tmp_path, base_model="someone/not-inpainting")
    else:
        download_weights(tmp_path, base_model="someone/inpainting")
        assert requested[-1] == chosen


def test_pickled_unet_loads_when_it_is_the_only_weights_file(weights_copy: Path) -> None:
    """The default mirror's layout: unet/diffusion_pytorch_model.bin, read without running code."""
    unet_dir = weights_copy / "stable-diffusion-inpainting/unet"
    safetensors_file = unet_dir / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(safetensors_file), unet_dir / "diffusion_pytorch_model.bin")
    safetensors_file.unlink()
    resolved = WeightSources(weights_dir=weights_copy).resolve()
    assert resolved.unet_weights.name == "diffusion_pytorch_model.bin"
    pipeline = load_pipeline(resolved, device="cpu", dtype="fp32", size=(64, 64))
    assert pipeline.unet.config.in_channels == 9


def test_download_fetches_only_the_files_the_pipeline_reads(monkeypatch, tmp_path: Path) -> None:
    """The hub client is swapped for a recorder at the network boundary: the plan is under test."""
    requested: list[tuple[str, str, Path]] = []

    def record(repo_id: str, filename: str, *, local_dir: Path) -> str:
        requested.append((repo_id, filename, Path(local_dir)))
        return str(Path(local_dir) / filename)

    monkeypatch.setattr("catvton.weights.hf_hub_download", record)
    monkeypatch.setattr("catvton.weights.list_repo_files", lambda repo_id: MIRROR_FILES)
    download_weights(tmp_path)
    assert sorted((repo, name) for repo, name, _ in requested) == sorted(
        [
            ("booksforcharlie/stable-diffusion-inpainting", "unet/config.json"),
            ("booksforcharlie/stable-diffusion-inpainting", "unet/diffusion_pytorch_model.bin"),
            ("booksforcharlie/stable-diffusion-inpainting", "scheduler/scheduler_config.json"),
            ("stabilityai/sd-vae-ft-mse", "config.json"),
            ("stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors"),
            ("zhengchong/CatVTON", "mix-48k-1024/attention/model.safetensors"),
            *(("zhengchong/CatVTON", name) for name in MASKER_FILES),
        ]
    )
    folders = {repo: local_dir for repo, _, local_dir in requested}
    assert folders == {
        "booksforcharlie/stable-diffusion-inpainting": tmp_path / "stable-diffusion-inpainting",
        "stabilityai/sd-vae-ft-mse": tmp_path / "sd-vae-ft-mse",
        "zhengchong/CatVTON": tmp_path / "CatVTON",
    }
