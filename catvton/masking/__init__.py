"""The AutoMasker: DensePose and SCHP in plain PyTorch, and the cloth-type mask rules."""

from catvton.masking.automasker import MASKER_FILES, AutoMasker, MaskResult, load_automasker
from catvton.masking.debug import save_debug_maps
from catvton.masking.rules import CLOTH_TYPE_NAMES, CLOTH_TYPES, build_mask, parse_cloth_type
from catvton.masking.tiny import FigureMasker, with_figure_masks, write_tiny_masker_weights

__all__ = [
    "CLOTH_TYPES",
    "CLOTH_TYPE_NAMES",
    "MASKER_FILES",
    "AutoMasker",
    "FigureMasker",
    "MaskResult",
    "build_mask",
    "load_automasker",
    "parse_cloth_type",
    "save_debug_maps",
    "with_figure_masks",
    "write_tiny_masker_weights",
]
