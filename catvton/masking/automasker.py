"""The AutoMasker: DensePose and two SCHP parsers, then the cloth-type rules, on one device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catvton.devices import choose_dtype
from catvton.errors import DOWNLOAD_COMMAND, InvalidInputError, WeightsNotFoundError
from catvton.masking.checkpoints import (
    StateDict,
    load_state_dict_strictly,
    read_detectron2_pkl,
    read_schp_pth,
)
from catvton.masking.densepose import DensePoseConfig, DensePoseRCNN
from catvton.masking.detector import detect_densepose
from catvton.masking.rules import build_mask, parse_cloth_type
from catvton.masking.schp import AugmentCE2P, SCHPConfig, parse_human

SCHP_ATR_FILE = "SCHP/exp-schp-201908301523-atr.pth"
SCHP_LIP_FILE = "SCHP/exp-schp-201908261155-lip.pth"
DENSEPOSE_FILE = "DensePose/model_final_162be9.pkl"
MASKER_FILES = (SCHP_ATR_FILE, SCHP_LIP_FILE, DENSEPOSE_FILE)
ATR_INPUT_SIZE = 512  # the sizes each parser was trained at
LIP_INPUT_SIZE = 473

# Entries some detectron2 checkpoints carry that are not weights: detectron2 recomputes anchors and
# takes the pixel statistics from the config, and so do we.
_DETECTRON2_DERIVED_PREFIXES = ("proposal_generator.anchor_generator.cell_anchors.",)
_DETECTRON2_DERIVED_NAMES = ("pixel_mean", "pixel_std")


@dataclass(frozen=True)
class MaskResult:
    """The repaint mask and the three label maps it was built from, all at the input size.

    mask: PIL "L" with values 0 and 255 (255 = repaint). densepose (0..24), atr (0..17) and
    lip (0..19): (H, W) uint8 label maps.
    """

    mask: Image.Image
    densepose: np.ndarray
    atr: np.ndarray
    lip: np.ndarray


class AutoMasker:
    """Finds the region to repaint for a cloth type on a person photo.

    Takes ready networks (see `load_automasker`); its device is independent of the try-on
    pipeline's, so a small GPU can keep the masker on the CPU.
    """

    def __init__(
        self, densepose: DensePoseRCNN, schp_atr: AugmentCE2P, schp_lip: AugmentCE2P
    ) -> None:
        self.densepose = densepose
        self.schp_atr = schp_atr
        self.schp_lip = schp_lip

    @property
    def device(self) -> torch.device:
        return next(self.densepose.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.densepose.parameters()).dtype

    def __call__(self, person_image: Image.Image, cloth_type: str) -> MaskResult:
        """Mask `person_image` (already cropped to the working size) for `cloth_type`.

        Raises `InvalidInputError` for an unknown cloth type or an input that is not an image or
        is empty.
        """
        cloth_type = parse_cloth_type(cloth_type)
        if not isinstance(person_image, Image.Image):
            raise InvalidInputError(
                f"person_image must be a PIL image; got {type(person_image).__name__}"
            )
        if min(person_image.size) < 1:
            raise InvalidInputError(
                f"person_image must not be empty; got {person_image.width}x{person_image.height}"
            )
        person_image = person_image.convert("RGB")
        # SCHP gets BGR, as it was trained: a deliberate deviation from the reference, which feeds
        # it RGB when handed a PIL image (see `parse_human`).
        person_bgr = np.ascontiguousarray(np.asarray(person_image)[:, :, ::-1])  # (H, W, 3)

        # 1. Body parts of the top-scoring person.
        densepose = detect_densepose(self.densepose, person_image)
        # 2. Human parsing, ATR and LIP label sets.
        atr = parse_human(self.schp_atr, person_bgr, ATR_INPUT_SIZE)
        lip = parse_human(self.schp_lip, person_bgr, LIP_INPUT_SIZE)
        # 3. The cloth-type rules.
        mask = build_mask(densepose, atr, lip, cloth_type)
        return MaskResult(
            mask=Image.fromarray(mask, mode="L"), densepose=densepose, atr=atr, lip=lip
        )


def choose_masker_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The given dtype (``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype), else fp32 on every
    device, CUDA included, as the reference runs the masker: a flipped label moves the mask, and
    the three networks cost little next to the denoising steps. fp16 is for those who measure it
    as equal on their GPU."""
    return torch.float32 if dtype is None else choose_dtype(dtype, device)


def _detectron2_derived(state_dict: StateDict) -> list[str]:
    return [
        name
        for name in state_dict
        if name.startswith(_DETECTRON2_DERIVED_PREFIXES) or name in _DETECTRON2_DERIVED_NAMES
    ]


def load_densepose(path: Path) -> DensePoseRCNN:
    """The DensePose network from a detectron2 `.pkl`, widths read from its tensor shapes."""
    state_dict = read_detectron2_pkl(path)
    with torch.device("meta"):
        network = DensePoseRCNN(DensePoseConfig.from_state_dict(state_dict, path))
    return load_state_dict_strictly(
        network, state_dict, path, ignored=_detectron2_derived(state_dict)
    )


def load_schp(path: Path) -> AugmentCE2P:
    """An SCHP network from its `.pth`, widths and class count read from its tensor shapes."""
    state_dict = read_schp_pth(path)
    with torch.device("meta"):
        network = AugmentCE2P(SCHPConfig.from_state_dict(state_dict, path))
    return load_state_dict_strictly(network, state_dict, path)


def load_automasker(
    catvton_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> AutoMasker:
    """Load the three published masker checkpoints from the CatVTON folder onto `device`.

    `catvton_dir` holds `SCHP/` and `DensePose/` as in the hub repo `zhengchong/CatVTON`.
    `dtype` defaults to fp32 on every device (see `choose_masker_dtype`). Raises
    `WeightsNotFoundError` naming the first missing file and `CheckpointMismatchError` naming any
    missing, unexpected or mis-shaped tensor.
    """
    catvton_dir = Path(catvton_dir)
    for relative in MASKER_FILES:
        if not (catvton_dir / relative).is_file():
            raise WeightsNotFoundError(
                catvton_dir / relative,
                fix=f"Fetch it with {DOWNLOAD_COMMAND}, whose CatVTON/ folder holds SCHP/ and "
                "DensePose/ as in the hub repo zhengchong/CatVTON.",
            )
    device = torch.device(device)
    dtype = choose_masker_dtype(dtype, device)
    densepose = load_densepose(catvton_dir / DENSEPOSE_FILE).to(device=device, dtype=dtype)
    # channels_last ran the detector about 20% faster on a 2-core CPU (interleaved A/B at
    # 768 x 1024); for SCHP the same A/B showed no clear gain, so it keeps the default layout.
    densepose = densepose.to(memory_format=torch.channels_last)
    schp_atr = load_schp(catvton_dir / SCHP_ATR_FILE).to(device=device, dtype=dtype)
    schp_lip = load_schp(catvton_dir / SCHP_LIP_FILE).to(device=device, dtype=dtype)
    return AutoMasker(densepose, schp_atr, schp_lip)
