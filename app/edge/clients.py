"""Who a request belongs to: one name for limits, usage logs and idempotency scopes.

Access control (when keys are configured) names the client in the request's context; without
keys a client is its IP address (from `X-Forwarded-For` only through uvicorn's
`--forwarded-allow-ips`, which rewrites `scope["client"]` before we see it).
"""

from __future__ import annotations

import ipaddress

from starlette.requests import HTTPConnection

from app.edge.context import request_context

# A trusted proxy passed on something that is not an address (`unknown`, garbage): such requests
# share one identity, so they cannot pick a fresh one per request to escape their limits.
UNKNOWN_CLIENT = "unknown"


def client_id(connection: HTTPConnection) -> str:
    """The key's name when access control named the client, else its IP address."""
    if name := request_context(connection).client:
        return name
    return client_ip(connection.client.host if connection.client else None)


def client_ip(host: str | None) -> str:
    """`host` in one canonical spelling, or UNKNOWN_CLIENT.

    An IPv6 client is its /64: one home or phone gets a whole /64, so per-address limits would
    give it 2^64 fresh identities.
    """
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return UNKNOWN_CLIENT
    if isinstance(address, ipaddress.IPv6Address) and not address.is_loopback:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
