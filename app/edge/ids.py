"""Ids that are capabilities: a job's and a stored image's.

With keys off, knowing an id is enough to read, cancel or delete what it names, so ids are 128
random bits (`secrets.token_urlsafe(16)`: 22 URL-safe characters) and log lines print only their
first characters. The pattern lets a route refuse a malformed id (404) without a store lookup.
"""

from __future__ import annotations

import re
import secrets

ID_BYTES = 16
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")
LOGGED_ID_CHARS = 8


def new_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


def short_id(an_id: str) -> str:
    """What a log line may print of an id: too little to use it (README, "Tenants")."""
    return an_id[:LOGGED_ID_CHARS]
