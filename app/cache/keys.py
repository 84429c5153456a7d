"""Digests of a try-on request: the Idempotency-Key fingerprint and the result cache's key.

Each file is hashed once (SHA-256, in the thread pool: hashlib releases the GIL on large buffers);
both digests are then cheap hashes over those hashes and the text fields.
"""

from __future__ import annotations

import hashlib
import json

from app.edge.schemas import TryOnOptions
from app.media.uploads import ReceivedForm
from catvton.pipeline import RANDOM_SEED

# Options that change the answer's shape, not its image: requests differing only in them share
# a cache entry.
IMAGE_NEUTRAL_OPTIONS = frozenset({"return_mask"})


def hash_files(form: ReceivedForm) -> dict[str, str]:
    """SHA-256 (hex) of each uploaded file by field name; run it in the thread pool."""
    return {name: hashlib.sha256(upload.data).hexdigest() for name, upload in form.files.items()}


def _digest(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def request_fingerprint(file_hashes: dict[str, str], fields: dict[str, str]) -> str:
    """The body as Idempotency-Key sees it: every text field as sent and every file byte."""
    return _digest({"files": file_hashes, "fields": fields})


def cache_key(
    file_hashes: dict[str, str], options: TryOnOptions, model_identity: str
) -> str | None:
    """The result cache's key, or None when the answer is not a function of the request (seed -1).

    Options are taken as validated (`upper_body` and `upper` share an entry); `model_identity`
    names the loaded weights, precision, device and working size.
    """
    if options.seed == RANDOM_SEED:
        return None
    chosen = options.model_dump(exclude=set(IMAGE_NEUTRAL_OPTIONS))
    return _digest({"files": file_hashes, "options": chosen, "model": model_identity})
