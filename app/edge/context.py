"""What the middleware and the routes tell each other about one request, in one typed object.

The request-id middleware (outermost) creates it; access control names the client, the limits
leave the client's active-work slot, the routes record the usage (steps, cache use), the error
handlers the error code; the observer (app/observe/middleware.py) reads it all once the answer is
sent, for the usage record and the metrics. It lives once on the ASGI scope's state, so plain
ASGI middleware and routes reach the same object.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from app.access.limits import ActiveSlot

CONTEXT_KEY = "context"


@dataclass
class RequestContext:
    request_id: str
    client: str | None = None  # the API key's name, when access control named one
    active_slot: ActiveSlot | None = None  # --max-active-per-client: held until the work ends
    steps: int | None = None  # denoising steps asked for (usage record)
    cached: bool | None = None  # the result cache was consulted: True hit, False miss
    error_code: str | None = None  # the error envelope's code, when the answer is one


def request_context(connection: HTTPConnection | MutableMapping[str, Any]) -> RequestContext:
    """The request's context (a request or a raw ASGI scope); made on first use where the
    request-id middleware did not run (an app without it, in a test), with no id."""
    scope = connection.scope if isinstance(connection, HTTPConnection) else connection
    state: dict[str, Any] = scope.setdefault("state", {})
    context = state.get(CONTEXT_KEY)
    if context is None:
        context = state[CONTEXT_KEY] = RequestContext(request_id="")
    return context
