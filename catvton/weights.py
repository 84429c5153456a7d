"""Where the weights live: a weights folder, local folders or hub ids -> verified local files.

One weights folder holds one subfolder per published hub repo, named after the repo::

    WEIGHTS/
      stable-diffusion-inpainting/unet/{config.json, diffusion_pytorch_model.safetensors}
      stable-diffusion-inpainting/scheduler/scheduler_config.json
      sd-vae-ft-mse/{config.json, diffusion_pytorch_model.safetensors}
      CatVTON/mix-48k-1024/attention/model.safetensors   (and the other attention versions)
      CatVTON/SCHP/..., CatVTON/DensePose/...            (the AutoMasker's files)

``python -m catvton download WEIGHTS`` fills it with huggingface_hub, fetching only these files.
Nothing here reads tensors: ``catvton.loading`` turns the verified paths into networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download, list_repo_files
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from catvton.errors import DOWNLOAD_COMMAND, InvalidInputError, WeightsNotFoundError
from catvton.masking import MASKER_FILES

DEFAULT_BASE_MODEL = "booksforcharlie/stable-diffusion-inpainting"
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
DEFAULT_CATVTON = "zhengchong/CatVTON"

BASE_MODEL_FOLDER = "stable-diffusion-inpainting"
VAE_FOLDER = "sd-vae-ft-mse"
CATVTON_FOLDER = "CatVTON"

ATTENTION_VERSIONS = ("mix-48k-1024", "vitonhd-16k-512", "dresscode-16k-512")
DEFAULT_ATTENTION_VERSION = "mix-48k-1024"

UNET_CONFIG = "unet/config.json"
# In order of preference. The default mirror ships only the pickled ``.bin`` (diffusers reads it
# with ``torch.load(weights_only=True)``); stable-diffusion-v1-5/stable-diffusion-inpainting also
# ships the fp16 safetensors, half the download, which loads into any dtype.
UNET_WEIGHTS = (
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin",
)
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")

# The flag that points at a weights folder: spelled the same by `python -m app` and by the CLI's
# tryon and mask commands, so one message fits whichever command the user ran.
WEIGHTS_DIR_FLAG = "--weights-dir"
# The flag that names one component's folder or hub id (the same in the server and the CLI).
COMPONENT_FLAGS = {
    BASE_MODEL_FOLDER: "--base-model",
    VAE_FOLDER: "--vae",
    CATVTON_FOLDER: "--catvton",
}
DOWNLOAD_FIX = (
    f"Fetch the weights with: {DOWNLOAD_COMMAND} (or write test weights with "
    "python -m catvton make-tiny-weights DIR)."
)


def attention_file_name(version: str) -> str:
    """Path of an attention version's checkpoint inside the CatVTON repo."""
    return f"{version}/attention/model.safetensors"


@dataclass(frozen=True)
class ResolvedWeights:
    """Local, verified paths of every file the pipeline (and, optionally, the AutoMasker) reads."""

    unet_dir: Path
    unet_weights: Path  # the file in unet_dir that is read: see UNET_WEIGHTS
    scheduler_dir: Path
    vae_dir: Path
    attention_file: Path
    catvton_dir: Path
    attention_version: str = DEFAULT_ATTENTION_VERSION


@dataclass(frozen=True)
class WeightSources:
    """Where each component comes from.

    Each of ``base_model``, ``vae`` and ``catvton`` is a local folder (laid out like its hub repo)
    or a hub id; when left out it is the matching subfolder of ``weights_dir``, or, without
    ``weights_dir``, the default hub repo. Hub ids go through huggingface_hub's cache (offline when
    ``HF_HUB_OFFLINE=1``).
    """

    weights_dir: Path | None = None
    base_model: str | Path | None = None
    vae: str | Path | None = None
    catvton: str | Path | None = None
    attention_version: str = DEFAULT_ATTENTION_VERSION

    def resolve(self, *, require_masker: bool = False) -> ResolvedWeights:
        """Find every file locally (or in the hub cache) and return their paths.

        ``require_masker=True`` also checks the AutoMasker's files (``MASKER_FILES``) in the CatVTON
        folder. Raises WeightsNotFoundError naming the first missing file and the command that
        fetches it, InvalidInputError for an unknown ``attention_version``.
        """
        if self.attention_version not in ATTENTION_VERSIONS:
            raise InvalidInputError(
                f"attention_version must be one of {', '.join(ATTENTION_VERSIONS)}; "
                f"got {self.attention_version!r}"
            )
        base = self._component(self.base_model, BASE_MODEL_FOLDER, DEFAULT_BASE_MODEL)
        vae = self._component(self.vae, VAE_FOLDER, DEFAULT_VAE)
        catvton = self._component(self.catvton, CATVTON_FOLDER, DEFAULT_CATVTON)

        unet_config = base.file(UNET_CONFIG)
        unet_weights = base.first_file(UNET_WEIGHTS)
        scheduler_config = base.file(SCHEDULER_CONFIG)
        vae_config = vae.file(VAE_FILES[0])
        vae.file(VAE_FILES[1])
        attention_file = catvton.file(attention_file_name(self.attention_version))
        if require_masker:
            for name in MASKER_FILES:
                catvton.file(name)
        return ResolvedWeights(
            unet_dir=unet_config.parent,
            unet_weights=unet_weights,
            scheduler_dir=scheduler_config.parent,
            vae_dir=vae_config.parent,
            attention_file=attention_file,
            catvton_dir=_repo_root(attention_file, attention_file_name(self.attention_version)),
            attention_version=self.attention_version,
        )

    def _component(self, given: str | Path | None, folder: str, default_repo: str) -> _Component:
        if given is None:
            if self.weights_dir is None:
                return _Component(repo_id=default_repo)
            return _Component(local_dir=Path(self.weights_dir) / folder, fix=DOWNLOAD_FIX)
        if Path(given).is_dir():
            return _Component(
                local_dir=Path(given),
                fix=f"Copy {folder}'s files there, or run {DOWNLOAD_COMMAND} and pass "
                f"{COMPONENT_FLAGS[folder]} DIR/{folder}.",
            )
        if isinstance(given, Path) or not _is_repo_id(str(given)):
            raise WeightsNotFoundError(
                given, fix=f"Give a folder that exists or a hub id like {default_repo!r}."
            )
        return _Component(repo_id=str(given))


