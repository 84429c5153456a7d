"""DensePose inference as detectron2's `DefaultPredictor` and CatVTON's wrapper run it.

From an RGB image to a per-pixel body-part map (0 background, 1..24 parts) of the top-scoring
person: resize, RPN proposals, box scoring and regression, then the DensePose head on the one box
that is kept. Constants are the published config's (`densepose_rcnn_R_50_FPN_s1x.yaml` on top of
detectron2's defaults) and CatVTON's (score threshold 0.8, input capped at 1024 px).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import batched_nms, roi_align

from catvton.masking.densepose import ANCHOR_ASPECT_RATIOS, BOX_POOLER_RESOLUTION, DensePoseRCNN

MAX_INPUT_SIDE = 1024  # CatVTON downscales larger images before the detector's own resize
TEST_SHORT_EDGE = 800
TEST_MAX_SIZE = 1333
PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)  # std 1: the MSRA ResNet takes raw 0..255 BGR
SIZE_DIVISIBILITY = 32  # FPN needs every level to halve exactly
FEATURE_STRIDES = (4, 8, 16, 32, 64)  # p2..p6
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one size per level
RPN_PRE_NMS_TOPK = 1000  # per level
RPN_POST_NMS_TOPK = 1000
RPN_NMS_THRESHOLD = 0.7
BOX_REGRESSION_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
SCORE_THRESHOLD = 0.8
DENSEPOSE_POOLER_RESOLUTION = 28
POOLER_SAMPLING_RATIO = 2
SCALE_CLAMP = math.log(1000.0 / 16)  # largest log-size change a delta may ask for


def shortest_edge_size(height: int, width: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge(800, max 1333) output size (height, width)."""
    scale = TEST_SHORT_EDGE / min(height, width)
    new_height, new_width = height * scale, width * scale
    if max(new_height, new_width) > TEST_MAX_SIZE:
        shrink = TEST_MAX_SIZE / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return int(new_height + 0.5), int(new_width + 0.5)


def grid_anchors(feature: torch.Tensor, stride: int, size: int) -> torch.Tensor:
    """(H*W*A, 4) XYXY anchors of one level: location-major, aspect ratio minor, offset 0."""
    device = feature.device
    ratios = torch.tensor(ANCHOR_ASPECT_RATIOS, device=device)
    widths = torch.sqrt(size**2 / ratios)
    heights = widths * ratios
    cell = torch.stack([-widths, -heights, widths, heights], dim=1) / 2  # (A, 4)
    height, width = feature.shape[-2:]
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell).reshape(-1, 4)


