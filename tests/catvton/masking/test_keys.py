"""The real-size networks have exactly the tensor names and shapes of the three published files.

The key lists in `keys/` are copied from the spec (`shared/spec/checkpoints/`). The networks are
built on the meta device: no memory, no time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from catvton.masking.densepose import DensePoseConfig, DensePoseRCNN
from catvton.masking.schp import AugmentCE2P, SCHPConfig

KEYS_DIR = Path(__file__).parent / "keys"
SCHP_TRAINING_HEADS = {
    "module.decoder.conv4.weight",
    "module.decoder.conv4.bias",
    "module.edge.conv5.weight",
    "module.edge.conv5.bias",
}


def read_keys(file_name: str) -> dict[str, list[int]]:
    keys = {}
    for line in (KEYS_DIR / f"{file_name}.keys.txt").read_text().splitlines():
        name, shape = line.split("\t")
        keys[name] = [int(size) for size in shape.strip("[]").split(",") if size.strip()]
    return keys


def network_keys(network: torch.nn.Module, prefix: str = "") -> dict[str, list[int]]:
    return {f"{prefix}{name}": list(t.shape) for name, t in network.state_dict().items()}


@pytest.mark.parametrize(
    ("file_name", "num_classes"),
    [("exp-schp-201908301523-atr.pth", 18), ("exp-schp-201908261155-lip.pth", 20)],
)
def test_schp_keys_match_the_published_list(file_name: str, num_classes: int) -> None:
    expected = read_keys(file_name)
    with torch.device("meta"):
        network = AugmentCE2P(SCHPConfig(num_classes=num_classes))
    assert network_keys(network, "module.") == expected
    assert list(network_keys(network, "module.")) == list(expected)  # same order too
    assert len(expected) == 599
    assert sum(torch.Size(shape).numel() for shape in expected.values()) == pytest.approx(
        66.8e6, 1e-3
    )


def test_schp_with_training_heads_adds_exactly_the_two_unused_classifiers() -> None:
    """SCHP's network code also defines `decoder.conv4` and `edge.conv5`; files may hold them."""
    expected = read_keys("exp-schp-201908301523-atr.pth")
    with torch.device("meta"):
        network = AugmentCE2P(SCHPConfig(num_classes=18, training_heads=True))
    keys = network_keys(network, "module.")
    assert keys.keys() - expected.keys() == SCHP_TRAINING_HEADS
    assert {name: keys[name] for name in expected} == expected
    assert keys["module.decoder.conv4.weight"] == [18, 256, 1, 1]
    assert keys["module.edge.conv5.weight"] == [2, 6, 1, 1]


def test_densepose_keys_match_the_published_list() -> None:
    expected = read_keys("model_final_162be9.pkl")
    with torch.device("meta"):
        network = DensePoseRCNN(DensePoseConfig())
    assert network_keys(network) == expected
    assert list(network_keys(network)) == list(expected)
    assert len(expected) == 335
    assert sum(torch.Size(shape).numel() for shape in expected.values()) == pytest.approx(
        63.9e6, 1e-3
    )


def test_configs_read_back_from_the_published_shapes() -> None:
    """The width reader gives the published configs back from (meta) state dicts of that layout."""
    with torch.device("meta"):
        schp = AugmentCE2P(SCHPConfig(num_classes=20, training_heads=True))
        densepose = DensePoseRCNN(DensePoseConfig())
    assert SCHPConfig.from_state_dict(schp.state_dict(), "lip") == SCHPConfig(
        20, training_heads=True
    )
    assert DensePoseConfig.from_state_dict(densepose.state_dict(), "dp") == DensePoseConfig()
