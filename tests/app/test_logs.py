"""Log lines: escaping, request-id validation, library loggers written once in our format."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest
from process_helpers import REPO_ROOT
from starlette.types import Message, Receive, Scope, Send

from app.edge.request_id import REQUEST_ID_HEADER, RequestIdMiddleware
from app.observe.logs import escape_control_characters


def test_control_characters_are_escaped_and_plain_text_is_kept() -> None:
    escaped = escape_control_characters("GET /a\r\nb\x1b[31m\u2028")
    assert escaped == "GET /a\\x0d\\x0ab\\x1b[31m\\u2028"
    assert escape_control_characters("plain /path?q=é ok") == "plain /path?q=é ok"


@pytest.mark.parametrize("incoming", ["abc\n", "abc\r\nX: 1", "a" * 129, "", "a b"])
def test_a_request_id_that_is_not_a_whole_plain_token_is_replaced(incoming: str) -> None:
    """Issue 8.7: `re.match` with `$` accepted "abc\\n" (`$` matches before a final newline)."""
    sent: list[Message] = []

    async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def collect(message: Message) -> None:
        sent.append(message)

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(REQUEST_ID_HEADER.lower().encode(), incoming.encode("latin-1"))],
    }
    asyncio.run(RequestIdMiddleware(ok_app)(scope, nothing, collect))
    echoed = dict(sent[0]["headers"])[b"x-request-id"].decode()
    assert echoed != incoming and len(echoed) == 32  # a fresh uuid4 hex


LIBRARY_WARNINGS = """
import sys
sys.path.insert(0, ".")
# Imported first, as app.main imports them before python -m app configures logging: importing
# them is what installs their own stderr handlers.
from huggingface_hub.utils import logging as hf_logging
from diffusers.utils import logging as diffusers_logging
from app.observe.logs import configure_logging
configure_logging("info", sys.argv[1])
hf_logging.get_logger("huggingface_hub.file_download").warning("hub says: once")
diffusers_logging.get_logger("diffusers.models").warning("diffusers says: once")
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_library_warnings_are_written_once_in_our_format(log_format: str) -> None:
    """Issue 7.6: huggingface_hub's own stderr handler printed each warning a second time, raw;
    diffusers' handler kept its lines out of our format altogether."""
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LIBRARY_WARNINGS), log_format],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = [line for line in run.stderr.splitlines() if "says: once" in line]
    assert len(lines) == 2, run.stderr
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert [(r["logger"], r["level"]) for r in records] == [
            ("huggingface_hub.file_download", "WARNING"),
            ("diffusers.models", "WARNING"),
        ]
    else:
        assert "WARNING [-] huggingface_hub.file_download: hub says: once" in lines[0]
        assert "WARNING [-] diffusers.models: diffusers says: once" in lines[1]
