"""Who a request belongs to: one name for limits, usage logs and idempotency scopes.

Access control (when keys are configured) stores the key's NAME in `request.state.client`; without
keys a client is its IP address (from `X-Forwarded-For` only through uvicorn's
`--forwarded-allow-ips`, which rewrites `scope["client"]` before we see it).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

CLIENT_STATE_KEY = "client"


def client_id(connection: HTTPConnection) -> str:
    """The key's name when access control named the client, else its IP address."""
    name = connection.scope.get("state", {}).get(CLIENT_STATE_KEY)
    if name:
        return str(name)
    return connection.client.host if connection.client else "unknown"
