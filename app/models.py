"""What the device worker loads and how: the pipeline and the masker, demo weights, warm-up.

Separate from the worker (app/worker.py) because two owners of the device load with this same
code: the single process's `InferenceWorker` and each Ray Serve try-on replica
(app/cluster/replica.py), so a replica's models, demo mode and warm-up are exactly the single
process's. In the service it runs on the thread that owns the device, never on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from app.settings import Settings
from catvton import CatVTONPipeline, WeightSources, load_pipeline
from catvton.loading import default_size
from catvton.masking import AutoMasker, load_automasker
from catvton.tiny import TINY_SIZE, write_tiny_weights

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str], None]
WARM_UP_STEPS = 2


@dataclass(frozen=True)
class Models:
    pipeline: CatVTONPipeline
    masker: AutoMasker
    # Demo mode: the production size the tiny model's results are upscaled to, so that an app
    # developer sees real image dimensions, byte sizes and aspect ratio. None: the pipeline's size.
    answer_size: tuple[int, int] | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        """(W, H) of every result image."""
        return self.answer_size or self.pipeline.size


def load_models(settings: Settings, progress: ProgressCallback) -> Models:
    """Resolve and load the pipeline and the masker as `settings` says; `progress` names each step.

    Raises WeightsNotFoundError / CheckpointMismatchError (and whatever torch raises) unchanged:
    the worker turns them into the reason /health reports.
    """
    weights_dir, size, answer_size = settings.weights_dir, settings.working_size, None
    if settings.demo:
        progress(f"writing tiny demo weights to {settings.demo_dir}")
        logger.warning("DEMO MODE: tiny random weights in %s; results are noise", settings.demo_dir)
        weights_dir = write_tiny_weights(Path(settings.demo_dir))
        if size is None:
            # The tiny networks' attention is full-resolution: 768x1024 would take minutes on a
            # CPU. They run at 96x128 and the result is upscaled to the production size.
            size, answer_size = TINY_SIZE, default_size(settings.attention_version)
            logger.warning(
                "DEMO MODE: the tiny model runs at %dx%d; answers are upscaled to %dx%d",
                *size,
                *answer_size,
            )
    progress("resolving weights")
    sources = WeightSources(
        weights_dir=weights_dir,
        base_model=settings.base_model,
        vae=settings.vae,
        catvton=settings.catvton,
        attention_version=settings.attention_version,
    )
    resolved = sources.resolve(require_masker=True)  # every missing file named before any load
    progress("loading the diffusion pipeline")
    pipeline = load_pipeline(resolved, device=settings.device, dtype=settings.dtype, size=size)
    progress("loading the AutoMasker")
    masker = load_automasker(
        resolved.catvton_dir,
        device=settings.masker_device or pipeline.device,
        dtype=settings.masker_dtype,
    )
    models = Models(pipeline=pipeline, masker=masker, answer_size=answer_size)
    if settings.warm_up == "on" or (settings.warm_up == "auto" and pipeline.device.type == "cuda"):
        progress("warming up")
        started = time.perf_counter()
        warm_up(models)
        logger.info("warm-up done in %.1f s", time.perf_counter() - started)
    return models


def warm_up(models: Models) -> None:
    """The masker once and a short inference at the working size, on plain synthetic images.

    On CUDA the first call of each kernel pays for lazy initialisation (module loading, cuDNN and
    cuBLAS autotuning, the caching allocator's first blocks): seconds that the first user would
    otherwise wait. Guidance above 1 so the batched (conditional + unconditional) pass runs too.
    """
    size = models.pipeline.size
    person_image = Image.new("RGB", size, (128, 128, 128))
    cloth_image = Image.new("RGB", size, (200, 60, 60))
    mask_image = models.masker(person_image, "upper").mask
    models.pipeline(
        person_image, cloth_image, mask_image, num_inference_steps=WARM_UP_STEPS, guidance_scale=2.5
    )
