"""`python -m app.cluster [flags]`: deploy the service on a running Ray cluster until a signal.

Joins the cluster at `--ray-address`, starts Serve's HTTP proxy on `--host`/`--port`, deploys the
ingress and the try-on replicas, prints the URL, and on SIGINT/SIGTERM drains the service as the
single process does (/health 503 "draining" on every ingress replica, new try-ons 503
shutting_down, queued and running work gets `--drain-timeout` seconds), then removes what it
deployed.
`scripts/cluster_demo.sh` runs it next to a local Ray head and redis-server; a long-lived cluster
uses `serve deploy app/cluster/serve_config.yaml` instead.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from pathlib import Path

import ray
from ray import serve

from app.__main__ import parse_settings
from app.cluster.deployments import build_application
from app.cluster.redis_client import connect
from app.cluster.redis_jobs import RedisJobStore
from app.cluster.registry import HEARTBEAT_S, ReplicaRegistry, announce_drain
from app.cluster.settings import ClusterSettings
from app.jobs.store import job_retention
from app.observe.logs import configure_logging

logger = logging.getLogger("app.cluster")

APP_NAME = "catvton"
REPO_ROOT = Path(__file__).resolve().parents[2]
DRAIN_FLAG_MARGIN_S = 10.0  # the flag outlives the wait, until Serve has removed the app


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(ClusterSettings, argv, prog="python -m app.cluster")
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    # Replicas import `app` from this checkout (the same code on every node of a real cluster).
    ray.init(
        address=settings.ray_address,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
        logging_level=logging.WARNING,
    )
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_application(settings), name=APP_NAME, route_prefix="/")
        print(f"serving on http://{settings.host}:{settings.port}", flush=True)
        stop.wait()
        logger.info("stopping: draining, up to %g s", settings.drain_timeout)
        asyncio.run(drain_service(settings))
        logger.info("stopping: removing the Serve application")
    finally:
        serve.shutdown()
        ray.shutdown()


async def drain_service(settings: ClusterSettings) -> None:
    """Announce the drain to every ingress replica (through Redis), then wait until no job is
    queued or running and no try-on replica is busy, or `drain_timeout` seconds."""
    redis = connect(settings.redis_url)
    registry = ReplicaRegistry(redis)
    store = RedisJobStore(redis, **job_retention(settings))
    deadline = time.monotonic() + settings.drain_timeout
    try:
        await announce_drain(redis, settings.drain_timeout + DRAIN_FLAG_MARGIN_S)
        while time.monotonic() < deadline:
            await asyncio.sleep(HEARTBEAT_S)  # the ingress replicas read the flag meanwhile
            counts = await store.counts()
            busy = any(report["busy"] for report in await registry.read())
            if not busy and not counts.get("queued") and not counts.get("running"):
                return
        logger.warning("drain timeout (%g s): stopping with work left", settings.drain_timeout)
    except Exception as exc:  # Redis down: nothing to wait on; Serve's own stop still drains
        logger.warning("could not drain through Redis (%s); stopping", exc)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    main()
