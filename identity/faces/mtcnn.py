"""MTCNN's three stages over a batch of equal-sized images, with facenet-pytorch's networks
and weights, every candidate box of a stage resampled in one batched gather.

facenet-pytorch's `detect_face` crops and resizes each candidate box of the second and
third stages separately (`interpolate(mode="area")` on one slice per box): a few thousand
tiny ops per batch of photos, each paying the framework's per-op cost and, on a
multi-threaded pool, a thread wake-up. Here each stage resamples all its boxes at once:

* "area" interpolation is adaptive average pooling: output pixel (i, j) of a box h × w
  pixels tall and wide, resized to s × s, is the mean of input rows
  [floor(i·h/s), ceil((i+1)·h/s)) and columns [floor(j·w/s), ceil((j+1)·w/s)).
* The sum over any rectangle is four look-ups in the image's summed-area table, so every
  output pixel of every box is one gather. The pixels are integers (uint8) and the table
  integer (int32, int64 where a photo is too large for it), so the sums are exact and the
  crops equal facenet-pytorch's to float rounding (the means are rounded once here, after
  a float32 sum there).

Everything else follows `detect_face` (facenet-pytorch 2.5.3) step by step, with its own
helpers: the pyramid and P-Net, the non-maximum suppressions, box regression and
squaring, the clipping of boxes to the image (`pad`: a box is clipped, not zero-padded,
then resized whole), the thresholds, and the landmarks. Boxes, probabilities and
landmarks match it to float rounding (`tests/test_mtcnn.py` compares the two on real
photos). One difference: facenet-pytorch fails outright (a mask of the wrong length) if a
box lies wholly outside the image after clipping; such a box is dropped here.
"""

from __future__ import annotations

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (
    batched_nms_numpy,
    bbreg,
    fixed_batch_process,
    generateBoundingBox,
    imresample,
    pad,
    rerec,
)
from torch import nn
from torchvision.ops.boxes import batched_nms


