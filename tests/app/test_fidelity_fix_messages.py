"""Every fix a weights message suggests parses with the real parser of the command the user ran.

The server (`python -m app`, pydantic-settings) and the CLI (`python -m catvton`, argparse) each
get the messages of the usual missing-weights cases; each `--flag DIR` in a message is fed to that
command's parser, each `python -m catvton ...` command to the CLI's.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
from pydantic_settings import CliApp

from app.inference.models import load_models
from app.settings import Settings
from catvton.cli import build_parser, main
from catvton.errors import WeightsNotFoundError
from catvton.masking.automasker import SCHP_LIP_FILE

# A flag, with the placeholder that follows it if any ("--weights-dir DIR").
SUGGESTED_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?: ([A-Z][A-Za-z_/.-]*))?")
SUGGESTED_COMMAND = re.compile(r"python -m catvton ([a-z-]+(?: [A-Z]+)*)")
# The CLI's required arguments, so that a suggested flag is judged on its own.
TRYON_ARGS = ["tryon", "--person", "p.jpg", "--cloth", "c.jpg", "--mask", "m.png", "--out", "o.png"]

Scenario = Callable[[Path], dict[str, object]]  # tmp folder -> options (server field names)


def no_weights_and_no_hub(tmp_path: Path) -> dict[str, object]:
    return {}  # the default start: hub ids, hub offline, empty cache


def empty_weights_dir(tmp_path: Path) -> dict[str, object]:
    return {"weights_dir": tmp_path}


def empty_component_folder(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "base").mkdir()
    return {"base_model": str(tmp_path / "base")}


def masker_file_missing(tmp_path: Path, tiny_weights: Path) -> dict[str, object]:
    weights = Path(shutil.copytree(tiny_weights, tmp_path / "weights"))
    (weights / "CatVTON" / SCHP_LIP_FILE).unlink()
    return {"weights_dir": weights}


SCENARIOS = [no_weights_and_no_hub, empty_weights_dir, empty_component_folder, masker_file_missing]


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def options_of(scenario: Callable, tmp_path: Path, tiny_weights: Path) -> dict[str, object]:
    if scenario is masker_file_missing:
        return masker_file_missing(tmp_path, tiny_weights)
    return scenario(tmp_path)


def suggested_flags(message: str) -> list[list[str]]:
    return [
        [flag, value.rstrip(".")] if value else [flag]
        for flag, value in SUGGESTED_FLAG.findall(message)
    ]


def assert_commands_parse(message: str) -> None:
    for command in SUGGESTED_COMMAND.findall(message):
        build_parser().parse_args(command.split())  # SystemExit(2) if it does not exist


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__)
def test_the_servers_messages_name_its_own_flags(
    scenario: Callable, tmp_path: Path, tiny_weights: Path
) -> None:
    options = options_of(scenario, tmp_path, tiny_weights)
    settings = Settings(device="cpu", dtype="fp32", size="96x128", **options)
    with pytest.raises(WeightsNotFoundError) as raised:
        load_models(settings, progress=lambda step: None)
    message = str(raised.value)
    assert suggested_flags(message) or SUGGESTED_COMMAND.search(message), message
    for flag in suggested_flags(message):
        CliApp.run(Settings, cli_args=flag)  # SystemExit(2) for a flag the server lacks
    assert_commands_parse(message)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__)
def test_the_clis_messages_name_its_own_flags(
    scenario: Callable, tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = options_of(scenario, tmp_path, tiny_weights)
    cli_flags = {"weights_dir": "--weights-dir", "base_model": "--base-model"}
    argv = list(TRYON_ARGS)
    for name, value in options.items():
        argv += [cli_flags[name], str(value)]
    argv[argv.index("--mask") : argv.index("--mask") + 2] = ["--cloth-type", "upper"]
    assert main(argv) == 1
    message = capsys.readouterr().err
    assert suggested_flags(message) or SUGGESTED_COMMAND.search(message), message
    for flag in suggested_flags(message):
        build_parser().parse_args([*TRYON_ARGS, *flag])
    assert_commands_parse(message)


def test_the_default_start_without_weights_points_at_the_servers_flag(tmp_path: Path) -> None:
    """The reported case: the server's flag is --weights-dir (the message said --weights)."""
    with pytest.raises(WeightsNotFoundError) as raised:
        load_models(Settings(device="cpu"), progress=lambda step: None)
    assert ["--weights-dir", "DIR"] in suggested_flags(str(raised.value))
