"""DensePose R50-FPN (detectron2 model zoo 165712039) as plain PyTorch modules.

The module tree mirrors detectron2's names (`backbone.bottom_up.res4.5.conv2.norm`,
`roi_heads.densepose_predictor.index_uv_lowres`, ...) so the published `.pkl` loads one to one.
Configuration facts come from `densepose_rcnn_R_50_FPN_s1x.yaml` and its base on top of
detectron2's defaults: FrozenBN everywhere in the ResNet, stride in the 1x1 conv (MSRA), FPN with
sum fusion and a max-pooled p6, 3 anchors per location, a two-FC box head, the DensePose decoder
and an 8-conv head. The inference that drives these modules lives in `detector.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from catvton.masking.checkpoints import StateDict, count_indexed, tensor_shape

STAGE_NAMES = ("res2", "res3", "res4", "res5")
ANCHOR_ASPECT_RATIOS = (0.5, 1.0, 2.0)
BOX_POOLER_RESOLUTION = 7
NUM_COARSE_SEGMENTS = 2  # foreground / background
NUM_FINE_SEGMENTS = 25  # background + 24 body parts
DECONV_KERNEL = 4


@dataclass(frozen=True)
class DensePoseConfig:
    """Widths and depths of the detector; the defaults are the published R50-FPN model."""

    stem_channels: int = 64
    stage_blocks: tuple[int, ...] = (3, 4, 6, 3)
    stage_bottleneck_channels: tuple[int, ...] = (64, 128, 256, 512)
    stage_out_channels: tuple[int, ...] = (256, 512, 1024, 2048)
    fpn_channels: int = 256
    box_head_channels: int = 1024
    decoder_channels: int = 256
    decoder_out_channels: int = 256
    head_channels: int = 512
    head_convs: int = 8

    @classmethod
    def from_state_dict(cls, state_dict: StateDict, source: str | Path) -> DensePoseConfig:
        """Read the widths from tensor shapes, so one loader serves the real and the tiny files."""

        def out_channels(name: str) -> int:
            return tensor_shape(state_dict, name, source)[0]

        stages = [f"backbone.bottom_up.{stage}." for stage in STAGE_NAMES]
        return cls(
            stem_channels=out_channels("backbone.bottom_up.stem.conv1.weight"),
            stage_blocks=tuple(count_indexed(state_dict, s, ".conv1.weight") for s in stages),
            stage_bottleneck_channels=tuple(out_channels(f"{s}0.conv1.weight") for s in stages),
            stage_out_channels=tuple(out_channels(f"{s}0.conv3.weight") for s in stages),
            fpn_channels=out_channels("backbone.fpn_lateral2.weight"),
            box_head_channels=out_channels("roi_heads.box_head.fc1.weight"),
            decoder_channels=out_channels("roi_heads.decoder.p2.0.weight"),
            decoder_out_channels=out_channels("roi_heads.decoder.predictor.weight"),
            head_channels=out_channels("roi_heads.densepose_head.body_conv_fcn1.weight"),
            head_convs=count_indexed(
                state_dict, "roi_heads.densepose_head.body_conv_fcn", ".weight", start=1
            ),
        )


class ConvNorm(nn.Conv2d):
    """detectron2's bias-free conv with a frozen batch norm child named `norm`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
        )
        self.norm = FrozenBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class ConvReLU(nn.Conv2d):
    """A 3x3 conv with bias followed by ReLU (detectron2's `Conv2d(..., activation=F.relu)`)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class BottleneckBlock(nn.Module):
    """ResNet bottleneck, MSRA style: the stride sits in the first 1x1 conv."""

    def __init__(self, in_channels: int, bottleneck: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride)
        self.conv1 = ConvNorm(in_channels, bottleneck, 1, stride)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3)
        self.conv3 = ConvNorm(bottleneck, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class Stem(nn.Module):
    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, 7, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """Returns res2..res5 (strides 4, 8, 16, 32)."""

    def __init__(self, config: DensePoseConfig) -> None:
        super().__init__()
        self.stem = Stem(config.stem_channels)
        in_channels = config.stem_channels
        for index, name in enumerate(STAGE_NAMES):
            bottleneck = config.stage_bottleneck_channels[index]
            out_channels = config.stage_out_channels[index]
            blocks = [
                BottleneckBlock(
                    in_channels if block == 0 else out_channels,
                    bottleneck,
                    out_channels,
                    stride=2 if block == 0 and index > 0 else 1,
                )
                for block in range(config.stage_blocks[index])
            ]
            self.add_module(name, nn.Sequential(*blocks))
            in_channels = out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
            features.append(x)
        return features


class FPN(nn.Module):
    """Feature pyramid p2..p6 (256 channels each), sum fusion, p6 = stride-2 subsampling of p5."""

    # Added by name in __init__ (the published keys): declared for the type checker.
    fpn_lateral5: nn.Conv2d
    fpn_output5: nn.Conv2d

    def __init__(self, config: DensePoseConfig) -> None:
        super().__init__()
        for level, in_channels in zip(range(2, 6), config.stage_out_channels, strict=True):
            self.add_module(f"fpn_lateral{level}", nn.Conv2d(in_channels, config.fpn_channels, 1))
            self.add_module(
                f"fpn_output{level}",
                nn.Conv2d(config.fpn_channels, config.fpn_channels, 3, padding=1),
            )
        self.bottom_up = ResNet(config)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        stages = self.bottom_up(images)
        top_down = self.fpn_lateral5(stages[3])
        outputs = [self.fpn_output5(top_down)]
        for level in (4, 3, 2):
            lateral = getattr(self, f"fpn_lateral{level}")(stages[level - 2])
            top_down = lateral + F.interpolate(top_down, scale_factor=2.0, mode="nearest")
            outputs.insert(0, getattr(self, f"fpn_output{level}")(top_down))
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return outputs  # p2, p3, p4, p5, p6


class RPNHead(nn.Module):
    """Shared 3x3 conv, then per-anchor objectness logits and box deltas on every pyramid level."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        num_anchors = len(ANCHOR_ASPECT_RATIOS)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        outputs = []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            outputs.append((self.objectness_logits(hidden), self.anchor_deltas(hidden)))
        return outputs


