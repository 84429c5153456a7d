"""What `load_models` leaves behind, in a fresh process: torch's thread count is a process global
(kept per OpenMP thread), so it must not leak into the other tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from process_helpers import REPO_ROOT

# Loads the models on a new thread per case, as the device worker does, and prints the intra-op
# threads that thread ends up with; torch's default is read on a thread that loads nothing.
LOAD_AND_COUNT = """
import json, sys, threading
import torch
from app.inference.models import load_models
from app.settings import Settings

def threads_after_loading(options):
    seen = []
    def device_thread():
        load_models(Settings(**options), lambda message: None)
        seen.append(torch.get_num_threads())
    thread = threading.Thread(target=device_thread)
    thread.start()
    thread.join()
    return seen[0]

cases = json.loads(sys.argv[1])
result = {"default": torch.get_num_threads()}
result.update({name: threads_after_loading(options) for name, options in cases.items()})
print(json.dumps(result))
"""


def test_the_demo_runs_on_one_torch_thread_unless_told_otherwise(
    tiny_weights: Path, tmp_path: Path
) -> None:
    tiny = {"weights_dir": str(tiny_weights), "device": "cpu", "dtype": "fp32", "size": "96x128"}
    demo = {"demo": True, "demo_dir": str(tmp_path / "demo"), "device": "cpu"}
    cases = {  # in this order: a count set by one case stays torch's global for the next
        "real_auto": tiny,
        "demo_auto": demo,
        "demo_explicit": {**demo, "torch_threads": 3},
    }
    env = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}
    finished = subprocess.run(
        [sys.executable, "-c", LOAD_AND_COUNT, json.dumps(cases)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    counts = json.loads(finished.stdout.strip().splitlines()[-1])
    assert counts["real_auto"] == counts["default"]  # a real model: torch's own choice
    assert counts["demo_auto"] == 1
    assert counts["demo_explicit"] == 3
