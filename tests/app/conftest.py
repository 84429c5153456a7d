"""Real-HTTP fixtures: the app served by uvicorn on a free port, in a thread, on tiny weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import SCREENSHOTS_KEY
from http_helpers import serve, tiny_settings, wait_until_ready


@pytest.fixture(scope="module")
def tiny_server(tiny_weights: Path) -> Iterator[str]:
    """One loaded server per test module: tiny weights, CPU, 96x128, 1 MiB upload cap."""
    with serve(tiny_settings(tiny_weights, max_upload_mb=1.0)) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield base_url


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Say where the browser tests left their screenshots (one per page state)."""
    directory = config.stash.get(SCREENSHOTS_KEY, None)
    if directory is not None:
        count = len(list(directory.glob("*.png")))
        terminalreporter.write_line(f"browser screenshots ({count}): {directory}")
