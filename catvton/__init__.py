"""CatVTON virtual try-on: the model library (no web code).

Typical use::

    from catvton import WeightSources, load_pipeline

    pipeline = load_pipeline(WeightSources(weights_dir=Path("weights")).resolve())
    result = pipeline(person_image, cloth_image, mask_image, seed=42)
    result.image.save("out.png")
"""

from catvton.errors import (
    CatVTONError,
    CheckpointMismatchError,
    InferenceCanceledError,
    InvalidInputError,
    WeightsNotFoundError,
)
from catvton.loading import load_pipeline
from catvton.pipeline import CatVTONPipeline, DenoisingStep, TryOnResult
from catvton.weights import ResolvedWeights, WeightSources, download_weights

__all__ = [
    "CatVTONError",
    "CatVTONPipeline",
    "CheckpointMismatchError",
    "DenoisingStep",
    "InferenceCanceledError",
    "InvalidInputError",
    "ResolvedWeights",
    "TryOnResult",
    "WeightSources",
    "WeightsNotFoundError",
    "download_weights",
    "load_pipeline",
]