class ProposalGenerator(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.rpn_head = RPNHead(channels)


class BoxHead(nn.Module):
    """Two fully connected layers on 7x7 pooled features."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * BOX_POOLER_RESOLUTION**2, channels)
        self.fc2 = nn.Linear(channels, channels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(pooled.flatten(1)))))


class BoxPredictor(nn.Module):
    """Class logits (person, background: detectron2 puts background last) and box deltas."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(channels, 2)
        self.bbox_pred = nn.Linear(channels, 4)


class DensePoseDecoder(nn.Module):
    """Brings p2..p5 to stride 4 (conv + ReLU + 2x bilinear per octave) and sums them."""

    def __init__(self, config: DensePoseConfig) -> None:
        super().__init__()
        channels = config.decoder_channels
        for level in range(2, 6):
            ops: list[nn.Module] = []
            for step in range(max(1, level - 2)):
                ops.append(ConvReLU(config.fpn_channels if step == 0 else channels, channels))
                if level > 2:
                    ops.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            self.add_module(f"p{level}", nn.Sequential(*ops))
        self.predictor = nn.Conv2d(channels, config.decoder_out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        summed = sum(getattr(self, f"p{level}")(features[level - 2]) for level in range(2, 6))
        return self.predictor(summed)


class DensePoseHead(nn.Module):
    """Stacked 3x3 convs with ReLU on the 28x28 pooled decoder features."""

    def __init__(self, in_channels: int, channels: int, num_convs: int) -> None:
        super().__init__()
        for index in range(num_convs):
            conv = nn.Conv2d(in_channels if index == 0 else channels, channels, 3, padding=1)
            self.add_module(f"body_conv_fcn{index + 1}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.children():
            x = F.relu(conv(x))
        return x


class DensePosePredictor(nn.Module):
    """Transposed convs (x2) then bilinear x2: 28x28 features give 112x112 segmentation logits.

    `u_lowres` and `v_lowres` predict surface coordinates the masker does not use; they stay so the
    published checkpoint loads strictly.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()

        def deconv(out_channels: int) -> nn.ConvTranspose2d:
            padding = DECONV_KERNEL // 2 - 1
            return nn.ConvTranspose2d(in_channels, out_channels, DECONV_KERNEL, 2, padding)

        self.ann_index_lowres = deconv(NUM_COARSE_SEGMENTS)
        self.index_uv_lowres = deconv(NUM_FINE_SEGMENTS)
        self.u_lowres = deconv(NUM_FINE_SEGMENTS)
        self.v_lowres = deconv(NUM_FINE_SEGMENTS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coarse (N, 2, 4h, 4w) and fine (N, 25, 4h, 4w) segmentation logits."""

        def upscale(logits: torch.Tensor) -> torch.Tensor:
            return F.interpolate(logits, scale_factor=2.0, mode="bilinear", align_corners=False)

        return upscale(self.ann_index_lowres(x)), upscale(self.index_uv_lowres(x))


class ROIHeads(nn.Module):
    def __init__(self, config: DensePoseConfig) -> None:
        super().__init__()
        self.box_head = BoxHead(config.fpn_channels, config.box_head_channels)
        self.box_predictor = BoxPredictor(config.box_head_channels)
        self.decoder = DensePoseDecoder(config)
        self.densepose_head = DensePoseHead(
            config.decoder_out_channels, config.head_channels, config.head_convs
        )
        self.densepose_predictor = DensePosePredictor(config.head_channels)


class DensePoseRCNN(nn.Module):
    """Container with detectron2's top-level names; `detector.detect_densepose` runs it."""

    def __init__(self, config: DensePoseConfig) -> None:
        super().__init__()
        self.backbone = FPN(config)
        self.proposal_generator = ProposalGenerator(config.fpn_channels)
        self.roi_heads = ROIHeads(config)
