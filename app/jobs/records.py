"""A try-on job as stored: plain, JSON-serialisable data (a Redis store keeps the same JSON).

The record is what the service knows about a job; `app.jobs.documents` renders the public job
document from it (camelCase, ISO times, the ETA as seconds from now). Records are immutable
snapshots: a store replaces them, so a reader never sees half an update.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
JobStage = Literal["queued", "masking", "denoising", "decoding", "encoding"]
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class JobError(BaseModel):
    """Why a job failed or was canceled: the envelope's code and message, and the status the
    synchronous route would have answered (the result route answers with it)."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    status_code: int
    retry_after_s: int | None = None


class JobOutput(BaseModel):
    """What is known about a succeeded job's result; the bytes live beside the record."""

    model_config = ConfigDict(frozen=True)

    mime_type: str
    width: int
    height: int
    seed: int
    timings_ms: dict[str, float]


class JobRecord(BaseModel):
    """One job. Times are Unix seconds (`time.time()`); `version` grows with every change."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    client: str  # app.edge.clients.client_id: idempotency keys are scoped by it
    request_id: str  # of the submitting request: the logs of the job's work carry it
    status: JobStatus = "queued"
    stage: JobStage | None = "queued"
    queue_position: int | None = None
    step: int = 0
    total_steps: int
    preview_step: int | None = None  # the step of the latest preview kept beside the record
    eta_at: float | None = None  # when the job should be done, by the worker's estimate
    cancel_requested: bool = False
    cached: bool = False
    return_mask: bool = False
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    output: JobOutput | None = None
    error: JobError | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None  # of the submitted body: a reused key must match it
    version: int = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES
