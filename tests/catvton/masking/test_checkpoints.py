"""Loading the masker checkpoints: real-size files in the published formats, and refusals.

Real-size files are built from the networks' own key lists with random values, written in the
published format and read back through the loader that reads the real files.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from catvton.errors import CheckpointMismatchError, WeightsNotFoundError
from catvton.masking import MASKER_FILES, load_automasker
from catvton.masking.automasker import (
    DENSEPOSE_FILE,
    SCHP_ATR_FILE,
    load_densepose,
    load_schp,
)
from catvton.masking.checkpoints import read_detectron2_pkl, read_schp_pth
from catvton.masking.densepose import DensePoseConfig, DensePoseRCNN
from catvton.masking.schp import AugmentCE2P, SCHPConfig
from catvton.masking.tiny import random_state_dict, save_detectron2_pkl, save_schp_checkpoint


def real_size_weights(network_class: type, config: object) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        network = network_class(config)
    return random_state_dict(network, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_real_size_schp_loads_in_both_torch_formats(tmp_path: Path, legacy_format: bool) -> None:
    weights = real_size_weights(AugmentCE2P, SCHPConfig(num_classes=18))
    path = tmp_path / SCHP_ATR_FILE
    save_schp_checkpoint(path, weights, legacy_format=legacy_format)
    with open(path, "rb") as handle:  # the zip format starts with a zip header, legacy does not
        assert (handle.read(2) == b"PK") is not legacy_format

    network = load_schp(path)

    assert SCHPConfig.from_state_dict(read_schp_pth(path), path) == SCHPConfig(num_classes=18)
    assert torch.equal(network.layer3[22].conv2.weight, weights["layer3.22.conv2.weight"])
    assert torch.equal(network.fushion[3].bias, weights["fushion.3.bias"])
    assert not any(parameter.requires_grad for parameter in network.parameters())


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_schp_file_with_numpy_metrics_beside_the_weights_loads(
    masker_dir: Path, tmp_path: Path, legacy_format: bool
) -> None:
    """Training scripts store numpy scalars and arrays next to `state_dict`; they are data."""
    checkpoint = torch.load(masker_dir / SCHP_ATR_FILE, weights_only=True)
    checkpoint.update(miou=np.float64(0.8), epoch=150, history=np.zeros(3, dtype=np.float32))
    path = tmp_path / "with_metrics.pth"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)
    load_schp(path)


def test_schp_file_written_under_numpy_1_loads(masker_dir: Path, tmp_path: Path) -> None:
    """Files from 2019 name numpy 1's `numpy.core.multiarray`; numpy 2 writes `numpy._core`."""
    checkpoint = torch.load(masker_dir / SCHP_ATR_FILE, weights_only=True)
    checkpoint.update(miou=np.float64(0.8), history=np.zeros(3, dtype=np.float32))
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "numpy1.pth"
    # The legacy format's pickle names globals as newline-ended text: renaming needs no offsets.
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))

    load_schp(path)


def test_schp_file_with_the_training_heads_loads(masker_dir: Path, tmp_path: Path) -> None:
    """SCHP's code also saves `decoder.conv4` and `edge.conv5`; such a file loads strictly too."""
    weights = read_schp_pth(masker_dir / SCHP_ATR_FILE)
    width = weights["decoder.conv3.2.weight"].shape[0]
    weights["decoder.conv4.weight"] = torch.ones(18, width, 1, 1)
    weights["decoder.conv4.bias"] = torch.ones(18)
    weights["edge.conv5.weight"] = torch.ones(2, 6, 1, 1)
    weights["edge.conv5.bias"] = torch.ones(2)
    save_schp_checkpoint(tmp_path / "with_heads.pth", weights)

    network = load_schp(tmp_path / "with_heads.pth")

    assert torch.equal(network.decoder.conv4.bias, torch.ones(18))
    assert torch.equal(network.edge.conv5.weight, torch.ones(2, 6, 1, 1))


def test_real_size_densepose_pkl_loads(tmp_path: Path) -> None:
    weights = real_size_weights(DensePoseRCNN, DensePoseConfig())
    path = tmp_path / DENSEPOSE_FILE
    save_detectron2_pkl(path, weights)

    network = load_densepose(path)

    name = "roi_heads.densepose_predictor.index_uv_lowres.weight"
    assert torch.equal(network.state_dict()[name], weights[name])
    assert torch.equal(
        network.backbone.bottom_up.res4[5].conv2.norm.running_var,
        weights["backbone.bottom_up.res4.5.conv2.norm.running_var"],
    )


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_detectron2_pkl_of_any_pickle_protocol_loads(
    masker_dir: Path, tmp_path: Path, protocol: int
) -> None:
    weights = read_detectron2_pkl(masker_dir / DENSEPOSE_FILE)
    arrays = {name: tensor.numpy() for name, tensor in weights.items()}
    path = tmp_path / f"protocol{protocol}.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "test"}, protocol=protocol))
    network = load_densepose(path)
    name = "roi_heads.densepose_head.body_conv_fcn2.weight"
    assert torch.equal(network.state_dict()[name], weights[name])