class BatchedMTCNN:
    """`detect(images)` for N equal-sized H×W×3 uint8 images (a tensor on the networks'
    device) → per image, boxes (k × 5: x1, y1, x2, y2, probability) and landmarks
    (k × 5 × 2), in facenet-pytorch's coordinates and order."""

    def __init__(
        self,
        pnet: nn.Module,
        rnet: nn.Module,
        onet: nn.Module,
        *,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> None:
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.min_face_size = min_face_size
        self.thresholds = tuple(thresholds)
        self.factor = factor

    @torch.inference_mode()
    def detect(self, images: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be N×H×W×3 uint8, got {tuple(images.shape)} {images.dtype}")
        device = images.device
        batch_size, h, w = images.shape[:3]
        dtype = next(self.pnet.parameters()).dtype
        # Planar float copy for the pyramid: area-resizing a planar image is 1.6x faster than
        # a channels-last one; P-Net's channels-last weights take either.
        imgs = images.permute(0, 3, 1, 2).to(dtype).contiguous()
        threshold = self.thresholds

        boxes, image_inds = self._stage_one(imgs, h, w)
        # Both later stages crop from the same images: one summed-area table for the two.
        table = summed_area_table(images) if len(boxes) > 0 else None

        # Second stage: R-Net on every candidate's 24-px crop.
        if len(boxes) > 0:
            boxes, image_inds, crops = self._crops(table, boxes, image_inds, 24)
        if len(boxes) > 0:
            out = fixed_batch_process((crops - 127.5) * 0.0078125, self.rnet)
            out0 = out[0].permute(1, 0)
            score = out[1].permute(1, 0)[1, :]
            ipass = score > threshold[1]
            boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
            image_inds = image_inds[ipass]
            mv = out0[:, ipass].permute(1, 0)
            pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
            boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
            boxes = bbreg(boxes, mv)
            boxes = rerec(boxes)

        # Third stage: O-Net on every survivor's 48-px crop; landmarks.
        points = torch.zeros(0, 5, 2, device=device)
        if len(boxes) > 0:
            boxes, image_inds, crops = self._crops(table, boxes, image_inds, 48)
        if len(boxes) > 0:
            out = fixed_batch_process((crops - 127.5) * 0.0078125, self.onet)
            out0 = out[0].permute(1, 0)
            points = out[1].permute(1, 0)
            score = out[2].permute(1, 0)[1, :]
            ipass = score > threshold[2]
            points = points[:, ipass]
            boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
            image_inds = image_inds[ipass]
            mv = out0[:, ipass].permute(1, 0)
            w_i = boxes[:, 2] - boxes[:, 0] + 1
            h_i = boxes[:, 3] - boxes[:, 1] + 1
            points_x = w_i.repeat(5, 1) * points[:5, :] + boxes[:, 0].repeat(5, 1) - 1
            points_y = h_i.repeat(5, 1) * points[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
            points = torch.stack((points_x, points_y)).permute(2, 1, 0)
            boxes = bbreg(boxes, mv)
            pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
            boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]

        boxes_np = boxes.cpu().numpy()
        points_np = points.cpu().numpy()
        inds_np = image_inds.cpu().numpy()
        per_boxes, per_points = [], []
        for b in range(batch_size):
            mine = inds_np == b
            per_boxes.append(boxes_np[mine].copy())
            per_points.append(points_np[mine].copy())
        return per_boxes, per_points

    def _stage_one(self, imgs: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net over the scale pyramid, NMS per scale and image, then per image; the
        candidates regressed and squared (`detect_face`'s first stage, unchanged)."""
        m = 12.0 / self.min_face_size
        minl = min(h, w) * m
        scale_i = m
        scales = []
        while minl >= 12:
            scales.append(scale_i)
            scale_i = scale_i * self.factor
            minl = minl * self.factor

        boxes, image_inds, scale_picks = [], [], []
        offset = 0
        for scale in scales:
            im_data = imresample(imgs, (int(h * scale + 1), int(w * scale + 1)))
            im_data = (im_data - 127.5) * 0.0078125
            reg, probs = self.pnet(im_data)
            boxes_scale, image_inds_scale = generateBoundingBox(
                reg, probs[:, 1], scale, self.thresholds[0]
            )
            boxes.append(boxes_scale)
            image_inds.append(image_inds_scale)
            pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5)
            scale_picks.append(pick + offset)
            offset += boxes_scale.shape[0]

        device = imgs.device
        if not scales:
            return torch.zeros(0, 5, device=device), torch.zeros(0, dtype=torch.long, device=device)
        boxes = torch.cat(boxes, dim=0)
        image_inds = torch.cat(image_inds, dim=0)
        scale_picks = torch.cat(scale_picks, dim=0)
        boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds = boxes[pick], image_inds[pick]

        regw = boxes[:, 2] - boxes[:, 0]
        regh = boxes[:, 3] - boxes[:, 1]
        qq1 = boxes[:, 0] + boxes[:, 5] * regw
        qq2 = boxes[:, 1] + boxes[:, 6] * regh
        qq3 = boxes[:, 2] + boxes[:, 7] * regw
        qq4 = boxes[:, 3] + boxes[:, 8] * regh
        boxes = torch.stack([qq1, qq2, qq3, qq4, boxes[:, 4]]).permute(1, 0)
        return rerec(boxes), image_inds

    def _crops(
        self, table: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every box clipped to its image (`pad`) and area-resized to size × size: the boxes
        kept (one wholly outside its image is dropped), their image indices, and the crops
        (K × 3 × size × size float, channels-last)."""
        h, w = table.shape[1] - 1, table.shape[2] - 1
        y, ey, x, ex = pad(boxes, w, h)  # 1-based first row/column, inclusive last
        keep = (ey > y - 1) & (ex > x - 1)
        if not keep.all():
            index = torch.as_tensor(np.flatnonzero(keep), device=boxes.device)
            boxes, image_inds = boxes[index], image_inds[index]
            y, ey, x, ex = y[keep], ey[keep], x[keep], ex[keep]
        device = table.device
        top = torch.as_tensor(y - 1, dtype=torch.long, device=device)
        left = torch.as_tensor(x - 1, dtype=torch.long, device=device)
        bottom = torch.as_tensor(ey, dtype=torch.long, device=device)
        right = torch.as_tensor(ex, dtype=torch.long, device=device)
        dtype = next(self.pnet.parameters()).dtype
        crops = area_resize(table, image_inds, top, bottom, left, right, size, dtype)
        return boxes, image_inds, crops


def summed_area_table(images: torch.Tensor) -> torch.Tensor:
    """N × (H+1) × (W+1) × C integer table of N × H × W × C uint8 images: entry [b, i, j]
    is the sum of image b's rows < i and columns < j (a zero first row and column).
    int32 while a whole image's sum fits (any photo up to 8.4 megapixels), else int64."""
    n, h, w, c = images.shape
    dtype = torch.int32 if h * w * 255 < 2**31 else torch.int64
    table = torch.zeros((n, h + 1, w + 1, c), dtype=dtype, device=images.device)
    table[:, 1:, 1:] = images
    if table.device.type == "cpu":
        # Row by row: each add is contiguous and vectorised; torch's cumsum along an
        # outer dimension walks the tensor element by element, 4-5x slower here.
        for i in range(2, h + 1):
            table[:, i] += table[:, i - 1]
        for j in range(2, w + 1):
            table[:, :, j] += table[:, :, j - 1]
    else:
        table = table.cumsum(1).cumsum(2)
    return table


def area_resize(
    table: torch.Tensor,
    image_inds: torch.Tensor,
    top: torch.Tensor,
    bottom: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rows [top, bottom) × columns [left, right) of image `image_inds[k]` for every k,
    each resized to size × size as `interpolate(mode="area")` (adaptive average pooling)
    does: K × C × size × size, channels-last in memory. `table`: the images' summed-area
    table (`summed_area_table`)."""
    h1, w1, c = table.shape[1:]
    k = len(image_inds)
    step = torch.arange(size, device=table.device)
    hb, wb = (bottom - top)[:, None], (right - left)[:, None]
    r0 = top[:, None] + torch.div(step * hb, size, rounding_mode="floor")
    r1 = top[:, None] + torch.div((step + 1) * hb + size - 1, size, rounding_mode="floor")
    c0 = left[:, None] + torch.div(step * wb, size, rounding_mode="floor")
    c1 = left[:, None] + torch.div((step + 1) * wb + size - 1, size, rounding_mode="floor")
    area = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :]).to(dtype)
    # Linear row indices into the table viewed as (N·(H+1)·(W+1)) × C.
    base = image_inds[:, None] * h1
    row0, row1 = ((base + r0) * w1)[:, :, None], ((base + r1) * w1)[:, :, None]
    col0, col1 = c0[:, None, :], c1[:, None, :]
    flat = table.view(-1, c)

    def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, (rows + cols).reshape(-1))

    sums = at(row1, col1) - at(row0, col1) - at(row1, col0) + at(row0, col0)
    out = sums.to(dtype).view(k, size, size, c) / area[..., None]
    return out.permute(0, 3, 1, 2)
