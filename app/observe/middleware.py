"""The per-request observer: metrics and the usage record (the access line) of every request.

Pure ASGI (no BaseHTTPMiddleware: it would buffer streamed and SSE responses). It sits just inside
the request-id middleware, outside access control and limits, so the requests those refuse (401,
429) are counted, timed and logged like any other, under their route's template.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.edge.clients import client_id
from app.edge.context import request_context
from app.observe.logs import log_usage
from app.observe.metrics import ServiceMetrics, route_template

# Monitors and Prometheus poll these every few seconds: their access lines go to DEBUG, not INFO.
QUIET_PATHS = frozenset({"/health", "/metrics"})


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context = request_context(scope)
        status = 0
        bytes_in = bytes_out = 0

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        except Exception:
            # ServerErrorMiddleware, further out, answers 500 with the envelope.
            status = status or 500
            context.error_code = context.error_code or "internal_error"
            raise
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            self.metrics.observe_request(route, scope["method"], status, seconds, context)
            usage = {
                "client": client_id(HTTPConnection(scope)),
                "route": route,
                "status": status,
                "error": context.error_code if status >= 400 else None,
                "seconds": round(seconds, 4),
                "steps": context.steps,
                "cached": context.cached,
                "bytesIn": bytes_in,
                "bytesOut": bytes_out,
            }
            level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
            log_usage(level, scope["method"], scope["path"], usage)