def apply_deltas(
    deltas: torch.Tensor, boxes: torch.Tensor, weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
) -> torch.Tensor:
    """detectron2's Box2BoxTransform.apply_deltas for (N, 4) deltas on (N, 4) XYXY boxes."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    centre_x = boxes[:, 0] + 0.5 * widths
    centre_y = boxes[:, 1] + 0.5 * heights
    dx, dy, dw, dh = (deltas / torch.tensor(weights, device=deltas.device)).unbind(dim=1)
    dw, dh = dw.clamp(max=SCALE_CLAMP), dh.clamp(max=SCALE_CLAMP)
    pred_x, pred_y = dx * widths + centre_x, dy * heights + centre_y
    pred_w, pred_h = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack(
        [
            pred_x - 0.5 * pred_w,
            pred_y - 0.5 * pred_h,
            pred_x + 0.5 * pred_w,
            pred_y + 0.5 * pred_h,
        ],
        dim=1,
    )


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    return torch.stack(
        [x0.clamp(0, width), y0.clamp(0, height), x1.clamp(0, width), y1.clamp(0, height)], dim=1
    )


def _nonempty(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def propose(
    network: DensePoseRCNN, features: list[torch.Tensor], image_size: tuple[int, int]
) -> torch.Tensor:
    """RPN proposals (K, 4) in resized-image coordinates: top 1000 per level, NMS 0.7, top 1000."""
    level_boxes, level_scores, level_indices = [], [], []
    for level, (feature, (logits, deltas)) in enumerate(
        zip(features, network.proposal_generator.rpn_head(features), strict=True)
    ):
        anchors = grid_anchors(feature, FEATURE_STRIDES[level], ANCHOR_SIZES[level])
        logits = logits[0].permute(1, 2, 0).reshape(-1).float()  # (H*W*A,)
        num_anchors = len(ANCHOR_ASPECT_RATIOS)
        deltas = deltas[0].view(num_anchors, 4, *deltas.shape[-2:]).permute(2, 3, 0, 1)
        deltas = deltas.reshape(-1, 4).float()  # (H*W*A, 4)
        top_scores, top = logits.topk(min(RPN_PRE_NMS_TOPK, logits.numel()))
        level_boxes.append(apply_deltas(deltas[top], anchors[top]))
        level_scores.append(top_scores)
        level_indices.append(torch.full_like(top, level))
    boxes, scores = torch.cat(level_boxes), torch.cat(level_scores)
    levels = torch.cat(level_indices)
    boxes = clip_boxes(boxes, *image_size)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores) & _nonempty(boxes)
    boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
    keep = batched_nms(boxes, scores, levels, RPN_NMS_THRESHOLD)[:RPN_POST_NMS_TOPK]
    return boxes[keep]


def pool_boxes(features: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    """7x7 legacy RoIAlign, each box on the level p2..p5 its size picks (canonical 224 at p4)."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(4 + torch.log2(sizes / 224 + 1e-8)).clamp(2, 5).long() - 2
    pooled = features[0].new_zeros(
        len(boxes), features[0].shape[1], BOX_POOLER_RESOLUTION, BOX_POOLER_RESOLUTION
    )
    for level in range(4):
        index = torch.nonzero(levels == level).squeeze(1)
        if len(index):
            pooled[index] = _roi_align(
                features[level], boxes[index], BOX_POOLER_RESOLUTION, FEATURE_STRIDES[level]
            )
    return pooled


def _roi_align(
    feature: torch.Tensor, boxes: torch.Tensor, output_size: int, stride: int
) -> torch.Tensor:
    """detectron2's legacy ROIAlign (aligned=False, sampling ratio 2), computed in fp32.

    Box corners in fp16 would be rounded to whole pixels past 1024, so half-precision features are
    pooled in fp32 and the result cast back.
    """
    pooled = roi_align(
        feature.float(),
        [boxes.float()],
        output_size=output_size,
        spatial_scale=1.0 / stride,
        sampling_ratio=POOLER_SAMPLING_RATIO,
        aligned=False,
    )
    return pooled.to(feature.dtype)


def resize_for_detector(image: Image.Image) -> Image.Image:
    """CatVTON's cap at 1024 px on the longer side (the reference's `resize=1024`), done as the
    reference does it: OpenCV's bilinear without antialiasing, each side `int(side * scale)`
    (truncated, not rounded). Pillow's antialiasing bilinear and rounding agreed on only 99.3% of
    the labels.

    The shorter side keeps at least 1 px, so a very thin strip still reaches the detector.
    """
    if max(image.size) <= MAX_INPUT_SIDE:
        return image
    scale = MAX_INPUT_SIDE / max(image.size)
    size = (max(int(image.width * scale), 1), max(int(image.height * scale), 1))
    return Image.fromarray(cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_LINEAR))


