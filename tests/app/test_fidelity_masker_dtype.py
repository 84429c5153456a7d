"""The service's masker precision: fp32 by default on every device, `--masker-dtype` to pick."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from http_helpers import tiny_settings
from pydantic_settings import CliApp

from app.inference.models import load_models
from app.settings import Settings


def test_masker_dtype_is_a_flag_defaulting_to_fp32() -> None:
    assert Settings().masker_dtype == "fp32"
    assert CliApp.run(Settings, cli_args=["--masker-dtype", "fp16"]).masker_dtype == "fp16"


@pytest.mark.parametrize(
    ("masker_dtype", "dtype"), [(None, torch.float32), ("bf16", torch.bfloat16)]
)
def test_the_server_loads_the_masker_in_the_precision_asked(
    tiny_weights: Path, masker_dtype: str | None, dtype: torch.dtype
) -> None:
    """The pipeline's own dtype (fp32 here) does not decide the masker's."""
    overrides = {} if masker_dtype is None else {"masker_dtype": masker_dtype}
    models = load_models(tiny_settings(tiny_weights, **overrides), progress=lambda step: None)
    assert models.masker.dtype == dtype
