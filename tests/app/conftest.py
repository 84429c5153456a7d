"""Fixtures of the app's tests: the app served by uvicorn on a free port, in a thread, on tiny
weights; and a bare redis-server for the stores that the scaled-out mode keeps in Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser_helpers import SCREENSHOTS_KEY
from http_helpers import serve, tiny_settings, wait_until_ready
from redis_helpers import redis_missing, redis_server, skip_or_fail

if TYPE_CHECKING:  # collection must not need redis (see redis_helpers)
    from redis.asyncio import Redis


@pytest.fixture(scope="module")
def tiny_server(tiny_weights: Path) -> Iterator[str]:
    """One loaded server per test module: tiny weights, CPU, 96x128, 1 MiB upload cap."""
    with serve(tiny_settings(tiny_weights, max_upload_mb=1.0)) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield base_url


@pytest.fixture(scope="session")
def screenshots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the session's browser screenshots (`--browser-screenshots`, or a temp one)."""
    directory = request.config.getoption("--browser-screenshots")
    if directory is None:
        directory = tmp_path_factory.mktemp("browser-screenshots", numbered=False)
    directory.mkdir(parents=True, exist_ok=True)
    request.config.stash[SCREENSHOTS_KEY] = directory
    return directory


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bare redis-server for the session (loopback, no persistence); skips or fails without it."""
    missing = redis_missing()
    if missing is not None:
        skip_or_fail(missing)
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
async def redis_clients(redis_url: str) -> AsyncIterator[Callable[[], Redis]]:
    """Opens clients of the session's Redis, one per "replica", on a db flushed for this test."""
    from app.cluster.redis_client import connect  # here: collection must not need redis

    clients: list[Redis] = []

    def open_client() -> Redis:
        clients.append(connect(redis_url))
        return clients[-1]

    await open_client().flushdb()
    yield open_client
    for client in clients:
        await client.aclose()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Say where the browser tests left their screenshots (one per page state)."""
    directory = config.stash.get(SCREENSHOTS_KEY, None)
    if directory is not None:
        count = len(list(directory.glob("*.png")))
        terminalreporter.write_line(f"browser screenshots ({count}): {directory}")
