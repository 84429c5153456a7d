"""`python -m app.cluster [flags]`: deploy the service on a running Ray cluster until a signal.

Joins the cluster at `--ray-address`, starts Serve's HTTP proxy on `--host`/`--port`, deploys the
ingress and the try-on replicas, prints the URL, and on SIGINT/SIGTERM removes what it deployed.
`scripts/cluster_demo.sh` runs it next to a local Ray head and redis-server; a long-lived cluster
uses `serve deploy app/cluster/serve_config.yaml` instead.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import ray
from ray import serve

from app.__main__ import parse_settings
from app.cluster.deployments import build_application
from app.cluster.settings import ClusterSettings
from app.observe.logs import configure_logging

logger = logging.getLogger("app.cluster")

APP_NAME = "catvton"
REPO_ROOT = Path(__file__).resolve().parents[2]


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
        logger.info("stopping: removing the Serve application")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
