"""Model configurations as published, and their tiny counterparts for tests.

The published values are kept so that real-size networks can be built without downloading anything
(the key-scheme test on the meta device, the benchmark's ``--random-real-size`` mode). The tiny ones
keep every field and block type of the published ones and only shrink widths, so the same code paths
run in tests.
"""

from __future__ import annotations

from typing import Any

# stable-diffusion-inpainting/unet/config.json (SD-1.5 inpainting; 9 input channels: 4 noisy latent,
# 1 mask, 4 masked-image latent).
SD15_INPAINTING_UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

# stable-diffusion-inpainting/scheduler/scheduler_config.json. The repo ships a PNDM config; DDIM
# reads the same fields and takes its own defaults for the rest (timestep_spacing "leading", epsilon
# prediction).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# sd-vae-ft-mse/config.json (the published file leaves the scaling factor at diffusers' 0.18215).
SD_VAE_FT_MSE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# Same blocks and depths as the published UNet (so the attention checkpoint has the same 16 blocks
# and 80 keys); widths cut to 32 channels, 64 at the deepest level and in the mid block (two widths,
# so a shape mix-up between blocks shows).
TINY_UNET_CONFIG: dict[str, Any] = {
    **SD15_INPAINTING_UNET_CONFIG,
    "block_out_channels": [32, 32, 32, 64],
    "cross_attention_dim": 32,
    "sample_size": 16,
}

# Four blocks keep the 8x down-sampling; one layer per block and 32 channels keep it fast.
TINY_VAE_CONFIG: dict[str, Any] = {
    **SD_VAE_FT_MSE_CONFIG,
    "block_out_channels": [32, 32, 32, 32],
    "layers_per_block": 1,
    "sample_size": 128,
}


def model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of a config: everything but the ``_class_name``-style metadata."""
    return {key: value for key, value in config.items() if not key.startswith("_")}
