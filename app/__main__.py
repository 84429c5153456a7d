"""`python -m app [flags]`: serve the try-on API (`--help` lists every option)."""

from __future__ import annotations

import logging
import sys
from typing import TypeVar

import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliApp, SettingsError

from app.errors import describe_validation_errors
from app.main import create_app
from app.request_id import configure_logging
from app.settings import Settings

logger = logging.getLogger("app")
SettingsT = TypeVar("SettingsT", bound=Settings)

# h11 rather than httptools: httptools accepts request headers of any size (a 2 MB header was
# read whole); h11 answers 400 once an unfinished request head passes 16 KiB (so at most one socket
# read, 256 KiB, gets through). Uploads stream as fast either way (~15 ms for 9 MB on localhost).
SERVER_OPTIONS = {"http": "h11", "h11_max_incomplete_event_size": 16 * 1024}


def parse_settings(
    settings_class: type[SettingsT], argv: list[str] | None, prog: str = "python -m app"
) -> SettingsT:
    """Flags (argv, default sys.argv) and `CATVTON_*` variables -> settings, or exit with why."""
    try:
        return CliApp.run(settings_class, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:  # a bad flag or CATVTON_* value: one line each, no traceback
        raise SystemExit(f"{prog}: {describe_validation_errors(exc.errors())}") from None
    except SettingsError as exc:  # a CATVTON_* value pydantic-settings could not even parse
        raise SystemExit(f"{prog}: {exc}") from None


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(Settings, argv)
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
        **SERVER_OPTIONS,
    )


if __name__ == "__main__":
    main()
