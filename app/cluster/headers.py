"""Ray's client-controlled request headers, dropped before the app sees the request.

Ray 2.60's proxy lets any client set `x-request-timeout-seconds` (cut its own request short, or
lift the server's timeout) and `x-request-disconnect-disabled` (keep its work running after it hung
up). The proxy reads them before the ingress runs, so the ingress cannot unread them; what it does
is make them mean nothing: the routes watch the client's connection themselves (a queued try-on of
a client that left is dropped either way), a job never depends on its submit connection, and these
headers are removed here so that no code in the app, or any handle call it makes, passes them on.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

RAY_CLIENT_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})


class DropRayHeadersMiddleware:
    """Pure ASGI (streams and SSE pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if any(name in RAY_CLIENT_HEADERS for name, _ in headers):
                kept = [(name, value) for name, value in headers if name not in RAY_CLIENT_HEADERS]
                scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)
