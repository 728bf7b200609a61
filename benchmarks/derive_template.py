"""Derive `identity.faces.align.TEMPLATE_UNIT`: the mean position of the 5 MTCNN
landmarks inside facenet-style margin crops of lfw-dev faces (unit square).

    python benchmarks/derive_template.py [--limit 800]

Using this template makes 'similarity' alignment frame faces as the 'crop' alignment
does (the framing FaceNet was trained on), removing only roll and jitter.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from identity.config import Settings
from identity.faces.detect import Detector, select_faces
from identity.faces.pipeline import DecodeLimits, load_image

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-dev"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=800)
    parser.add_argument("--margin", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=160)
    args = parser.parse_args()
    settings = Settings(device="cpu")
    detector = Detector.from_settings(settings.pipeline)
    paths = sorted(LFW.glob("*/*.jpg"))[: args.limit]
    points = []
    for start in range(0, len(paths), 32):
        images = [load_image(p, DecodeLimits.from_settings(settings.pipeline)).pixels for p in paths[start : start + 32]]
        for pixels, faces in zip(images, detector.detect(images)):
            chosen = select_faces(faces, pixels.shape, "central")
            if not chosen:
                continue
            face = chosen[0]
            h, w = pixels.shape[:2]
            x1, y1, x2, y2 = face.box
            pad_x = args.margin * (x2 - x1) / (args.image_size - args.margin) / 2
            pad_y = args.margin * (y2 - y1) / (args.image_size - args.margin) / 2
            left, top = max(x1 - pad_x, 0), max(y1 - pad_y, 0)
            right, bottom = min(x2 + pad_x, w), min(y2 + pad_y, h)
            unit = (face.landmarks - [left, top]) / [right - left, bottom - top]
            points.append(unit)
    mean = np.mean(points, axis=0)
    print(f"{len(points)} faces")
    print(np.array2string(mean, precision=4, separator=", "))


if __name__ == "__main__":
    main()
