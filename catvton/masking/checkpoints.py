"""Safe reading of the masker's published checkpoints, and strict loading into our networks.

Both published formats are pickles. Neither goes through the stock unpickler, which runs any code
the file names:

- SCHP `.pth` files: `torch.load(weights_only=True)`, which reads the zip format and the legacy
  (pre-1.6) format alike and only admits tensors, plain containers and (allowed here) numpy
  arrays, scalars and dtypes. The weights sit under
  `state_dict` with DataParallel's `module.` prefix.
- the DensePose `.pkl` (detectron2 model zoo): `{"model": {name: numpy array}, ...}`, read with
  `RestrictedUnpickler`, which admits numpy arrays, numpy dtypes and plain containers only.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from catvton.errors import CheckpointMismatchError

StateDict = dict[str, torch.Tensor]

# (module, name) pairs a numpy array pickle may refer to; numpy 2 moved `core` to `_core`.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
    # Protocol-2 pickles written by Python 3 store raw bytes as `_codecs.encode(text, "latin1")`.
    ("_codecs", "encode"),
}


# numpy dtype kinds a weight may have: bool, signed and unsigned integer, floating point.
_REAL_KINDS = "biuf"
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _numpy_safe_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """numpy arrays, scalars and dtypes for `torch.load(weights_only=True)`, both module names.

    Training scripts often store a metric as a numpy scalar beside the weights; torch's
    weights-only unpickler refuses those unless allowed. Files written under numpy 1 name
    `numpy.core`, under numpy 2 `numpy._core`; both names are admitted, whichever numpy runs
    (numpy 1.26 has `numpy._core.multiarray` only as an importable alias, not as `np._core`).
    """
    multiarray = importlib.import_module("numpy._core.multiarray")
    allowed: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [np.dtype, np.ndarray]
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        allowed += [
            (function, f"{module}.{name}")
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        ]
    allowed += [
        getattr(np.dtypes, f"{kind}DType")
        for kind in ("Float64", "Float32", "Float16", "Int64", "Int32", "Bool")
    ]
    return allowed


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle refers to a global outside the allow-list (it could run code when loaded)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy array, numpy dtype and plain-container globals."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to load global {module}.{name} from a weights pickle")


def read_detectron2_pkl(path: Path) -> StateDict:
    """Read a detectron2 model-zoo `.pkl` into float32 tensors without running code from it.

    Raises `CheckpointMismatchError` when the pickle is refused, unreadable or has no `model` dict.
    """
    try:
        with open(path, "rb") as handle:
            # latin1: detectron2 reads its zoo files so, for pickles written by Python 2.
            content = RestrictedUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointMismatchError(path, unexpected=[f"<unreadable pickle: {error}>"]) from error
    weights = content.get("model") if isinstance(content, dict) else None
    if not isinstance(weights, Mapping):
        raise CheckpointMismatchError(path, missing=["model"])
    state_dict = {}
    for name, array in weights.items():
        if not isinstance(array, np.ndarray) or array.dtype.kind not in _REAL_KINDS:
            raise CheckpointMismatchError(path, unexpected=[f"{name} (not a real-valued array)"])
        state_dict[name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return state_dict


def read_schp_pth(path: Path) -> StateDict:
    """Read an SCHP `.pth` (zip or legacy format) with `weights_only=True`, unwrapped, unprefixed.

    Accepts a bare state dict or one under `state_dict`; strips DataParallel's `module.` prefix.
    """
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointMismatchError(
            path, unexpected=[f"<unreadable checkpoint: {error}>"]
        ) from error
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping):
        raise CheckpointMismatchError(path, missing=["state_dict"])
    for name, tensor in content.items():
        if not isinstance(tensor, torch.Tensor) or tensor.is_complex():
            raise CheckpointMismatchError(path, unexpected=[f"{name} (not a real-valued tensor)"])
    return {name.removeprefix("module."): tensor.float() for name, tensor in content.items()}


def load_state_dict_strictly(
    network: ModuleT,
    state_dict: StateDict,
    source: str | Path,
    *,
    ignored: Iterable[str] = (),
) -> ModuleT:
    """Load `state_dict` into `network` (built on any device, `meta` included) or raise.

    Every missing, unexpected or mis-shaped tensor is named in a `CheckpointMismatchError`: a
    non-strict load would silently leave random weights in place. `ignored` lists checkpoint
    entries that carry no weights (for example anchors a detector recomputes).
    """
    expected = network.state_dict()
    ignored = set(ignored)
    given = {name: tensor for name, tensor in state_dict.items() if name not in ignored}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    mismatched = sorted(
        f"{name} (checkpoint {list(given[name].shape)}, network {list(expected[name].shape)})"
        for name in expected.keys() & given.keys()
        if given[name].shape != expected[name].shape
    )
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(
            source, missing=missing, unexpected=unexpected, mismatched=mismatched
        )
    network.load_state_dict(given, strict=True, assign=True)
    return network.requires_grad_(False).eval()


def tensor_shape(state_dict: StateDict, name: str, source: str | Path) -> torch.Size:
    """The shape of a tensor a network width is read from; `CheckpointMismatchError` if absent."""
    if name not in state_dict:
        raise CheckpointMismatchError(source, missing=[name])
    return state_dict[name].shape


def count_indexed(state_dict: StateDict, prefix: str, suffix: str, *, start: int = 0) -> int:
    """How many consecutive `{prefix}{i}{suffix}` entries exist from i = start (stage depth)."""
    count = 0
    while f"{prefix}{start + count}{suffix}" in state_dict:
        count += 1
    return count
