"""`--log-format json` from a real `python -m app` process: one object a line, usage records."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
from http_helpers import FAST, multipart, post_try_on, try_on_parts
from process_helpers import app_process

from app.observe.logs import USAGE_FIELDS

pytestmark = pytest.mark.slow


def test_json_logs_parse_line_by_line_with_a_usage_record_per_request(tiny_weights: Path) -> None:
    parts = try_on_parts(**FAST)
    with app_process(tiny_weights, "--log-format", "json") as server:
        server.wait_until_ready()
        done = post_try_on(server.base_url, parts, headers={"X-Request-ID": "usage-1"})
        assert done.status_code == 200, done.text
        forged = httpx.get(f'{server.base_url}/nope%0A{{"level": "ERROR"}}', timeout=10)
        assert forged.status_code == 404
        server.signal(signal.SIGTERM)
        assert server.wait_for_exit(60) == 0

    records = [json.loads(line) for line in server.lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message", "requestId"} <= record.keys(), record
    repeated = Counter((r["logger"], r["message"]) for r in records)
    assert max(repeated.values()) == 1, repeated.most_common(3)
    assert any(r["logger"] == "uvicorn.error" for r in records)  # uvicorn's lines, same format

    usage = {r["requestId"]: r for r in records if r["logger"] == "app.access"}
    try_on = usage["usage-1"]
    assert set(USAGE_FIELDS) <= try_on.keys()
    body, _ = multipart(parts)
    assert try_on["client"] == "127.0.0.1"
    assert try_on["route"] == "/api/try-on"
    assert (try_on["status"], try_on["error"], try_on["steps"]) == (200, None, 10)
    assert try_on["cached"] is False  # a fixed seed: the result cache was consulted, a miss
    assert (try_on["bytesIn"], try_on["bytesOut"]) == (len(body), len(done.content))
    assert 0 < try_on["seconds"] < 300
    not_found = usage[forged.headers["X-Request-ID"]]
    assert (not_found["route"], not_found["status"], not_found["error"]) == (
        "unmatched",
        404,
        "not_found",
    )
    assert not_found["message"].startswith('GET /nope\n{"level": "ERROR"}')
