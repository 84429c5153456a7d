"""load_pipeline: device and dtype choice, the loaded components, and refusals of bad files."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from catvton import CheckpointMismatchError, InvalidInputError, WeightSources, load_pipeline
from catvton.attention import attention_key_scheme
from catvton.devices import choose_device, choose_dtype
from catvton.loading import default_size, prepare_device

REGISTER_PARAMETER = torch.nn.Module.register_parameter  # before any load could swap it


def test_device_and_dtype_choice() -> None:
    assert choose_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert choose_device(None) == torch.device("cpu")
    assert choose_dtype(None, torch.device("cpu")) == torch.float32
    assert choose_dtype(None, torch.device("cuda")) == torch.float16
    assert choose_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert choose_dtype(torch.float16, torch.device("cpu")) == torch.float16
    with pytest.raises(InvalidInputError, match="dtype"):
        choose_dtype("fp8", torch.device("cpu"))
    with pytest.raises(InvalidInputError, match="device"):
        choose_device("gpu-please")


def test_absent_accelerator_is_refused_by_name() -> None:
    """Asking for a GPU this machine lacks is a clear error, not torch's from inside loading."""
    with pytest.raises(InvalidInputError, match="cuda:99"):
        choose_device("cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="'cuda' is not present"):
            choose_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(InvalidInputError, match="'mps' is not present"):
            choose_device("mps")


def test_default_size_follows_the_attention_version() -> None:
    assert default_size("mix-48k-1024") == (768, 1024)
    assert default_size("vitonhd-16k-512") == (384, 512)
    assert default_size("dresscode-16k-512") == (384, 512)


def test_loaded_pipeline_carries_the_try_on_weights(tiny_pipeline, tiny_weights) -> None:
    resolved = WeightSources(weights_dir=tiny_weights).resolve()
    checkpoint = load_file(resolved.attention_file)
    parameters = dict(tiny_pipeline.unet.named_parameters())
    for key, target in attention_key_scheme(tiny_pipeline.unet).items():
        assert torch.equal(parameters[target], checkpoint[key]), key
    assert not any(".attn2.to_" in name for name in parameters)
    assert tiny_pipeline.device == torch.device("cpu")
    assert tiny_pipeline.dtype == torch.float32
    assert tiny_pipeline.size == (96, 128)


def test_scheduler_is_ddim_with_the_published_timesteps(tiny_pipeline) -> None:
    scheduler = tiny_pipeline.scheduler
    assert isinstance(scheduler, DDIMScheduler)
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.timestep_spacing == "leading"
    assert scheduler.config.prediction_type == "epsilon"
    scheduler.set_timesteps(50)
    timesteps = scheduler.timesteps.tolist()
    assert timesteps[:3] == [981, 961, 941] and timesteps[-1] == 1 and len(timesteps) == 50


def test_size_defaults_to_the_version_training_size(tiny_weights) -> None:
    resolved = WeightSources(
        weights_dir=tiny_weights, attention_version="vitonhd-16k-512"
    ).resolve()
    assert load_pipeline(resolved, device="cpu").size == (384, 512)


@pytest.fixture
def weights_copy(tiny_weights: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_weights, tmp_path / "weights"))


def test_corrupt_attention_file_is_refused_by_name(weights_copy: Path) -> None:
    path = weights_copy / "CatVTON/mix-48k-1024/attention/model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointMismatchError, match=r"model\.safetensors"):
        load_pipeline(WeightSources(weights_dir=weights_copy).resolve(), device="cpu")


@pytest.mark.parametrize(
    "name",
    [
        "stable-diffusion-inpainting/unet/diffusion_pytorch_model.safetensors",
        "stable-diffusion-inpainting/unet/config.json",
        "sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
        "stable-diffusion-inpainting/scheduler/scheduler_config.json",
    ],
)
def test_truncated_component_file_is_a_library_error_naming_it(weights_copy: Path, name) -> None:
    """Not diffusers' OSError: the CLI prints one line and the service reports it as expected."""
    path = weights_copy / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointMismatchError, match=path.name.replace(".", r"\.")) as error:
        load_pipeline(WeightSources(weights_dir=weights_copy).resolve(), device="cpu")
    assert "cannot be read" in str(error.value) and "mis-shaped" not in str(error.value)


def test_attention_file_of_another_unet_is_refused(weights_copy: Path) -> None:
    """A checkpoint made for a wider UNet: every mis-shaped key is reported."""
    path = weights_copy / "CatVTON/mix-48k-1024/attention/model.safetensors"
    wider = {key: torch.zeros(*(2 * d for d in t.shape)) for key, t in load_file(path).items()}
    save_file(wider, path)
    with pytest.raises(CheckpointMismatchError, match=r"mis-shaped tensors: 0\.to_q") as error:
        load_pipeline(WeightSources(weights_dir=weights_copy).resolve(), device="cpu")
    assert len(error.value.mismatched) == 80


def test_non_inpainting_unet_is_refused(weights_copy: Path) -> None:
    unet_dir = weights_copy / "stable-diffusion-inpainting/unet"
    config = json.loads((unet_dir / "config.json").read_text())
    config["in_channels"] = 4
    for name in ("_class_name", "_diffusers_version"):
        config.pop(name)
    UNet2DConditionModel(**config).save_pretrained(unet_dir)
    with pytest.raises(CheckpointMismatchError, match="9"):
        load_pipeline(WeightSources(weights_dir=weights_copy).resolve(), device="cpu")


def test_loads_in_parallel_threads_leave_torch_as_they_found_it(tiny_weights: Path) -> None:
    """diffusers builds networks under context managers that swap torch.nn.Module methods
    process-wide; two loads at once could put back each other's swaps and leave every later
    network on the meta device ("Cannot copy out of meta tensor")."""
    resolved = WeightSources(weights_dir=tiny_weights).resolve()
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: load_pipeline(resolved, "cpu", "fp32"), range(8)))
    assert all(pipeline.unet.device.type == "cpu" for pipeline in loaded)
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
    assert torch.nn.Module.register_parameter is REGISTER_PARAMETER


def test_a_thread_count_below_1_is_refused_naming_it() -> None:
    with pytest.raises(InvalidInputError, match="num_threads must be 1 or more; got 0"):
        prepare_device("cpu", "fp32", num_threads=0)
