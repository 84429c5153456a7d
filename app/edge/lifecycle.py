"""Stopping cleanly: drain on SIGTERM/SIGINT, then exit 0.

uvicorn's own handler stops accepting connections at the first signal, so a load balancer would
see refused connections and the queued try-ons would be lost. Here the first signal only starts a
drain: the server keeps answering (/health 503 "draining", new try-ons 503 "shutting_down"), the
running and queued inferences get up to `drain_timeout` seconds, what is left then fails with
"shutting_down", and only then does uvicorn shut down. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from types import FrameType

import uvicorn

from app.inference.contract import Worker

logger = logging.getLogger(__name__)

# What uvicorn gives in-flight responses once the drain is over: they only need to be written.
RESPONSE_GRACE_S = 5  # seconds (uvicorn takes a whole number)
DRAIN_POLL_S = 0.05


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, worker: Worker, drain_timeout: float):
        config.timeout_graceful_shutdown = RESPONSE_GRACE_S
        super().__init__(config)
        self.worker = worker
        self.drain_timeout = drain_timeout
        self._drain_task: asyncio.Task[None] | None = None
        self._signalled = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs in the main thread, between two bytecodes of the event loop's thread."""
        name = signal.Signals(sig).name
        if self._signalled:
            logger.warning("second %s: exiting now, without waiting for the drain", name)
            exit_now(128 + sig)
        self._signalled = True
        logger.info("%s: draining, up to %g s (again: exit now)", name, self.drain_timeout)
        # Not appended to uvicorn's captured signals: it would raise the signal again at the end
        # and the process would die of it instead of exiting 0.
        asyncio.get_running_loop().call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        started = time.monotonic()
        self.worker.begin_drain()
        while not (idle := self.worker.status().idle) and (
            time.monotonic() - started < self.drain_timeout
        ):
            await asyncio.sleep(DRAIN_POLL_S)
        if idle:
            logger.info("drained in %.1f s; shutting down", time.monotonic() - started)
        else:
            logger.warning(
                "drain timeout (%g s): failing what is left with shutting_down", self.drain_timeout
            )
            self.worker.stop(timeout=0)
        self.should_exit = True


def exit_now(code: int) -> None:
    """Flush the logs and end the process without the interpreter's teardown."""
    logging.shutdown()
    os._exit(code)


def exit_after_serving(worker: Worker) -> None:
    """Return normally, or, if the device thread is still at work (an inference past the drain
    timeout, whose client has been answered, or a load cut short), exit 0 at once: tearing the
    interpreter down under a running torch thread aborts the process ("terminate called without
    an active exception", status -6)."""
    status = worker.status()
    if status.busy or status.state == "loading":
        exit_now(0)
