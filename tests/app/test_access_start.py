"""Start-up refusals name the flag or the line; SIGHUP reloads a real `python -m app` process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from http_helpers import TINY_SIZE_TEXT

from app.__main__ import main

ALICE_KEY = "alice-0123456789abcdef"
NEW_KEY = "alice-fedcba9876543210"  # as long as the old one: the file's size does not change
REPO = Path(__file__).resolve().parents[2]


def app_command(weights: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "app",
        "--weights-dir",
        str(weights),
        "--device",
        "cpu",
        "--size",
        TINY_SIZE_TEXT,
        "--host",
        "127.0.0.1",
        *flags,
    ]


@pytest.mark.parametrize(
    ("file_text", "flags", "says"),
    [
        ("", (), "no keys"),
        (f"alice {ALICE_KEY}\n\n# ok so far\nbob\n", (), "line 4: expected 'NAME KEY'"),
        (f"alice {ALICE_KEY}\nalice {NEW_KEY}\n", (), "line 2: the name 'alice' is already used"),
        (f"alice {ALICE_KEY}\n", ("--rate-limit", "30/fortnight"), "--rate-limit '30/fortnight'"),
        (f"alice {ALICE_KEY}\n", ("--max-active-per-client", "-1"), "--max-active-per-client"),
    ],
    ids=["empty-file", "malformed-line", "duplicate-names", "bad-rate-limit", "negative-active"],
)
def test_the_start_fails_naming_the_flag_or_the_line(
    tiny_weights: Path, tmp_path: Path, file_text: str, flags: tuple[str, ...], says: str
) -> None:
    """`main` is what `python -m app` runs: SystemExit's text is the one line the user sees."""
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(file_text)
    argv = app_command(tiny_weights, "--api-keys-file", str(keys_file), "--port", "9", *flags)
    with pytest.raises(SystemExit) as refused:
        main(argv[3:])  # without `python -m app`
    message = str(refused.value)
    assert message.startswith("python -m app: ")
    assert says in message
    assert ALICE_KEY not in message and NEW_KEY not in message


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_a_change_the_file_watch_cannot_see(
    tiny_weights: Path, tmp_path: Path
) -> None:
    """The key is replaced by one of the same length and the file's mtime is put back, so its
    signature is unchanged: only SIGHUP can make the server read it again."""
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"alice {ALICE_KEY}\n")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        app_command(tiny_weights, "--api-keys-file", str(keys_file), "--port", str(port)),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    probe = f"{base_url}/no-such-route"  # 404 with a valid key, 401 without: no model needed
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(probe, headers={"X-API-Key": ALICE_KEY}).status_code == 404:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        before = os.stat(keys_file)
        keys_file.write_text(f"alice {NEW_KEY}\n")
        os.utime(keys_file, ns=(before.st_atime_ns, before.st_mtime_ns))
        time.sleep(2.5)  # more than two polls: the watch saw no change
        assert httpx.get(probe, headers={"X-API-Key": NEW_KEY}).status_code == 401
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while httpx.get(probe, headers={"X-API-Key": NEW_KEY}).status_code != 404:
            assert time.monotonic() < deadline, "SIGHUP did not reload the keys"
            time.sleep(0.1)
        assert httpx.get(probe, headers={"X-API-Key": ALICE_KEY}).status_code == 401
        assert server.poll() is None  # SIGHUP's default action would have ended the process
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    assert "api keys reloaded (SIGHUP)" in stderr
    assert ALICE_KEY not in stderr and NEW_KEY not in stderr