@torch.inference_mode()
def detect_densepose(network: DensePoseRCNN, image: Image.Image) -> np.ndarray:
    """Body-part labels (H, W) uint8 in 0..24 for the top-scoring person of an RGB image.

    No person above the 0.8 score threshold gives an all-zero map.
    """
    parameter = next(network.parameters())
    device, dtype = parameter.device, parameter.dtype

    # 1. Cap the size, then the detector's own resize (PIL bilinear, as detectron2 does).
    capped = resize_for_detector(image if image.mode == "RGB" else image.convert("RGB"))
    height, width = shortest_edge_size(capped.height, capped.width)
    resized = np.asarray(capped.resize((width, height), Image.Resampling.BILINEAR))

    # 2. BGR, minus the pixel mean, zero-padded to a multiple of 32.
    pixels = torch.from_numpy(resized[:, :, ::-1].copy()).to(device).permute(2, 0, 1).float()
    pixels = pixels - torch.tensor(PIXEL_MEAN_BGR, device=device).view(3, 1, 1)
    pad_h, pad_w = (-height) % SIZE_DIVISIBILITY, (-width) % SIZE_DIVISIBILITY
    pixels = F.pad(pixels, (0, pad_w, 0, pad_h)).unsqueeze(0).to(dtype)  # (1, 3, 1088, 800)

    # 3. Backbone and proposals.
    features = network.backbone(pixels)  # p2..p6
    proposals = propose(network, features, (height, width))  # (K, 4)

    # 4. Score and refine every proposal; background is detectron2's last class.
    roi_heads = network.roi_heads
    hidden = roi_heads.box_head(pool_boxes(features[:4], proposals))
    scores = F.softmax(roi_heads.box_predictor.cls_score(hidden).float(), dim=1)[:, 0]
    deltas = roi_heads.box_predictor.bbox_pred(hidden).float()
    boxes = clip_boxes(apply_deltas(deltas, proposals, BOX_REGRESSION_WEIGHTS), height, width)

    # 5. The top instance. NMS is skipped: it never removes the highest-scoring box.
    scale = torch.tensor([capped.width / width, capped.height / height] * 2, device=device)
    output_boxes = clip_boxes(boxes * scale, capped.height, capped.width)
    candidates = (
        (scores > SCORE_THRESHOLD)
        & torch.isfinite(boxes).all(dim=1)
        & torch.isfinite(scores)
        & _nonempty(output_boxes)
    )
    canvas = np.zeros((capped.height, capped.width), dtype=np.uint8)
    if candidates.any():
        top = torch.where(candidates, scores, -1.0).argmax()
        labels = _densepose_labels(network, features[:4], boxes[top], output_boxes[top])
        x0, y0 = int(output_boxes[top, 0]), int(output_boxes[top, 1])
        labels = labels[: capped.height - y0, : capped.width - x0]
        canvas[y0 : y0 + labels.shape[0], x0 : x0 + labels.shape[1]] = labels

    # 6. Back to the input size.
    if canvas.shape != (image.height, image.width):
        resized_back = Image.fromarray(canvas).resize(image.size, Image.Resampling.NEAREST)
        canvas = np.array(resized_back)
    return canvas


def _densepose_labels(
    network: DensePoseRCNN,
    features: list[torch.Tensor],
    box: torch.Tensor,
    output_box: torch.Tensor,
) -> np.ndarray:
    """Fine segmentation of one box, resampled to its integer XYWH size in output coordinates.

    Labels are the argmax of the 25 fine logits where the coarse segmentation says foreground.
    """
    roi_heads = network.roi_heads
    decoded = roi_heads.decoder(features)  # (1, 256, H/4, W/4)
    pooled = _roi_align(
        decoded, box.view(1, 4), DENSEPOSE_POOLER_RESOLUTION, FEATURE_STRIDES[0]
    )  # (1, 256, 28, 28)
    coarse, fine = roi_heads.densepose_predictor(roi_heads.densepose_head(pooled))  # 112 x 112
    width = max(int(output_box[2] - output_box[0]), 1)
    height = max(int(output_box[3] - output_box[1]), 1)

    def resample(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return F.interpolate(logits, (height, width), mode="bilinear", align_corners=False)

    foreground = resample(coarse).argmax(dim=1) > 0
    labels = resample(fine).argmax(dim=1) * foreground  # (1, h, w)
    return labels[0].to(torch.uint8).cpu().numpy()
