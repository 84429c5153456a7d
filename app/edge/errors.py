"""The one place that knows HTTP status codes: service errors and the JSON error envelope.

Every error the client sees is `{"success": false, "message", "error", "requestId"}`: the Expo app
shows `message`, branches on the stable `error` code, and support greps the logs for `requestId`.
Handlers here map FastAPI's validation errors, the library's `InvalidInputError`, unknown routes and
unexpected crashes into that envelope, so no other module builds an error response.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from app.edge.context import request_context
from app.edge.request_id import REQUEST_ID_HEADER, current_request_id
from app.edge.schemas import ErrorResponse
from catvton.errors import InvalidInputError

logger = logging.getLogger(__name__)

# The methods a route can serve, in the order an Allow header lists them (CONNECT and TRACE never).
HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


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
    """Also for another client's image (keys on): its id must tell nothing (operations.md)."""

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


# For /openapi.json: what each error status means. Every route declares each status it can answer,
# with the envelope as its body (`error_responses`), so a generated client can read the error.
ERROR_DESCRIPTIONS = {
    401: "a missing or unknown API key (when the server is started with --api-keys-file)",
    404: "no such resource (jobs: job_not_found, also for a malformed id; preview_not_ready; "
    "images: image_not_found)",
    408: "the upload arrived too slowly (the connection is closed)",
    409: "jobs: job_not_finished (Retry-After), or canceled",
    410: "job_expired / image_expired: the job (its result) or the stored image was forgotten "
    "(answered for 24 h)",
    413: "an upload over the byte cap or the pixel cap",
    415: "a file that is not a decodable JPEG, PNG, WebP or HEIC image",
    429: "over the rate limit, the per-client active requests or event streams (Retry-After)",
    422: "a missing field, a malformed form or a value out of range; an image too small to use "
    "(image_too_small)",
    500: "an unexpected error (details in the server log)",
    503: "models loading or failed to load, GPU busy (Retry-After), GPU out of memory",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` declaring `statuses` with the error envelope (see ERROR_DESCRIPTIONS)."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


def describe_validation_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic error dicts -> one line per field, "field: what is wrong (got value)"."""
    lines = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
        field = ".".join(location) or "request"
        if error.get("type") == "missing":
            lines.append(f"{field}: required")
            continue
        if error.get("type") == "value_error":  # our own validators already say field and value
            reason = str(error.get("ctx", {}).get("error", error.get("msg")))
            lines.append(reason if reason.startswith(field) else f"{field}: {reason}")
            continue
        got = error.get("input")
        got_text = f" (got {got!r})" if isinstance(got, str | int | float) else ""
        lines.append(f"{field}: {error.get('msg', 'invalid value')}{got_text}")
    return "; ".join(lines)


def error_response(
    request: Request, status_code: int, code: str, message: str, retry_after_s: int | None = None
) -> JSONResponse:
    """The envelope; the request id goes into both body and header, also for crashes.

    The code is also left on the request's context, for the usage record and the metrics.
    """
    context = request_context(request)
    context.error_code = code
    request_id = context.request_id or current_request_id()
    headers = {REQUEST_ID_HEADER: request_id} if request_id else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    body = {"success": False, "message": message, "error": code, "requestId": request_id}
    return JSONResponse(body, status_code=status_code, headers=headers)


async def handle_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    response = error_response(request, exc.status_code, exc.code, exc.message, exc.retry_after_s)
    response.headers.update(exc.headers)
    return response


async def send_error(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
    """The envelope from pure ASGI middleware that refuses a request before any route runs."""
    response = await handle_service_error(Request(scope, receive), error)
    await response(scope, receive, send)


async def handle_request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = describe_validation_errors(exc.errors())
    return error_response(request, InvalidFieldError.status_code, InvalidFieldError.code, message)


async def handle_invalid_input(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, InvalidFieldError.status_code, InvalidFieldError.code, str(exc))


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
    response = error_response(request, exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})
    if "Allow" in response.headers:  # a route's 405 (StaticFiles' own sends none)
        response.headers["Allow"] = allowed_methods(request)
    return response


def allowed_methods(request: Request) -> str:
    """The Allow header of a 405: every method some route serves at this path.

    Starlette's 405 names the methods of the first route whose path matched, so a path served by
    two routes (a job's GET and its DELETE) answered `Allow: GET`. The router itself is
    asked, once per method, so routes of included routers count as they match.
    """
    routes = request.app.router.routes

    def served(method: str) -> bool:
        asked = {**request.scope, "method": method}
        return any(route.matches(asked)[0] is Match.FULL for route in routes)

    return ", ".join(filter(served, HTTP_METHODS))


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """500 with a generic message: the details go to the log only, never to the client.

    Starlette re-raises the exception after this response, so uvicorn logs the traceback once.
    """
    logger.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
    message = "Internal server error; the details are in the server log under this requestId."
    return error_response(request, 500, ServiceError.code, message)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, handle_service_error)
    app.add_exception_handler(RequestValidationError, handle_request_validation)
    app.add_exception_handler(InvalidInputError, handle_invalid_input)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(Exception, handle_unexpected)


def health_status_code(state: str) -> int:
    """/health: 200 only when a try-on can be served, so a load balancer can route on the status."""
    return 200 if state == "ok" else 503


def health_headers(state: str) -> dict[str, str]:
    if state == "loading":
        return {"Retry-After": str(ModelsLoadingError.retry_after_s)}
    return {}
