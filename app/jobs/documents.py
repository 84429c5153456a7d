"""The public job document (README, "Try-on jobs"), rendered from a stored record when sent."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from app.jobs.records import JobRecord, JobStage, JobStatus

JOBS_PATH = "/api/try-on/jobs"


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class JobProgressDocument(_Camel):
    step: int = Field(description="denoising steps done; only grows")
    total_steps: int
    fraction: float = Field(description="step / totalSteps; 1.0 once succeeded")


class JobResultDocument(_Camel):
    image_url: str
    mask_url: str
    mime_type: str
    width: int
    height: int
    seed: int
    timings_ms: dict[str, float]


class JobPreviewDocument(_Camel):
    url: str = Field(description="GET it (If-None-Match) for the JPEG; 304 until a newer one")
    step: int = Field(description="the denoising step it shows; grows with each new preview")


class JobErrorDocument(_Camel):
    error: str = Field(description="e.g. gpu_out_of_memory, canceled, shutting_down")
    message: str


class JobDocument(_Camel):
    success: Literal[True] = True
    job_id: str
    status: JobStatus
    queue_position: int | None = Field(
        description="requests of either door ahead of this one (0 = next); null unless queued"
    )
    stage: JobStage | None
    progress: JobProgressDocument
    eta_seconds: float | None = Field(description="estimate from measured step times, or null")
    cancel_requested: bool
    cached: bool
    request_id: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    expires_at: str | None = Field(description="when the record and result are forgotten")
    result: JobResultDocument | None
    error: JobErrorDocument | None
    preview: JobPreviewDocument | None = Field(
        description="the latest preview of the result while it denoises (kept after the job "
        "ends, until the record goes); null before the first or with previews off"
    )


def iso_time(seconds: float | None) -> str | None:
    """Unix seconds -> `2026-12-02T10:00:00.120Z`."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def preview_url(job_id: str) -> str:
    return f"{JOBS_PATH}/{job_id}/preview"


def preview_document(record: JobRecord) -> JobPreviewDocument | None:
    if record.preview_step is None:
        return None
    return JobPreviewDocument(url=preview_url(record.job_id), step=record.preview_step)


def render(record: JobRecord) -> JobDocument:
    total = max(record.total_steps, 1)
    eta = None if record.eta_at is None else round(max(record.eta_at - time.time(), 0.0), 1)
    result = None
    if record.status == "succeeded" and record.output is not None:
        output = record.output
        result = JobResultDocument(
            image_url=f"{JOBS_PATH}/{record.job_id}/result",
            mask_url=f"{JOBS_PATH}/{record.job_id}/mask",
            mime_type=output.mime_type,
            width=output.width,
            height=output.height,
            seed=output.seed,
            timings_ms=output.timings_ms,
        )
    error = None
    if record.error is not None:
        error = JobErrorDocument(error=record.error.code, message=record.error.message)
    return JobDocument(
        job_id=record.job_id,
        status=record.status,
        queue_position=record.queue_position if record.status == "queued" else None,
        stage=None if record.final else record.stage,
        progress=JobProgressDocument(
            step=record.step,
            total_steps=record.total_steps,
            fraction=1.0 if record.status == "succeeded" else round(record.step / total, 4),
        ),
        eta_seconds=None if record.final else eta,
        cancel_requested=record.cancel_requested,
        cached=record.cached,
        request_id=record.request_id,
        created_at=iso_time(record.created_at),
        started_at=iso_time(record.started_at),
        finished_at=iso_time(record.finished_at),
        expires_at=iso_time(record.expires_at),
        result=result,
        error=error,
        preview=preview_document(record),
    )


def render_json(record: JobRecord) -> str:
    return render(record).model_dump_json(by_alias=True)
