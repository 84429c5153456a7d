"""Draining on SIGTERM/SIGINT (README, "Warm-up, draining, restarts"), against a real
`python -m app` process.

Inferences are made long by asking for more steps on the tiny model, never by sleeping in it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from http_helpers import FAST, assert_envelope, post_try_on, try_on_parts, wait_for_health
from process_helpers import REPO_ROOT, app_process

from app.edge.lifecycle import RESPONSE_GRACE_S

pytestmark = pytest.mark.slow

SLOW = {"num_inference_steps": "25", "guidance_scale": "1.0"}
# The longest request the contract allows: 100 steps with guidance (two UNet passes each), seconds
# on the tiny model even on an idle CPU.
LONGEST = {"num_inference_steps": "100", "guidance_scale": "2.5"}
FORGED_PATH = "/nope%0A2026-12-02 05:00:00,000 INFO    [-] app: FORGED"
# Every line a record starts in text mode (a traceback's further lines are indented).
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def is_running(body: dict) -> bool:
    return body["busy"]


def test_sigterm_during_an_inference_finishes_it_refuses_new_work_and_exits_0(
    tiny_weights: Path,
) -> None:
    with app_process(tiny_weights) as server, ThreadPoolExecutor(1) as pool:
        server.wait_until_ready()
        assert httpx.get(server.base_url + FORGED_PATH, timeout=10).status_code == 404
        running = pool.submit(post_try_on, server.base_url, try_on_parts(**SLOW))
        wait_for_health(server.base_url, is_running)
        server.signal(signal.SIGTERM)

        draining = wait_for_health(server.base_url, lambda body: body["status"] == "draining", 5)
        assert server.health().status_code == 503
        assert "shutting down" in draining["message"]
        refused = post_try_on(server.base_url, try_on_parts(**FAST), timeout=30)
        assert_envelope(refused, 503, "shutting_down", "shutting down")
        assert int(refused.headers["Retry-After"]) > 0
        assert running.result(timeout=180).status_code == 200
        assert server.wait_for_exit(30) == 0

    # Issue 8.7: the decoded %0A did not start a line of its own that looks like a real record.
    assert not any("FORGED" in line and line.startswith("2026-12-02 05") for line in server.lines)
    assert any("/nope\\x0a2026-12-02 05:00:00,000" in line for line in server.lines)
    assert all(RECORD_START.match(line) or line.startswith("    ") for line in server.lines), (
        server.output()
    )


def test_sigterm_with_a_queue_longer_than_the_drain_timeout_fails_the_rest_on_time(
    tiny_weights: Path,
) -> None:
    drain_timeout = 4.0
    # The result cache off: the identical queued requests must each need the model.
    flags = ("--drain-timeout", str(drain_timeout), "--queue-size", "4", "--cache-mb", "0")
    with app_process(tiny_weights, *flags) as server, ThreadPoolExecutor(4) as pool:
        server.wait_until_ready()
        requests = [pool.submit(post_try_on, server.base_url, try_on_parts(**FAST))]
        wait_for_health(server.base_url, is_running)
        for queued in range(1, 4):  # one at a time, so the queue order is the list order
            requests.append(pool.submit(post_try_on, server.base_url, try_on_parts(**LONGEST)))
            wait_for_health(server.base_url, lambda body, n=queued: body["queue_depth"] == n)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        responses = [request.result(timeout=120) for request in requests]
        code = server.wait_for_exit(60)
        took = time.monotonic() - signalled

    statuses = [response.status_code for response in responses]
    assert code == 0, server.output()
    # Three queued inferences of 100 guided steps take far longer than the drain timeout, on an idle
    # CPU too (a fast machine ran three 10-step ones within it).
    assert statuses.count(503) >= 2, statuses
    assert statuses == sorted(statuses), statuses  # first come, first served: 200s, then 503s
    for response in responses:
        if response.status_code == 503:
            assert_envelope(response, 503, "shutting_down", "shutting down")
    assert took < drain_timeout + RESPONSE_GRACE_S, took
    assert "drain timeout" in server.output()


def test_a_second_signal_exits_at_once(tiny_weights: Path) -> None:
    with app_process(tiny_weights) as server, ThreadPoolExecutor(1) as pool:
        server.wait_until_ready()
        pool.submit(post_try_on, server.base_url, try_on_parts(**SLOW))
        wait_for_health(server.base_url, is_running)
        server.signal(signal.SIGTERM)
        wait_for_health(server.base_url, lambda body: body["status"] == "draining", 5)
        second = time.monotonic()
        server.signal(signal.SIGINT)
        code = server.wait_for_exit(10)
        assert time.monotonic() - second < 3
    assert code == 128 + signal.SIGINT
    assert "second SIGINT: exiting now" in server.output()


def test_sigterm_while_the_models_load_exits_0_at_once(tiny_weights: Path) -> None:
    with app_process(tiny_weights) as server:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the first answer: still loading, most likely
            try:
                status = server.health().json()["status"]
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        server.signal(signal.SIGTERM)
        assert server.wait_for_exit(30) == 0, server.output()
    assert status in ("loading", "ok")


def test_a_port_in_use_is_the_last_line_printed_and_nothing_loads(tmp_path: Path) -> None:
    """The "address already in use" line used to be followed by the model-loading lines."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo_dir = tmp_path / "demo-weights"
        command = [sys.executable, "-m", "app", "--demo", "--demo-dir", str(demo_dir)]
        finished = subprocess.run(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    lines = (finished.stdout + finished.stderr).strip().splitlines()
    assert finished.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in lines[-1], lines
    assert "--port" in lines[-1]
    assert not demo_dir.exists()  # the demo weights were never written: nothing started
