"""Log lines: one handler on the root logger, text or JSON, one line per event, request ids on all.

Every logger (ours, uvicorn's, huggingface_hub's, diffusers') ends at the root handler configured
here, so each event is written once, in one format. A client controls parts of some messages (the
path, headers quoted in errors): control characters in a message are escaped, so nobody can forge a
separate, genuine-looking line; in text mode only a traceback continues on further lines, and those
are indented, so every line that starts at column 0 is a real record.
"""

from __future__ import annotations

import datetime
import logging
import re
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from app.edge.request_id import current_request_id

LogFormat = Literal["text", "json"]
# The usage record's fields (README, "Logs"), written by the access logger once per request.
USAGE_FIELDS = (
    *("client", "route", "status", "error", "seconds"),
    *("steps", "cached", "bytesIn", "bytesOut"),
)
USAGE_LOGGER = "app.access"
# Libraries that install their own stderr handler: without this, each of their lines is printed
# twice (once raw by their handler, once through ours) or, for diffusers, only raw.
LIBRARY_LOGGERS = ("huggingface_hub", "diffusers")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s [%(request_id_text)s] %(name)s: %(message)s"
# In text mode the route, status and seconds are already in the access line's message.
TEXT_USAGE_FIELDS = tuple(
    name for name in USAGE_FIELDS if name not in ("route", "status", "seconds")
)
# C0 and C1 controls, DEL and the Unicode line/paragraph separators: anything a terminal or a log
# shipper could take as the end of a line.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control_characters(text: str) -> str:
    r"""`\n` -> `\x0a`, U+2028 -> `\u2028`: the text stays on one line, the bytes stay visible."""
    if not _CONTROL_CHARACTERS.search(text):
        return text
    return _CONTROL_CHARACTERS.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` (None outside a request) to every record a handler formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class TextFormatter(logging.Formatter):
    """The human format: escaped message, usage fields appended, indented traceback lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control_characters(record.message)
        if record.name == USAGE_LOGGER and hasattr(record, "client"):
            fields = (f"{name}={getattr(record, name)}" for name in TEXT_USAGE_FIELDS)
            record.message += " " + escape_control_characters(" ".join(fields))
        record.request_id_text = getattr(record, "request_id", None) or "-"
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\n    ")


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line: time (ISO 8601, UTC, ms), level, logger, message, requestId, and
    whatever `extra` a record carries (the usage fields). `json.dumps` escapes every control
    character, so a record can never span two lines."""

    def __init__(self) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "message", "request_id"],
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "request_id": "requestId",
            },
            rename_fields_keep_missing=True,
            # uvicorn's ANSI-coloured copy of its message: noise in a log shipper.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """One stream handler on the root logger; every library logger propagates into it, once."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdLogFilter())
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
    # Library warnings (Pillow's "Corrupt EXIF data", ...) go through the same handler, so they
    # carry the request id instead of reaching stderr bare.
    logging.captureWarnings(True)


def log_usage(level: int, method: str, path: str, usage: dict[str, Any]) -> None:
    """The access line of a finished request, carrying its usage record (USAGE_FIELDS)."""
    logging.getLogger(USAGE_LOGGER).log(
        level,
        "%s %s -> %s in %.0f ms",
        method,
        path,
        usage["status"],
        usage["seconds"] * 1000,
        extra=usage,
    )
