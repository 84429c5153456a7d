"""`python -m app [flags]`: serve the try-on API (`--help` lists every option)."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic_settings import CliApp

from app.main import create_app
from app.request_id import configure_logging
from app.settings import Settings

logger = logging.getLogger("app")


def main(argv: list[str] | None = None) -> None:
    settings = CliApp.run(Settings, cli_args=sys.argv[1:] if argv is None else argv)
    configure_logging(settings.log_level)
    if settings.demo:
        logger.warning("=" * 72)
        logger.warning("DEMO MODE: serving tiny RANDOM weights from %s", settings.demo_dir)
        logger.warning("The API behaves as in production, but every result image is noise.")
        logger.warning("=" * 72)
    logger.info("listening on http://%s:%d (docs at /docs)", settings.host, settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep configure_logging's handler: request ids on uvicorn's lines too
        log_level=settings.log_level,
        access_log=False,  # RequestIdMiddleware logs one line per request, with its id
    )


if __name__ == "__main__":
    main()
