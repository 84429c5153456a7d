"""`python -m app [flags]`: serve the try-on API (`--help` lists every option)."""

from __future__ import annotations

import errno
import logging
import socket
import sys
from typing import TypedDict, TypeVar

import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliApp, SettingsError
from uvicorn.server import STARTUP_FAILURE

from app.access.guard import warn_if_open
from app.access.keys import KeysFileError
from app.edge.envelope import describe_validation_errors
from app.edge.lifecycle import DrainingServer, exit_after_serving
from app.main import create_app
from app.observe.logs import configure_logging
from app.settings import Settings

logger = logging.getLogger("app")
SettingsT = TypeVar("SettingsT", bound=Settings)


# h11 rather than httptools: httptools accepts request headers of any size (a 2 MB header was
# read whole); h11 answers 400 once an unfinished request head passes 16 KiB (so at most one socket
# read, 256 KiB, gets through). Uploads stream as fast either way (~15 ms for 9 MB on localhost).
class ServerOptions(TypedDict):
    """The uvicorn.Config options every server of this app gets (the tests' included)."""

    http: str
    h11_max_incomplete_event_size: int
    proxy_headers: bool
    forwarded_allow_ips: str


def server_options(settings: Settings) -> ServerOptions:
    """uvicorn's options for `settings`: the client IP comes from X-Forwarded-For only through
    uvicorn's own proxy-headers middleware, for the proxies `--forwarded-allow-ips` names."""
    return ServerOptions(
        http="h11",
        h11_max_incomplete_event_size=16 * 1024,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


def describe_settings_errors(exc: ValidationError) -> str:
    """Validation errors named by their flags (`rate_limit` -> `--rate-limit`)."""
    flagged = [
        {**error, "loc": tuple(f"--{part}".replace("_", "-") for part in error["loc"])}
        for error in exc.errors()
    ]
    return describe_validation_errors(flagged)


def parse_settings(
    settings_class: type[SettingsT], argv: list[str] | None, prog: str = "python -m app"
) -> SettingsT:
    """Flags (argv, default sys.argv) and `CATVTON_*` variables -> settings, or exit with why."""
    try:
        return CliApp.run(settings_class, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:  # a bad flag or CATVTON_* value: one line each, no traceback
        raise SystemExit(f"{prog}: {describe_settings_errors(exc)}") from None
    except SettingsError as exc:  # a CATVTON_* value pydantic-settings could not even parse
        raise SystemExit(f"{prog}: {exc}") from None


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything starts; exit STARTUP_FAILURE saying why not.

    Bound here rather than by uvicorn: uvicorn binds after the lifespan has started the model
    load, so its "address already in use" line came before a screen of loading lines and the
    reason was lost in them. Now nothing starts and the reason is the last line.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn's own bind
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fix = (
            "another server is listening there: stop it, or pick another --port"
            if exc.errno == errno.EADDRINUSE
            else "check --host and --port"
        )
        logger.error("cannot listen on %s:%d: %s; %s", host, port, exc.strerror, fix)
        raise SystemExit(STARTUP_FAILURE) from None
    return sock


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(Settings, argv)
    try:
        app = create_app(settings)  # reads --api-keys-file: refuse a bad one before anything runs
    except KeysFileError as exc:
        raise SystemExit(f"python -m app: --api-keys-file: {exc}") from None
    configure_logging(settings.log_level, settings.log_format)
    if settings.demo:
        logger.warning("=" * 72)
        logger.warning("DEMO MODE: serving tiny RANDOM weights from %s", settings.demo_dir)
        logger.warning("The API behaves as in production, but every result image is noise.")
        logger.warning("=" * 72)
    warn_if_open(settings.host, keys_configured=settings.api_keys_file is not None)
    sock = listening_socket(settings.host, settings.port)
    logger.info("listening on http://%s:%d (docs at /docs)", settings.host, settings.port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep configure_logging's handler: one format, request ids on every line
        log_level=settings.log_level,
        access_log=False,  # app.observe's middleware logs one line per request, with its usage
        **server_options(settings),
    )
    server = DrainingServer(config, app.state.worker, drain_timeout=settings.drain_timeout)
    server.run(sockets=[sock])
    if not server.started:  # the lifespan failed: uvicorn said why
        raise SystemExit(STARTUP_FAILURE)
    exit_after_serving(app.state.worker)


if __name__ == "__main__":
    main()
