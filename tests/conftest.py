"""Shared fixtures: one tiny weights folder per test session, written by the real writer and read by
the real loader; GPU-only tests skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from catvton import CatVTONPipeline, WeightSources, load_pipeline
from catvton.tiny import TINY_SIZE, write_tiny_weights

# The tiny networks are overhead-bound: a second intra-op thread gains nothing, and on a shared
# 2-core machine spinning OpenMP threads made runs up to 40x slower. The tests load the tiny
# weights outside demo mode, so `--torch-threads auto` (app.settings) leaves the count to them.
torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--browser-screenshots",
        metavar="DIR",
        type=Path,
        help="where the browser tests save a screenshot of each page state "
        "(default: a folder in pytest's temporary directory; the run prints which)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete weights folder (pipeline and masker files) with tiny random networks."""
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_weights: Path) -> CatVTONPipeline:
    """The pipeline loaded from ``tiny_weights`` on the CPU in fp32 at ``TINY_SIZE`` (96 x 128)."""
    return load_pipeline(
        WeightSources(weights_dir=tiny_weights).resolve(),
        device="cpu",
        dtype="fp32",
        size=TINY_SIZE,
    )
