"""What goes in and out over HTTP: the try-on form's options, the try-on response, the health body.

Field names follow the published contract (README, "API") exactly (the Expo app is written
against them): camelCase in the try-on response (`imageBase64`, `requestId`), snake_case in the
form and in /health (`model_loaded`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from catvton.errors import InvalidInputError
from catvton.masking import CLOTH_TYPE_NAMES, CLOTH_TYPES, parse_cloth_type
from catvton.pipeline import MAX_SEED, RANDOM_SEED

OutputFormat = Literal["png", "jpeg", "webp"]
# What the form accepts for output_format (in any case): "jpg" is read as "jpeg".
OUTPUT_FORMAT_NAMES = ("png", "jpeg", "jpg", "webp")
HealthStatus = Literal["ok", "loading", "error", "draining"]
FILE_SCHEMA = {"type": "string", "format": "binary"}


def multipart_body(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads its multipart body itself (streamed and capped, not
    by FastAPI), so that /docs learns the body's shape from here."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


class TryOnOptions(BaseModel):
    """The text fields of POST /api/try-on; each name is the pipeline argument it becomes."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    # The schema lists every accepted name, so a client generated from /openapi.json gets the
    # real set (a free string let it send "hat"); the server also takes them in any case.
    cloth_type: str = Field(
        "upper",
        description=f"one of {', '.join(CLOTH_TYPES)}; also upper_body/tops, lower_body/bottoms, "
        "dresses/one-pieces (case-insensitive)",
        json_schema_extra={"enum": list(CLOTH_TYPE_NAMES)},
    )
    num_inference_steps: int = Field(50, ge=10, le=100, description="denoising steps")
    guidance_scale: float = Field(2.5, ge=0.0, le=7.5, description="classifier-free guidance")
    seed: int = Field(42, ge=RANDOM_SEED, le=MAX_SEED, description="-1 picks a random seed")
    repaint: bool = Field(False, description="blend the original photo back outside the mask")
    output_format: OutputFormat = Field(
        "png",
        description="png, jpeg (or jpg) or webp (case-insensitive)",
        json_schema_extra={"enum": list(OUTPUT_FORMAT_NAMES)},
    )
    return_mask: bool = Field(
        False, description="also answer maskBase64: the PNG mask the model used (white = repainted)"
    )

    @classmethod
    def allowed_values(cls, name: str) -> str | None:
        """The range of a numeric field, read from its constraints, e.g. "10..100"."""
        field = cls.model_fields.get(name)
        if field is None:
            return None
        bounds = {type(rule).__name__: rule for rule in field.metadata}
        if "Ge" in bounds and "Le" in bounds:
            return f"{bounds['Ge'].ge}..{bounds['Le'].le}"
        return None

    @model_validator(mode="before")
    @classmethod
    def drop_blank_fields(cls, data: Any) -> Any:
        """Form clients send unset fields as empty strings: treat those as absent (the default)."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value != ""}
        return data

    @field_validator("cloth_type")
    @classmethod
    def canonical_cloth_type(cls, value: str) -> str:
        try:
            return parse_cloth_type(value)
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("output_format", mode="before")
    @classmethod
    def normalise_output_format(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            return "jpeg" if value == "jpg" else value
        return value


class TryOnResponse(BaseModel):
    """HTTP 200 of POST /api/try-on: the contract's three fields first, then the extras."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    success: Literal[True] = True
    image_base64: str = Field(description="the result, base64 without a data: prefix")
    message: str = "Try-on completed successfully"
    mime_type: str = Field(description="image/png, image/jpeg or image/webp")
    width: int
    height: int
    seed: int = Field(description="the seed actually used: send it back to reproduce the image")
    request_id: str
    timings_ms: dict[str, float] = Field(description="milliseconds per stage")
    cached: bool = Field(False, description="answered from the result cache (fixed seeds)")
    mask_base64: str | None = Field(
        None, description="with return_mask: the PNG mask the model used, white = repainted"
    )


class ErrorResponse(BaseModel):
    """Every error: see app/edge/errors.py."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    success: Literal[False] = False
    message: str
    error: str = Field(description="stable machine-readable code, e.g. gpu_busy")
    request_id: str | None = None


class GpuMemoryReport(BaseModel):
    name: str
    allocated_mb: float
    reserved_mb: float
    total_mb: float


class ReplicaHealth(BaseModel):
    """One try-on replica in the cluster's /health."""

    id: str
    status: HealthStatus
    error: str | None
    inferences_served: int


class HealthResponse(BaseModel):
    """GET /health: a plain state word first, then what a monitor wants to graph."""

    status: HealthStatus
    model_loaded: bool
    message: str
    error: str | None = Field(None, description="why loading failed, and the fix")
    demo: bool = Field(description="true: tiny random weights, images are noise")
    device: str | None
    dtype: str | None
    size: tuple[int, int] | None = Field(
        description="size of the result images (width, height): the working size; in demo mode "
        "the production size the tiny model's results are upscaled to"
    )
    queue_depth: int = Field(description="requests waiting, not counting the one running")
    receiving: int = Field(
        description="requests still uploading or decoding; they count toward queue_capacity"
    )
    queue_capacity: int
    busy: bool = Field(description="an inference is running")
    inferences_served: int
    gpu: GpuMemoryReport | None = Field(
        description="CUDA memory (in the cluster: summed over the try-on replicas); null without"
    )
    uptime_s: float
    # Cluster mode only (app/cluster): absent from the single process's answer.
    replicas: list[ReplicaHealth] | None = Field(
        None, description="cluster mode: each try-on replica, as it last reported"
    )
    redis: str | None = Field(None, description="cluster mode: ok, or why Redis cannot be reached")
