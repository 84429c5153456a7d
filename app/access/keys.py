"""API keys: the keys file, parsed into SHA-256 digests, looked up in constant time, reloaded live.

The file (`--api-keys-file`) holds one client a line, `NAME KEY` or `NAME sha256:HEX` (the SHA-256
of the key, so a deployment need not store keys in plain text), and `#` comments. Only digests are
kept in memory: a plain key is hashed as it is read.

Reloading (SIGHUP, or a change of the file seen by a once-a-second `stat`) builds a new `KeyRing`
and swaps one reference, so a request already admitted keeps running and the next request sees the
new keys; a file that does not parse leaves the old keys in place and logs why. Messages name line
numbers and client names, never a key or a line's text (the text holds the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SHA256_PREFIX = "sha256:"
# Names appear in logs, metrics and usage records: short plain tokens only.
VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VALID_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
# Visible ASCII without commas (a comma separates values of repeated headers).
VALID_KEY = re.compile(rb"^[\x21-\x2b\x2d-\x7e]+$")
MIN_KEY_CHARS = 16  # a guessable key is no key; `secrets.token_urlsafe(32)` gives 43
MAX_KEY_CHARS = 256
GENERATE_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
RELOAD_POLL_S = 1.0


class KeysFileError(ValueError):
    """The keys file cannot be used as a whole; the message names the file and the line."""


def key_digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


@dataclass(frozen=True)
class KeyRing:
    """Client names and their key digests, as read from one version of the file."""

    entries: tuple[tuple[str, bytes], ...]  # (name, SHA-256 digest of the key)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.entries)

    def client_for(self, key: bytes) -> str | None:
        """The name owning `key`, or None.

        Compares the key's digest with EVERY stored digest (`hmac.compare_digest`, no early exit),
        so the time taken says nothing about which key, or how much of one, was right. 1,000 keys
        cost about 0.1 ms (scripts/benchmark_access.py).
        """
        digest = key_digest(key)
        found = None
        for name, stored in self.entries:
            if hmac.compare_digest(digest, stored):
                found = name
        return found

    def name_for_newline_variant(self, key: bytes) -> str | None:
        """A name whose stored hash is that of `key` plus a newline (`echo KEY | sha256sum`)."""
        return self.client_for(key + b"\n")


def parse_keys_file(text: str, source: str) -> KeyRing:
    """The file's text -> a KeyRing; KeysFileError names `source`, the line and what is wrong."""
    entries: list[tuple[str, bytes]] = []
    names: dict[str, int] = {}
    digests: dict[bytes, str] = {}
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) > 2 and fields[2].startswith("#"):
            fields = fields[:2]  # a trailing comment
        where = f"{source} line {number}"
        if len(fields) != 2:
            raise KeysFileError(
                f"{where}: expected 'NAME KEY' or 'NAME sha256:HEX', got {len(fields)} field(s)"
            )
        name, secret = fields
        if not VALID_NAME.match(name):
            raise KeysFileError(
                f"{where}: a name is 1-64 letters, digits, '.', '_' or '-' (starting with a "
                "letter or digit)"
            )
        if name in names:
            raise KeysFileError(f"{where}: the name {name!r} is already used on line {names[name]}")
        digest = parse_secret(secret, where)
        if digest in digests:
            raise KeysFileError(f"{where}: the same key as {digests[digest]!r}; one key, one name")
        names[name] = number
        digests[digest] = name
        entries.append((name, digest))
    if not entries:
        raise KeysFileError(
            f"{source}: no keys (only blank or comment lines); with no key nobody could use the "
            "service: add a line 'NAME KEY', or drop --api-keys-file to run open"
        )
    return KeyRing(tuple(entries))


def parse_secret(secret: str, where: str) -> bytes:
    """`sha256:HEX` -> its digest; a plain key -> the digest of its bytes."""
    if secret.lower().startswith(SHA256_PREFIX):
        hex_digest = secret[len(SHA256_PREFIX) :]
        if not VALID_HEX_DIGEST.match(hex_digest):
            raise KeysFileError(f"{where}: 'sha256:' must be followed by 64 hex digits")
        return bytes.fromhex(hex_digest)
    key = secret.encode("utf-8")
    if not VALID_KEY.match(key):
        raise KeysFileError(f"{where}: a key is visible ASCII without spaces or commas")
    if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS:
        raise KeysFileError(
            f"{where}: a key has {MIN_KEY_CHARS}..{MAX_KEY_CHARS} characters (make one: "
            f"{GENERATE_HINT})"
        )
    return key_digest(key)


def read_keys_file(path: Path) -> KeyRing:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeysFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KeysFileError(f"{path} line {line}: not UTF-8 text") from None
    return parse_keys_file(text, str(path))


def file_signature(path: Path) -> tuple[int, ...] | None:
    """What changes when the file is rewritten or replaced (rename, k8s symlink swap), or None."""
    try:
        stat = os.stat(path)  # follows symlinks: a swapped target counts as a change
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)


class KeyStore:
    """The current KeyRing of one keys file, reloaded on SIGHUP and when the file changes.

    `ring` is replaced whole (never edited), so a reader sees one version of the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature = file_signature(path)
        self.ring = read_keys_file(path)  # KeysFileError: the start fails, naming the line

    async def reload(self, reason: str) -> bool:
        """Read the file again; on error keep the keys in use and log why. True if swapped."""
        self._signature = file_signature(self.path)
        try:
            ring = await asyncio.to_thread(read_keys_file, self.path)
        except KeysFileError as exc:
            logger.error(
                "api keys NOT reloaded (%s), still using the %d loaded before: %s",
                reason,
                len(self.ring.entries),
                exc,
            )
            return False
        added, removed = ring.names - self.ring.names, self.ring.names - ring.names
        self.ring = ring
        logger.info(
            "api keys reloaded (%s): %d clients; added: %s; removed: %s",
            reason,
            len(ring.entries),
            ", ".join(sorted(added)) or "none",
            ", ".join(sorted(removed)) or "none",
        )
        return True

    async def watch(self, poll_s: float = RELOAD_POLL_S) -> None:
        """Reload whenever the file's signature changes; runs until cancelled."""
        while True:
            await asyncio.sleep(poll_s)
            if file_signature(self.path) != self._signature:
                await self.reload("the file changed")


@contextlib.asynccontextmanager
async def watching(store: KeyStore | None) -> AsyncIterator[None]:
    """For the lifespan: poll the file and reload on SIGHUP while the server runs."""
    if store is None:
        yield
        return
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = loop.create_task(store.reload("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    sighup = getattr(signal, "SIGHUP", None)  # absent on Windows: the file watch still works
    handles_sighup = False
    if sighup is not None:
        try:
            loop.add_signal_handler(sighup, on_sighup)
            handles_sighup = True
        except (RuntimeError, ValueError):  # not the main thread (an embedded server)
            logger.info("SIGHUP cannot be handled here; the keys file is still watched")
    watcher = loop.create_task(store.watch())
    try:
        yield
    finally:
        watcher.cancel()
        if handles_sighup and sighup is not None:
            loop.remove_signal_handler(sighup)
