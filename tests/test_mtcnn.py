"""The batched MTCNN (identity.faces.mtcnn) against facenet-pytorch's own `detect_face`,
which resizes every candidate box separately: same faces, same boxes, probabilities and
landmarks to float rounding, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from identity.config import Settings
from identity.faces.mtcnn import BatchedMTCNN, area_resize, summed_area_table

from conftest import LFW_DIR, MISC_DIR


def test_area_resize_is_interpolate_area_box_by_box():
    """Every box of every image resized in one gather equals facenet-pytorch's per-box
    `interpolate(mode="area")`, including boxes at the borders and boxes smaller than
    the output (upsampling)."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (3, 61, 47, 3), dtype=np.uint8))
    boxes = [(0, 0, 61, 47), (5, 3, 29, 30), (40, 20, 61, 47), (10, 10, 17, 13), (0, 46, 61, 47)]
    owners, tops, bottoms, lefts, rights, expected = [], [], [], [], [], []
    for b in range(3):
        for top, left, bottom, right in boxes:
            region = images[b, top:bottom, left:right].permute(2, 0, 1)[None].float()
            for size in (24,):
                expected.append(F.interpolate(region, size=(size, size), mode="area")[0])
            owners.append(b)
            tops.append(top), bottoms.append(bottom), lefts.append(left), rights.append(right)
    def as_long(v):
        return torch.tensor(v, dtype=torch.long)

    got = area_resize(summed_area_table(images), as_long(owners), as_long(tops), as_long(bottoms),
                      as_long(lefts), as_long(rights), 24)
    assert got.shape == (len(expected), 3, 24, 24)
    assert torch.allclose(got, torch.stack(expected), atol=1e-4)


def test_summed_area_table_sums_rectangles():
    images = torch.randint(0, 256, (2, 9, 7, 3), dtype=torch.uint8)
    table = summed_area_table(images)
    assert table.shape == (2, 10, 8, 3)
    assert torch.equal(table[1, 4, 5], images[1, :4, :5].long().sum(dim=(0, 1)).to(table.dtype))
    assert torch.equal(table[:, 0], torch.zeros_like(table[:, 0]))


def _padded(paths, settings):
    from identity.faces.pipeline import DecodeLimits, load_image

    pixels = [load_image(p, DecodeLimits.from_settings(settings.pipeline)).pixels for p in paths]
    h = max(p.shape[0] for p in pixels)
    w = max(p.shape[1] for p in pixels)
    batch = np.zeros((len(pixels), h, w, 3), np.uint8)
    for i, p in enumerate(pixels):
        batch[i, : p.shape[0], : p.shape[1]] = p
    return batch


@pytest.mark.slow
@pytest.mark.parametrize(
    "paths",
    [
        sorted((MISC_DIR / "group").glob("*.jpg")),
        sorted((MISC_DIR / "single_face").glob("*.png")),
        [MISC_DIR / "nonface" / n for n in ("skimage_motorcycle_left.png", "skimage_chelsea.png")],
        sorted(LFW_DIR.glob("*/*.jpg"))[:12],
    ],
    ids=["group", "single_face", "nonface", "lfw"],
)
def test_batched_stages_find_what_facenet_pytorch_finds(paths):
    from facenet_pytorch import MTCNN
    from facenet_pytorch.models.utils.detect_face import detect_face

    settings = Settings()
    mtcnn = MTCNN(min_face_size=settings.pipeline.min_face_size, thresholds=list(settings.pipeline.detection_thresholds),
                  factor=settings.pipeline.scale_factor, keep_all=True, post_process=False).eval()
    batched = BatchedMTCNN(mtcnn.pnet, mtcnn.rnet, mtcnn.onet, min_face_size=settings.pipeline.min_face_size,
                           thresholds=settings.pipeline.detection_thresholds, factor=settings.pipeline.scale_factor)
    # Group photos differ in size: each is its own batch there; the LFW images are one batch.
    batches = [_padded([p], settings) for p in paths] if "lfw-dev" not in str(paths[0]) else [
        _padded(paths, settings)
    ]
    found = 0
    for batch in batches:
        with torch.inference_mode():
            ref_boxes, ref_points = detect_face(batch, mtcnn.min_face_size, mtcnn.pnet, mtcnn.rnet,
                                                mtcnn.onet, mtcnn.thresholds, mtcnn.factor, "cpu")
        boxes, points = batched.detect(torch.from_numpy(batch))
        for k in range(len(batch)):
            ref_b = np.asarray(ref_boxes[k], np.float32).reshape(-1, 5)
            ref_p = np.asarray(ref_points[k], np.float32).reshape(-1, 5, 2)
            assert len(boxes[k]) == len(ref_b)
            order, ref_order = np.argsort(boxes[k][:, 0]), np.argsort(ref_b[:, 0])
            np.testing.assert_allclose(boxes[k][order, :4], ref_b[ref_order, :4], atol=0.01)
            np.testing.assert_allclose(boxes[k][order, 4], ref_b[ref_order, 4], atol=1e-4)
            np.testing.assert_allclose(points[k][order], ref_p[ref_order], atol=0.01)
            found += len(ref_b)
    # Raw MTCNN output, before the pipeline's probability floor: a motorcycle wheel is a
    # candidate here too, in both implementations.
    if "nonface" not in str(paths[0]):
        assert found >= len(paths)