@dataclass(frozen=True)
class _Component:
    """One published repo: a local folder laid out like it, or its hub id (via the hub cache)."""

    local_dir: Path | None = None
    repo_id: str | None = None
    fix: str = ""

    def file(self, name: str) -> Path:
        """Local path of ``name``; raises WeightsNotFoundError naming it."""
        if self.local_dir is not None:
            path = self.local_dir / name
            if not path.is_file():
                raise WeightsNotFoundError(path, fix=self.fix)
            return path
        assert self.repo_id is not None, "a weights source is a folder or a hub id"
        try:
            return Path(hf_hub_download(self.repo_id, name))
        except LocalEntryNotFoundError as error:
            raise WeightsNotFoundError(
                f"{self.repo_id}/{name}",
                fix=f"Not in the hub cache and the hub cannot be reached "
                f"({error.__class__.__name__}); unset HF_HUB_OFFLINE to fetch it, or run "
                f"{DOWNLOAD_COMMAND} and pass {WEIGHTS_DIR_FLAG} DIR.",
            ) from error
        except (EntryNotFoundError, HfHubHTTPError) as error:
            raise WeightsNotFoundError(
                f"{self.repo_id}/{name}", fix=f"The hub refused it: {error}"
            ) from error

    def first_file(self, names: tuple[str, ...]) -> Path:
        """The first of ``names`` that the folder (or hub repo) has; else the error for names[0]."""
        errors: list[WeightsNotFoundError] = []
        for name in names:
            try:
                return self.file(name)
            except WeightsNotFoundError as error:
                errors.append(error)
        raise errors[0]


def _is_repo_id(text: str) -> bool:
    """``owner/name`` as the hub spells it; ``./weights`` (a folder that is not there) is not."""
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return text.count("/") == 1


def _repo_root(path: Path, name: str) -> Path:
    """The repo root that holds ``path`` as ``name`` (a hub-cache snapshot folder too)."""
    return path.parents[len(Path(name).parts) - 1]


def download_weights(
    weights_dir: Path,
    *,
    base_model: str = DEFAULT_BASE_MODEL,
    attention_versions: tuple[str, ...] = (DEFAULT_ATTENTION_VERSION,),
    include_masker: bool = True,
) -> Path:
    """Fill ``weights_dir`` from the hub with exactly the files the pipeline (and masker) read.

    ``base_model`` is the SD-1.5 inpainting repo; its UNet file is the first of ``UNET_WEIGHTS``
    that the repo ships. Honours ``HF_HUB_OFFLINE``: files already in ``weights_dir`` are kept,
    nothing else is fetched. Raises WeightsNotFoundError naming the file it could not fetch.
    Returns ``weights_dir``.
    """
    weights_dir = Path(weights_dir)
    base_dir = weights_dir / BASE_MODEL_FOLDER
    plan = {
        (base_model, BASE_MODEL_FOLDER): [UNET_CONFIG, SCHEDULER_CONFIG],
        (DEFAULT_VAE, VAE_FOLDER): list(VAE_FILES),
        (DEFAULT_CATVTON, CATVTON_FOLDER): [
            *(attention_file_name(version) for version in attention_versions),
            *(MASKER_FILES if include_masker else ()),
        ],
    }
    for (repo_id, folder), names in plan.items():
        for name in names:
            _fetch(repo_id, name, weights_dir / folder)
    if not any((base_dir / name).is_file() for name in UNET_WEIGHTS):
        _fetch(base_model, _unet_weights_in(base_model), base_dir)
    return weights_dir


def _unet_weights_in(repo_id: str) -> str:
    """The preferred UNet weights file among those the hub repo ships."""
    try:
        available = set(list_repo_files(repo_id))
    except (HfHubHTTPError, HFValidationError, OSError) as error:
        raise WeightsNotFoundError(
            f"{repo_id}/{UNET_WEIGHTS[0]}", fix=f"Listing the repo's files failed: {error}"
        ) from error
    for name in UNET_WEIGHTS:
        if name in available:
            return name
    raise WeightsNotFoundError(
        f"{repo_id}/{UNET_WEIGHTS[0]}",
        fix=f"The repo ships none of {', '.join(UNET_WEIGHTS)}; is it an SD-1.5 inpainting repo?",
    )


def _fetch(repo_id: str, name: str, local_dir: Path) -> None:
    try:
        hf_hub_download(repo_id, name, local_dir=local_dir)
    except (
        LocalEntryNotFoundError,
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
    ) as error:
        raise WeightsNotFoundError(
            f"{repo_id}/{name}", fix=f"Downloading it failed: {error}"
        ) from error
