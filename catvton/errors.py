"""Library exceptions. They carry no HTTP meaning: app/edge/errors.py maps them to status codes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# The command every "weights missing" message points to (it fetches every file we read).
DOWNLOAD_COMMAND = "python -m catvton download DIR"


class CatVTONError(Exception):
    """Base class of every error this library raises on purpose."""


class WeightsNotFoundError(CatVTONError, FileNotFoundError):
    """A weight file or folder is missing.

    The message names the missing path and the command that fetches it, because the person
    reading it (a server operator, a CLI user) needs the fix, not a traceback.
    """

    def __init__(self, missing: str | Path, *, fix: str) -> None:
        self.missing = str(missing)
        self.fix = fix
        super().__init__(f"missing weights: {self.missing}. {fix}")


class CheckpointMismatchError(CatVTONError, ValueError):
    """A checkpoint does not match the network it is loaded into, or cannot be read at all.

    Raised instead of loading non-strictly, which silently leaves random weights in place.
    ``unreadable`` is the reader's reason for a corrupt, truncated or malformed file.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
        unreadable: str | None = None,
    ) -> None:
        self.source = str(source)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.unreadable = unreadable
        if unreadable is not None:
            super().__init__(f"checkpoint {self.source} cannot be read: {unreadable}")
            return
        parts = []
        for label, keys in (
            ("missing keys", self.missing),
            ("unexpected keys", self.unexpected),
            ("mis-shaped tensors", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:10]) + (
                    f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
                )
                parts.append(f"{label}: {shown}")
        super().__init__(
            f"checkpoint {self.source} does not match the network; " + "; ".join(parts)
        )


class InvalidInputError(CatVTONError, ValueError):
    """An argument or an image that the library cannot work with; the message names the argument."""


class InferenceCanceledError(CatVTONError):
    """A try-on stopped at a denoising step because its caller asked (the ``stop`` event)."""
