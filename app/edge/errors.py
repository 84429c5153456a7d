"""Every error a client can get: a status, a stable code and a message, one class each.

Raise these anywhere in app/; app/edge/envelope.py is the one place that turns them (and
FastAPI's, Starlette's and the library's own errors) into the JSON envelope a client reads.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """An error with a fixed status, a stable code and a message for the person using the app."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retry_after_s: ClassVar[int | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}  # e.g. WWW-Authenticate, RateLimit fields


class ModelsLoadingError(ServiceError):
    status_code = 503
    code = "models_loading"
    retry_after_s = 10

    def __init__(self, detail: str = "") -> None:
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"Models are still loading{suffix}; try again in a few seconds.")


class ModelLoadFailedError(ServiceError):
    """Loading failed for good; the message carries the reason and the fix, as /health does."""

    status_code = 503
    code = "model_load_failed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"Model loading failed: {reason}")


class WorkerStoppedError(ServiceError):
    """The device thread died (a bug); nothing more can be served until a restart."""

    status_code = 503
    code = "worker_stopped"

    def __init__(self, reason: str) -> None:
        super().__init__(f"The inference worker stopped: {reason}")


class GPUBusyError(ServiceError):
    status_code = 503
    code = "gpu_busy"
    retry_after_s = 5

    def __init__(self, detail: str) -> None:
        super().__init__(f"GPU is busy processing another request ({detail}); try again shortly.")


class GPUOutOfMemoryError(ServiceError):
    status_code = 503
    code = "gpu_out_of_memory"

    def __init__(self) -> None:
        super().__init__(
            "GPU out of memory during inference; the cache was emptied, try again "
            "(a smaller --size or fewer concurrent GPU users helps if it repeats)."
        )


class InvalidFieldError(ServiceError):
    status_code = 422
    code = "invalid_field"


class UnsupportedImageError(ServiceError):
    status_code = 415
    code = "unsupported_image"


class ImageTooSmallError(ServiceError):
    """An image too small for the models to use (app.media.decoding.MIN_IMAGE_SIDE): a 1x1 photo was
    accepted and "tried on" before."""

    status_code = 422
    code = "image_too_small"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    code = "payload_too_large"


class UploadTimeoutError(ServiceError):
    """The body arrived too slowly; the connection is closed, so its socket is freed too."""

    status_code = 408
    code = "upload_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["Connection"] = "close"  # uvicorn closes the socket after sending


class UnauthorizedError(ServiceError):
    """No key, or not one of ours: RFC 6750's challenge tells the client to send a Bearer key."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, key_sent: bool) -> None:
        super().__init__(message)
        self.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if key_sent else "Bearer"


class RateLimitedError(ServiceError):
    """Past `--rate-limit`; `headers` carry Retry-After and the RateLimit fields."""

    status_code = 429
    code = "rate_limited"


class TooManyActiveRequestsError(ServiceError):
    """Past `--max-active-per-client`: the client's queued and running work must finish first."""

    status_code = 429
    code = "too_many_active_requests"
    retry_after_s = 5


class TooManyStreamsError(ServiceError):
    """Past `--max-streams-per-client`: the client must close one of its event streams first."""

    status_code = 429
    code = "too_many_streams"
    retry_after_s = 5

    def __init__(self, max_streams: int) -> None:
        super().__init__(
            f"This client already has {max_streams} job event streams open (at most "
            f"{max_streams}); close one, or poll the job document instead."
        )


class ClientDisconnectedError(ServiceError):
    """The client went away while its request waited; nobody reads this response (499, as nginx)."""

    status_code = 499
    code = "client_disconnected"


class ShuttingDownError(ServiceError):
    """The server is stopping (draining after SIGTERM/SIGINT): nothing new is taken, and what
    still waits when the drain times out is refused; another instance, or this one restarted,
    serves the retry."""

    status_code = 503
    code = "shutting_down"
    retry_after_s = 5

    def __init__(self, detail: str = "") -> None:
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"The server is shutting down{suffix}; try again in a few seconds.")


# -- jobs -------------------------------------------------------------------------------------


class JobNotFoundError(ServiceError):
    status_code = 404
    code = "job_not_found"

    def __init__(self) -> None:
        super().__init__("No such job: check the job id (ids of deleted jobs are forgotten).")


class JobExpiredError(ServiceError):
    status_code = 410
    code = "job_expired"

    def __init__(self) -> None:
        super().__init__(
            "This job and its result were forgotten (expired or evicted); submit it again."
        )


class JobNotFinishedError(ServiceError):
    status_code = 409
    code = "job_not_finished"
    retry_after_s = 1

    def __init__(self, status: str) -> None:
        super().__init__(f"The job is {status}; poll its status and fetch this once it succeeded.")


class PreviewNotReadyError(ServiceError):
    status_code = 404
    code = "preview_not_ready"
    retry_after_s = 1

    def __init__(self) -> None:
        super().__init__(
            "No preview yet: the job has not reached its first preview step (or previews are "
            "off); poll the job document, its preview field says when one exists."
        )


class JobCanceledError(ServiceError):
    status_code = 409
    code = "canceled"

    def __init__(self, message: str = "The job was canceled; submit it again.") -> None:
        super().__init__(message)


class JobFailedError(ServiceError):
    """A failed job's own error, answered with the status its synchronous request would have got
    (e.g. 503 gpu_out_of_memory): the code and status are the job's, not fixed per class."""

    def __init__(
        self, code: str, message: str, status_code: int, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]
        self.status_code = status_code  # type: ignore[misc]
        self.retry_after_s = retry_after_s  # type: ignore[misc]


class IdempotencyKeyReusedError(ServiceError):
    status_code = 422
    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was already used with a different request body; "
            "use a new key for a new try-on."
        )


# -- stored images (app/images) -----------------------------------------------------------------


class ImageNotFoundError(ServiceError):
    """Also for another client's image (keys on): its id must tell nothing (README, "Tenants")."""

    status_code = 404
    code = "image_not_found"

    def __init__(self, field: str | None = None) -> None:
        named = f"{field}: " if field else ""
        super().__init__(
            f"{named}no such stored image: check the image id (ids of deleted images are "
            "forgotten); upload it again with POST /api/try-on/images."
        )


class ImageExpiredError(ServiceError):
    status_code = 410
    code = "image_expired"

    def __init__(self, field: str | None = None) -> None:
        named = f"{field}: " if field else ""
        super().__init__(
            f"{named}this stored image was forgotten (unused for too long, or evicted to make "
            "room); upload it again with POST /api/try-on/images."
        )