def test_detectron2_entries_that_are_not_weights_are_skipped(masker_dir: Path, tmp_path: Path):
    """Some detectron2 files also carry anchors; detectron2 recomputes them, and so do we."""
    weights = read_detectron2_pkl(masker_dir / DENSEPOSE_FILE)
    weights["proposal_generator.anchor_generator.cell_anchors.0"] = torch.zeros(3, 4)
    save_detectron2_pkl(tmp_path / "with_anchors.pkl", weights)
    load_densepose(tmp_path / "with_anchors.pkl")


def test_missing_file_is_named(masker_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(masker_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / MASKER_FILES[1]).unlink()
    with pytest.raises(WeightsNotFoundError, match=r"exp-schp-201908261155-lip\.pth"):
        load_automasker(tmp_path)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda w: w.pop("layer2.0.conv2.weight"), "missing keys: layer2.0.conv2.weight"),
        (lambda w: w.update(extra=torch.zeros(1)), "unexpected keys: extra"),
        (
            lambda w: w.update({"fushion.3.bias": torch.zeros(7)}),
            r"mis-shaped tensors: fushion.3.bias \(checkpoint \[7\], network \[18\]\)",
        ),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_schp_checkpoint_that_does_not_match_is_refused_with_names(
    masker_dir: Path, tmp_path: Path, tamper, message: str
) -> None:
    weights = read_schp_pth(masker_dir / SCHP_ATR_FILE)
    tamper(weights)
    save_schp_checkpoint(tmp_path / "tampered.pth", weights)
    with pytest.raises(CheckpointMismatchError, match=message):
        load_schp(tmp_path / "tampered.pth")


def test_densepose_checkpoint_with_a_renamed_key_is_refused(masker_dir: Path, tmp_path: Path):
    weights = read_detectron2_pkl(masker_dir / DENSEPOSE_FILE)
    weights["roi_heads.box_head.fc3.weight"] = weights.pop("roi_heads.box_head.fc2.weight")
    save_detectron2_pkl(tmp_path / "renamed.pkl", weights)
    with pytest.raises(CheckpointMismatchError) as error:
        load_densepose(tmp_path / "renamed.pkl")
    assert error.value.missing == ["roi_heads.box_head.fc2.weight"]
    assert error.value.unexpected == ["roi_heads.box_head.fc3.weight"]


@pytest.mark.parametrize("value", [3, [1.0], torch.ones(2, dtype=torch.complex64)])
def test_schp_entry_that_is_not_a_real_tensor_is_refused_by_name(tmp_path: Path, value) -> None:
    torch.save({"state_dict": {"module.conv1.weight": value}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointMismatchError, match=r"conv1\.weight \(not a real-valued tensor"):
        load_schp(tmp_path / "odd.pth")


@pytest.mark.parametrize(
    "value", [{"nested": 1}, np.array(["text"]), np.array([1, "x"], dtype=object), np.ones(2, "c8")]
)
def test_detectron2_entry_that_is_not_a_real_array_is_refused_by_name(tmp_path: Path, value):
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.fpn_lateral2.weight": value}}))
    with pytest.raises(
        CheckpointMismatchError, match=r"lateral2\.weight \(not a real-valued array"
    ):
        load_densepose(path)


@pytest.mark.parametrize("file_name", [SCHP_ATR_FILE, DENSEPOSE_FILE])
def test_truncated_file_is_refused(masker_dir: Path, tmp_path: Path, file_name: str) -> None:
    data = (masker_dir / file_name).read_bytes()
    path = tmp_path / Path(file_name).name
    path.write_bytes(data[: len(data) // 2])
    loader = load_schp if file_name.endswith(".pth") else load_densepose
    with pytest.raises(CheckpointMismatchError, match="unreadable"):
        loader(path)


class _RunsCommand:
    """Pickles to a call of `function(*arguments)`: what a hostile weights file would carry."""

    def __init__(self, function, *arguments) -> None:
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


@pytest.mark.parametrize(
    "make_payload",
    [
        lambda marker: _RunsCommand(os.system, f"touch {marker}"),
        lambda marker: _RunsCommand(subprocess.call, ["touch", str(marker)]),
    ],
    ids=["os.system", "subprocess.call"],
)
def test_pickle_that_imports_os_or_subprocess_is_refused(tmp_path: Path, make_payload) -> None:
    marker = tmp_path / "code-ran"
    payload = {"model": {"backbone.fpn_lateral2.weight": np.zeros(1)}, "x": make_payload(marker)}
    pkl_path, pth_path = tmp_path / "evil.pkl", tmp_path / "evil.pth"
    pkl_path.write_bytes(pickle.dumps(payload))
    torch.save({"state_dict": {}, "x": make_payload(marker)}, pth_path)

    with pytest.raises(CheckpointMismatchError, match="refusing to load global"):
        load_densepose(pkl_path)
    with pytest.raises(CheckpointMismatchError, match="unreadable checkpoint"):
        load_schp(pth_path)
    assert not marker.exists()
