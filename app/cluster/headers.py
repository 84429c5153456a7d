"""Headers at the cluster's edge: Ray's client-controlled ones removed, one request id, the
answering ingress replica named.

Ray 2.60's HTTP proxy lets any client set `x-request-timeout-seconds` (cut its request short, or
lift the server's timeout) and `x-request-disconnect-disabled` (keep its work running after it hung
up). The proxy reads them before any deployment runs, so they are removed in the proxy itself:
`proxy_middlewares` is what `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` names on every node (the
demo sets it; README). The ingress applies the same middleware again, so that without that
variable the app still never sees them. The request id is settled here too, by the app's own rule
(`accepted_request_id`), so the proxy's logs, the replicas' and the answer carry one id; the proxy
appends its copy of it to each answer, which is dropped.

The ingress names itself in `X-Served-By`, for operators reading a trace and for the tests that
prove a job is read and canceled through another replica than its own.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.edge.request_id import REQUEST_ID_HEADER, accepted_request_id

RAY_CLIENT_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})
SERVED_BY_HEADER = "X-Served-By"
REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()


class EdgeHeadersMiddleware:
    """Pure ASGI (streams and SSE pass through untouched)."""

    def __init__(self, app: ASGIApp, served_by: str | None = None) -> None:
        self.app = app
        self.served_by = served_by

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        kept = []
        for name, value in scope["headers"]:
            if name == REQUEST_ID_KEY:
                incoming = value.decode("latin-1")
            elif name not in RAY_CLIENT_HEADERS:
                kept.append((name, value))
        kept.append((REQUEST_ID_KEY, accepted_request_id(incoming).encode()))
        scope = {**scope, "headers": kept}

        async def send_edited(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                request_ids = response_headers.getlist(REQUEST_ID_HEADER)
                if len(request_ids) > 1:
                    del response_headers[REQUEST_ID_HEADER]
                    response_headers[REQUEST_ID_HEADER] = request_ids[0]
                if self.served_by is not None:
                    response_headers[SERVED_BY_HEADER] = self.served_by
            await send(message)

        await self.app(scope, receive, send_edited)


def proxy_middlewares() -> list[Middleware]:
    """For `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=app.cluster.headers:proxy_middlewares`."""
    return [Middleware(EdgeHeadersMiddleware)]
