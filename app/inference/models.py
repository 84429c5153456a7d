"""The models and what they do for one try-on: setup once (`load_models`), then `Models.predict`.

Setup + predict, as LitServe and Cog shape it: the worker (app/inference/worker.py) only decides
when, and on which thread, a try-on runs; what runs is here. Two owners of the device use this
same code: the single process's `InferenceWorker` and each Ray Serve try-on replica
(app/cluster/replica.py, through the same worker), so a replica's models, demo mode and warm-up
are exactly the single process's. It runs on the thread that owns the device, never on the loop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch import get_num_threads

from app.inference.contract import TryOnJob, TryOnOutcome
from app.settings import Settings
from catvton import CatVTONPipeline, WeightSources, load_pipeline
from catvton.errors import InferenceCanceledError
from catvton.loading import default_size
from catvton.masking import AutoMasker, load_automasker, with_figure_masks
from catvton.pipeline import StepCallback
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

    @property
    def identity(self) -> str:
        """What makes a fixed-seed image reproducible: weights, precision, device type, size."""
        pipeline = self.pipeline
        return json.dumps(
            {
                "unet": dict(pipeline.unet.config).get("_name_or_path"),
                "vae": dict(pipeline.vae.config).get("_name_or_path"),
                "parameters": sum(parameter.numel() for parameter in pipeline.unet.parameters()),
                "dtype": str(pipeline.dtype),
                "device": pipeline.device.type,
                "size": pipeline.size,
            },
            sort_keys=True,
            default=str,
        )

    def predict(
        self,
        job: TryOnJob,
        *,
        on_stage: Callable[[str], None],
        on_step: StepCallback,
        stop: threading.Event,
    ) -> TryOnOutcome:
        """One try-on: mask unless given -> pipeline -> upscale (demo mode).

        `on_stage` hears "masking" (automatic mask only) and "denoising" as they begin, `on_step`
        each denoising step; `stop` set ends it before its next step (InferenceCanceledError).
        Raises what the pipeline raises (InvalidInputError, torch's out-of-memory error).
        """
        images, options = job.images, job.options
        if stop.is_set():  # canceled just as the worker took it: no device time at all
            raise InferenceCanceledError("canceled before it started")
        started = time.perf_counter()
        timings: dict[str, float] = {}
        mask_image, automatic_mask = images.mask_image, None
        if mask_image is None:
            on_stage("masking")
            mask_image = automatic_mask = self.masker(images.person_image, options.cloth_type).mask
            timings["mask"] = time.perf_counter() - started
        on_stage("denoising")
        result = self.pipeline(
            images.person_image,
            images.cloth_image,
            mask_image,
            num_inference_steps=options.num_inference_steps,
            guidance_scale=options.guidance_scale,
            seed=options.seed,
            repaint=options.repaint,
            on_step=on_step,
            stop=stop,
        )
        image = result.image
        if image.size != self.output_size:  # demo mode: a cheap upscale, a few ms
            image = image.resize(self.output_size, Image.Resampling.BICUBIC)
        # Prefixed: the pipeline's stage names (preprocess, encode, ...) recur in the route's.
        timings.update({f"pipeline_{stage}": seconds for stage, seconds in result.timings.items()})
        logger.info("inference done: seed %d, %d steps", result.seed, options.num_inference_steps)
        return TryOnOutcome(
            image=image,
            seed=result.seed,
            mask=result.mask,
            timings=timings,
            automatic_mask=automatic_mask,
        )


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
    # Here, on the thread that runs the models: OpenMP keeps the thread count per thread.
    pipeline = load_pipeline(
        resolved,
        device=settings.device,
        dtype=settings.dtype,
        size=size,
        num_threads=settings.intra_op_threads,
    )
    logger.info(
        "torch intra-op threads: %d (--torch-threads %s)", get_num_threads(), settings.torch_threads
    )
    progress("loading the AutoMasker")
    masker = load_automasker(
        resolved.catvton_dir,
        device=settings.masker_device or pipeline.device,
        dtype=settings.masker_dtype,
    )
    if settings.demo:  # random label maps make no readable mask: draw it from a standing figure
        masker = with_figure_masks(masker)
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
