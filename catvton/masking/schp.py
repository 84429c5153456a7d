"""SCHP human parsing: the ResNet-101 "AugmentCE2P" network and its inference, in plain PyTorch.

Self-Correction Human Parsing (Li et al., 2019) predicts one label per pixel (ATR: 18 classes,
LIP: 20). The module names follow the published checkpoints (`conv1`, `layer3.22.bn2`,
`fushion.3`, ...) so their state dicts load one to one. The original uses InPlaceABN: in eval mode
that is a frozen batch norm followed by leaky ReLU (slope 0.01), or a bare frozen batch norm where
it is built with activation "none" (inside the ResNet): `FrozenLeakyABN` and `FrozenABN` here.
Both scale by |weight| + eps, as InPlaceABN's kernels do (see `FrozenABN`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from catvton.masking.checkpoints import StateDict, count_indexed, tensor_shape

# BGR-ordered statistics: the network was trained on BGR images scaled to [0, 1].
SCHP_MEAN_BGR = (0.406, 0.456, 0.485)
SCHP_STD_BGR = (0.225, 0.224, 0.229)
BOTTLENECK_EXPANSION = 4
PYRAMID_SIZES = (1, 2, 3, 6)


INPLACE_ABN_SLOPE = 0.01  # InPlaceABN's default activation: leaky ReLU with this slope


class FrozenABN(FrozenBatchNorm2d):
    """InPlaceABN with activation "none", in eval mode: a frozen batch norm whose scale is
    |weight| + eps.

    InPlaceABN's kernels (SCHP's `modules/src`) always scale by |weight| + eps so that the
    normalisation can be inverted in place during training; the stored weight may therefore be
    negative, and a plain batch norm would flip the sign of such a channel.

    A deliberate deviation from CatVTON's reference, which loads these weights into a plain
    BatchNorm2d (it differs only for channels whose stored weight is negative): we normalise as
    the network was trained.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = (self.weight.abs() + self.eps) * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class FrozenLeakyABN(FrozenABN):
    """InPlaceABN with its default activation, in eval mode: `FrozenABN`, then leaky ReLU 0.01."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(super().forward(x), negative_slope=INPLACE_ABN_SLOPE)


def _conv_abn(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    padding = kernel_size // 2
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
    return nn.Sequential(conv, FrozenLeakyABN(out_channels))


@dataclass(frozen=True)
class SCHPConfig:
    """Widths and depths of an AugmentCE2P network; the defaults are the published ResNet-101.

    `training_heads`: whether the parsing-branch classifier (`decoder.conv4`) and the edge fusion
    (`edge.conv5`) are present. SCHP's network code defines both, but neither feeds the fusion
    logits, and the key list in our spec omits them; reading their presence from the file lets
    either layout load strictly.
    """

    num_classes: int
    stem_channels: tuple[int, ...] = (64, 64, 128)
    layer_planes: tuple[int, ...] = (64, 128, 256, 512)
    layer_blocks: tuple[int, ...] = (3, 4, 23, 3)
    context_channels: int = 512
    edge_channels: int = 256
    decoder_channels: int = 256
    decoder_skip_channels: int = 48
    fusion_channels: int = 256
    training_heads: bool = False

    @classmethod
    def from_state_dict(cls, state_dict: StateDict, source: str | Path) -> SCHPConfig:
        """Read the widths from tensor shapes, so one loader serves the real and the tiny files."""

        def out_channels(name: str) -> int:
            return tensor_shape(state_dict, name, source)[0]

        return cls(
            num_classes=out_channels("fushion.3.weight"),
            stem_channels=(
                out_channels("conv1.weight"),
                out_channels("conv2.weight"),
                out_channels("conv3.weight"),
            ),
            layer_planes=tuple(out_channels(f"layer{i}.0.conv1.weight") for i in range(1, 5)),
            layer_blocks=tuple(
                count_indexed(state_dict, f"layer{i}.", ".conv1.weight") for i in range(1, 5)
            ),
            context_channels=out_channels("context_encoding.bottleneck.0.weight"),
            edge_channels=out_channels("edge.conv1.0.weight"),
            decoder_channels=out_channels("decoder.conv1.0.weight"),
            decoder_skip_channels=out_channels("decoder.conv2.0.weight"),
            fusion_channels=out_channels("fushion.0.weight"),
            training_heads="decoder.conv4.weight" in state_dict
            or "edge.conv5.weight" in state_dict,
        )


class Bottleneck(nn.Module):
    """ResNet bottleneck with the stride on the 3x3 conv; no activation inside the batch norms."""

    def __init__(
        self, in_channels: int, planes: int, *, stride: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        out_channels = planes * BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = FrozenABN(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = FrozenABN(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = FrozenABN(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                FrozenABN(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class PyramidPooling(nn.Module):
    """PSP context: priors pooled to 1, 2, 3 and 6 cells, upsampled and fused with the input."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(size), *_conv_abn(in_channels, out_channels))
            for size in PYRAMID_SIZES
        )
        fused_channels = in_channels + len(PYRAMID_SIZES) * out_channels
        self.bottleneck = _conv_abn(fused_channels, out_channels, kernel_size=3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        size = features.shape[-2:]
        priors = [
            F.interpolate(stage(features), size=size, mode="bilinear", align_corners=True)
            for stage in self.stages
        ]
        return self.bottleneck(torch.cat([*priors, features], dim=1))


class EdgeBranch(nn.Module):
    """Edge features from layers 1-3 at layer-1 resolution.

    `conv4` (and `conv5`, see `SCHPConfig.training_heads`) predict the edge map used in training;
    inference only needs the features, but the layers stay so the checkpoints load strictly.
    """

    def __init__(self, config: SCHPConfig, in_channels: tuple[int, ...]) -> None:
        super().__init__()
        channels = config.edge_channels
        self.conv1 = _conv_abn(in_channels[0], channels)
        self.conv2 = _conv_abn(in_channels[1], channels)
        self.conv3 = _conv_abn(in_channels[2], channels)
        self.conv4 = nn.Conv2d(channels, 2, 3, padding=1)
        if config.training_heads:
            self.conv5 = nn.Conv2d(2 * 3, 2, 1)

    def forward(self, x2: torch.Tensor, x3: torch.Tensor, x4: torch.Tensor) -> torch.Tensor:
        size = x2.shape[-2:]
        features = [self.conv1(x2), self.conv2(x3), self.conv3(x4)]
        features = [
            F.interpolate(f, size=size, mode="bilinear", align_corners=True) if i else f
            for i, f in enumerate(features)
        ]
        return torch.cat(features, dim=1)


class ParsingDecoder(nn.Module):
    """Context features upsampled to layer-1 resolution and fused with a thin layer-1 skip.

    `conv4` (present with `SCHPConfig.training_heads`) is the parsing-branch classifier; the fusion
    branch supersedes it at inference, but it stays so such checkpoints load strictly.
    """

    def __init__(self, config: SCHPConfig, context_channels: int, skip_in_channels: int) -> None:
        super().__init__()
        width, skip = config.decoder_channels, config.decoder_skip_channels
        self.conv1 = _conv_abn(context_channels, width)
        self.conv2 = _conv_abn(skip_in_channels, skip)
        self.conv3 = nn.Sequential(*_conv_abn(width + skip, width), *_conv_abn(width, width))
        if config.training_heads:
            self.conv4 = nn.Conv2d(width, config.num_classes, 1)

    def forward(self, context: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        size = skip.shape[-2:]
        context = F.interpolate(self.conv1(context), size=size, mode="bilinear", align_corners=True)
        return self.conv3(torch.cat([context, self.conv2(skip)], dim=1))


class AugmentCE2P(nn.Module):
    """The SCHP network; `forward` gives the fusion logits at a quarter of the input size."""

    # Added by name in __init__ (the published keys): declared for the type checker.
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, config: SCHPConfig) -> None:
        super().__init__()
        stem1, stem2, stem3 = config.stem_channels
        self.conv1 = nn.Conv2d(3, stem1, 3, stride=2, padding=1, bias=False)
        self.bn1 = FrozenABN(stem1)
        self.conv2 = nn.Conv2d(stem1, stem2, 3, padding=1, bias=False)
        self.bn2 = FrozenABN(stem2)
        self.conv3 = nn.Conv2d(stem2, stem3, 3, padding=1, bias=False)
        self.bn3 = FrozenABN(stem3)

        # Layer 4 keeps stride 16 and dilates instead (a DeepLab-style backbone).
        in_channels = stem3
        layer_outputs = []
        for index, (planes, blocks) in enumerate(
            zip(config.layer_planes, config.layer_blocks, strict=True)
        ):
            stride, dilation = ((1, 1), (2, 1), (2, 1), (1, 2))[index]
            layer = [Bottleneck(in_channels, planes, stride=stride, dilation=dilation)]
            in_channels = planes * BOTTLENECK_EXPANSION
            layer += [Bottleneck(in_channels, planes, dilation=dilation) for _ in range(blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layer))
            layer_outputs.append(in_channels)

        self.context_encoding = PyramidPooling(layer_outputs[3], config.context_channels)
        self.edge = EdgeBranch(config, tuple(layer_outputs[:3]))
        self.decoder = ParsingDecoder(config, config.context_channels, layer_outputs[0])
        self.fushion = nn.Sequential(  # sic: the published key name
            *_conv_abn(config.decoder_channels + 3 * config.edge_channels, config.fusion_channels),
            nn.Dropout2d(0.1),
            nn.Conv2d(config.fusion_channels, config.num_classes, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(images)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x2 = self.layer1(x)  # (1, 256, S/4, S/4)
        x3 = self.layer2(x2)  # (1, 512, S/8, S/8)
        x4 = self.layer3(x3)  # (1, 1024, S/16, S/16)
        x5 = self.layer4(x4)  # (1, 2048, S/16, S/16)
        parsing_features = self.decoder(self.context_encoding(x5), x2)  # (1, 256, S/4, S/4)
        edge_features = self.edge(x2, x3, x4)  # (1, 768, S/4, S/4)
        return self.fushion(torch.cat([parsing_features, edge_features], dim=1))


def _square_warp(width: int, height: int, input_size: int) -> np.ndarray:
    """The 2x3 affine matrix that fits the whole image, centred, into the square network input.

    Matches SCHP's `get_affine_transform` for box (0, 0, w-1, h-1), no rotation: scale
    (S-1) / max(w-1, h-1), image centre onto square centre.
    """
    scale = (input_size - 1) / max(width - 1, height - 1, 1)
    shift_x = (input_size - 1) / 2 - scale * (width - 1) / 2
    shift_y = (input_size - 1) / 2 - scale * (height - 1) / 2
    return np.array([[scale, 0.0, shift_x], [0.0, scale, shift_y]])


@torch.inference_mode()
def parse_human(network: AugmentCE2P, image_bgr: np.ndarray, input_size: int) -> np.ndarray:
    """Label every pixel of an (H, W, 3) uint8 BGR image; returns an (H, W) uint8 label map.

    BGR is a deliberate deviation from CatVTON's reference, which feeds RGB when handed a PIL
    image: the network was trained on BGR (OpenCV-read) images with BGR statistics.

    1. warp the image onto the square input (bilinear, black border); 2. normalise; 3. fusion
    logits; 4. upsample to the square (bilinear, align_corners=True); 5. warp the logits back to
    the image (bilinear); 6. argmax.
    """
    height, width = image_bgr.shape[:2]
    parameter = next(network.parameters())
    device, dtype = parameter.device, parameter.dtype

    # 1. Fit the image into the square input.
    warp = _square_warp(width, height, input_size)
    square = cv2.warpAffine(
        image_bgr,
        warp,
        (input_size, input_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )

    # 2. To [0, 1], then BGR mean/std.
    pixels = torch.from_numpy(square).to(device).permute(2, 0, 1).unsqueeze(0).float() / 255
    mean = torch.tensor(SCHP_MEAN_BGR, device=device).view(1, 3, 1, 1)
    std = torch.tensor(SCHP_STD_BGR, device=device).view(1, 3, 1, 1)
    pixels = ((pixels - mean) / std).to(dtype)  # (1, 3, S, S)

    # 3-4. Fusion logits, upsampled to the square.
    logits = network(pixels).float()  # (1, C, S/4, S/4)
    logits = F.interpolate(
        logits, size=(input_size, input_size), mode="bilinear", align_corners=True
    )

    # 5. Sample the square where each image pixel landed; outside it is zero, as OpenCV's border.
    xs = torch.arange(width, device=device, dtype=torch.float32) * warp[0, 0] + warp[0, 2]
    ys = torch.arange(height, device=device, dtype=torch.float32) * warp[1, 1] + warp[1, 2]
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1) * (2 / (input_size - 1)) - 1  # (H, W, 2)
    logits = F.grid_sample(
        logits, grid.unsqueeze(0), mode="bilinear", padding_mode="zeros", align_corners=True
    )  # (1, C, H, W)

    # 6. One label per pixel.
    return logits[0].argmax(dim=0).to(torch.uint8).cpu().numpy()
