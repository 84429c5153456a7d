"""Rate limits counted in a Redis that cannot be reached: try-ons are served, not refused.

A real server (tiny weights) whose `--rate-limit` counters live at a `--redis-url` where nothing
listens, as during a Redis restart: the request gets its try-on, without RateLimit fields, and the
log says the limit was not counted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from http_helpers import FAST, post_try_on, serve, tiny_settings, try_on_parts, wait_until_ready
from process_helpers import free_port


def test_a_rate_limit_whose_redis_is_down_serves_the_request(
    tiny_weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # a free port: connection refused at once
    settings = tiny_settings(tiny_weights, rate_limit="3/minute", redis_url=nowhere)
    with serve(settings) as base_url, caplog.at_level(logging.WARNING, "app.access.limits"):
        assert wait_until_ready(base_url)["status"] == "ok"
        response = post_try_on(base_url, try_on_parts(**FAST))
    assert response.status_code == 200, response.text
    assert "RateLimit" not in response.headers
    assert "rate limit not counted" in caplog.text
