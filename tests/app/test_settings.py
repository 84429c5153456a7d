"""Settings: one class, read from flags (kebab-case), `CATVTON_*` variables and defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import CliApp

from app.access.limits import parse_rate_limit
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_contract() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.queue_size) == ("0.0.0.0", 8000, 4)
    assert settings.max_upload_bytes == 20 * 1024 * 1024
    assert settings.max_image_pixels == 40_000_000
    assert settings.working_size is None


def test_flags_beat_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATVTON_PORT", "9000")
    monkeypatch.setenv("CATVTON_QUEUE_SIZE", "7")
    argv = ["--port", "8000", "--port", "8100", "--weights-dir", "w", "--size", "384x512", "--demo"]
    settings = CliApp.run(Settings, cli_args=argv)
    assert (settings.port, settings.queue_size) == (8100, 7)  # the last flag wins
    assert settings.weights_dir == Path("w")
    assert settings.working_size == (384, 512)
    assert settings.demo is True


def test_every_option_is_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        CliApp.run(Settings, cli_args=["--help"])
    usage = capsys.readouterr().out
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in usage


@pytest.mark.parametrize(
    "bad",
    [{"size": "768*1024"}, {"size": "100x128"}, {"queue_size": -1}, {"port": 0}, {"dtype": "int8"}],
)
def test_bad_values_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("https://app.example", ["https://app.example"]),
        ("https://a.example, https://b.example", ["https://a.example", "https://b.example"]),
        ('["https://a.example"]', ["https://a.example"]),
    ],
    ids=["one", "comma-separated", "json"],
)
def test_cors_origins_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, origins: list[str]
) -> None:
    """A plain origin in CATVTON_CORS_ORIGINS used to stop the server with a traceback."""
    monkeypatch.setenv("CATVTON_CORS_ORIGINS", value)
    assert Settings().cors_origins == origins


# A rate limit of several items, as an example a person copies: unquoted, a shell ends the command
# at the `;` (the server starts with the first item only and the shell runs "500/day").
UNQUOTED_RATE_LIMIT = re.compile(r"(?<!['\"])\b\d+/[a-z]+;\d+/[a-z]+")


def test_every_rate_limit_example_is_quoted_for_the_shell(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        CliApp.run(Settings, cli_args=["--help"])
    usage = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    with pytest.raises(ValueError) as refused:
        parse_rate_limit("30 a minute")
    shown = {
        "--help": usage,
        "the error message": str(refused.value),
        "README.md": (REPO_ROOT / "README.md").read_text(encoding="utf-8"),
        "serve_config.yaml": (REPO_ROOT / "app/cluster/serve_config.yaml").read_text("utf-8"),
    }
    assert "'30/minute;500/day'" in usage
    for where, text in shown.items():
        assert UNQUOTED_RATE_LIMIT.findall(text) == [], where


def test_every_option_is_in_the_readme_configuration_table() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    missing = [
        flag
        for flag in (f"--{name.replace('_', '-')}" for name in Settings.model_fields)
        if f"`{flag}`" not in table
    ]
    assert missing == []


def test_torch_threads_is_auto_or_a_positive_count(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().torch_threads == "auto"
    assert CliApp.run(Settings, cli_args=["--torch-threads", "3"]).torch_threads == 3
    monkeypatch.setenv("CATVTON_TORCH_THREADS", "2")
    assert Settings().torch_threads == 2
    for bad in ("0", "-1", "many", "1.5"):
        with pytest.raises(ValidationError, match="torch_threads"):
            Settings(torch_threads=bad)


@pytest.mark.parametrize(
    ("options", "threads"),
    [
        ({}, None),  # a real model: torch's default
        ({"demo": True}, 1),  # the tiny networks: one thread
        ({"demo": True, "torch_threads": 4}, 4),  # a number always wins
        ({"torch_threads": 2}, 2),
    ],
)
def test_torch_threads_auto_means_one_in_demo_mode_only(options: dict, threads: int | None) -> None:
    assert Settings(**options).intra_op_threads == threads
