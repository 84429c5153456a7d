"""The one place that knows HTTP status codes: the JSON error envelope and its handlers.

Every error the client sees is `{"success": false, "message", "error", "requestId"}`: the Expo app
shows `message`, branches on the stable `error` code, and support greps the logs for `requestId`.
Handlers here map the service's errors (app/edge/errors.py), FastAPI's validation errors, the
library's `InvalidInputError`, unknown routes and unexpected crashes into that envelope, so no
other module builds an error response.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from app.edge.context import request_context
from app.edge.errors import InvalidFieldError, ModelsLoadingError, ServiceError
from app.edge.request_id import REQUEST_ID_HEADER, current_request_id
from app.edge.schemas import ErrorResponse
from catvton.errors import InvalidInputError

logger = logging.getLogger(__name__)

# The methods a route can serve, in the order an Allow header lists them (CONNECT and TRACE never).
HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


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
