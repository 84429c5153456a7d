"""Request ids: from `X-Request-ID` or generated, echoed in the response, stamped on every log line.

The id lives in a context variable, which asyncio tasks, Starlette's thread pool and the device
worker (it runs each job in the submitting request's context) all carry along, so a log line written
anywhere while serving a request names that request without passing the id around.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.edge.context import CONTEXT_KEY, RequestContext

REQUEST_ID_HEADER = "X-Request-ID"
# Every response (README, "Tenants"): a browser never guesses a type from the bytes, so a
# stored result or an error body is never run as a script or page.
NOSNIFF = (b"x-content-type-options", b"nosniff")
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# A client-chosen id goes into logs and headers: accept only short, plain tokens, the WHOLE id
# (fullmatch: with `re.match` and `$`, "abc\n" would pass, `$` matching before a final newline).
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def current_request_id() -> str | None:
    return _request_id.get()


def bind_request_id(request_id: str | None) -> None:
    """Carry a request's id into work done for it elsewhere (a try-on replica's logs)."""
    _request_id.set(request_id)


def accepted_request_id(incoming: str) -> str:
    """The client's id when it is a short plain token, else a new one."""
    return incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Plain ASGI middleware (no BaseHTTPMiddleware, which would buffer and re-wrap the request).

    The outermost layer: it also stamps `X-Content-Type-Options: nosniff` on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = accepted_request_id(incoming)
        # Each request runs in its own task, so the value never leaks into another request.
        _request_id.set(request_id)
        scope.setdefault("state", {})[CONTEXT_KEY] = RequestContext(request_id=request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                if not any(name.lower() == NOSNIFF[0] for name, _ in headers):
                    headers.append(NOSNIFF)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
