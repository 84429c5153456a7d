"""The library stands alone: importable without the web stack, nothing heavy done at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = """
import sys
for name in ("fastapi", "starlette", "pydantic_settings", "app"):
    sys.modules[name] = None  # any import of them now raises ImportError
import catvton, catvton.cli, catvton.tiny
import torch
assert not torch.cuda.is_initialized(), "CUDA initialised at import time"
print("ok", sorted(catvton.__all__))
"""


def test_catvton_imports_without_the_web_stack() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "load_pipeline" in completed.stdout
