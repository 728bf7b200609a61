"""How tightly to frame faces for FaceNet: the facenet landmark template scaled about the
crop's centre, each scale scored on lfw-dev as `identity calibrate` scores a model.

    nice python -m benchmarks.bench_template [--scales 1.0 1.05 1.08 1.1 1.15 1.2] [--crop]

Every lfw-dev image is detected once and its central face (the calibration's set: 3,443
faces of 2,132 people) aligned onto each scaled template (and, with --crop, facenet's
margin-32 crop), then embedded with flip by facenet-keras-128's network. Per framing:

* the true-accept rate at FAR 1e-3, 1e-4 and 1e-5 over every cross-identity pair;
* clustering: the best BCubed F1 among settings with precision >= 0.99 (the calibration's
  rule) over floors 0.56-0.78 and merges 0.70/0.75/0.80/off, hubness correction on;
* the same fitted on half of the people (split by a hash of the name) and scored on the
  other half, both ways: what the choice is worth out of sample.

Writes benchmarks/out/template_scan.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import zlib
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from identity.cluster import ClusterParams, FaceSet, cluster_faces, evaluate_clustering
from identity.config import Settings
from identity.evaluate.calibrate import all_pair_scores, calibrate_clustering, calibrate_levels
from identity.evaluate.runner import labelled_images
from identity.faces.align import TEMPLATE_UNIT, crop, warp_onto
from identity.faces.detect import select_faces
from identity.faces.pipeline import FacePipeline

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
FARS = (1e-3, 1e-4, 1e-5)
FLOORS = tuple(np.round(np.arange(0.56, 0.79, 0.02), 2))
MERGES = (0.70, 0.75, 0.80, 1.01)


def _on_template(pixels: np.ndarray, face, *, scale: float, size: int) -> np.ndarray:
    points = (0.5 + scale * (TEMPLATE_UNIT - 0.5)) * size
    return warp_onto(pixels, face.landmarks, points, image_size=size)


def _margin_crop(pixels: np.ndarray, face, *, size: int) -> np.ndarray:
    return crop(pixels, face.box, image_size=size, margin=32)


def true_accept_rates(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """TAR at each FAR as `identity calibrate` sets its thresholds, over every pair."""
    impostor, genuine = all_pair_scores(x, labels)
    levels = calibrate_levels(impostor, genuine, {f"tar@{far:g}": far for far in FARS})
    return {name: level.genuine_accept_rate for name, level in levels.items()}


def clustering(x: np.ndarray, labels: np.ndarray, image_index: np.ndarray, params: ClusterParams) -> dict:
    def fit(rows: np.ndarray):
        return calibrate_clustering(x[rows], labels[rows], params, image_index=image_index[rows],
                                    floors=FLOORS, merges=MERGES, hubness=(True,))

    everyone = fit(np.ones(len(x), bool))
    half = np.array([zlib.crc32(name.encode()) % 2 for name in labels])
    held_out = []
    for h in (0, 1):
        chosen = fit(half == h)
        trial = replace(params, threshold=chosen.floor, merge_similarity=chosen.merge_similarity, hubness=True)
        test = half != h
        result = cluster_faces(FaceSet.from_embeddings(x[test], image_index[test]), trial)
        held_out.append(evaluate_clustering(labels[test], result.labels).bcubed_f1)
    return {"floor": everyone.floor, "merge": everyone.merge_similarity,
            "bcubed_precision": everyone.bcubed_precision, "bcubed_recall": everyone.bcubed_recall,
            "bcubed_f1": everyone.bcubed_f1, "held_out_f1": held_out, "held_out_f1_mean": float(np.mean(held_out))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.05, 1.08, 1.1, 1.15, 1.2])
    ap.add_argument("--crop", action="store_true", help="also facenet's margin-32 crop")
    ap.add_argument("--dir", type=Path, default=ROOT.parent / "shared/data/lfw-dev")
    args = ap.parse_args()
    settings = Settings(model="facenet-keras-128", models_dir=ROOT.parent / "shared/models",
                        cache_dir=OUT / "weights-cache", device="cpu", data_dir=OUT / "data")
    pipeline = FacePipeline.from_settings(settings)
    size = pipeline.spec.input_size
    framings = {f"template x{s:g}": partial(_on_template, scale=s, size=size) for s in args.scales}
    if args.crop:
        framings["margin-32 crop"] = partial(_margin_crop, size=size)

    paths, names = labelled_images(args.dir)
    crops: dict[str, list[np.ndarray]] = {k: [] for k in framings}
    labels, image_index = [], []
    start = time.perf_counter()
    for i in range(0, len(paths), 32):
        images = [pipeline.decode(str(p)) for p in paths[i : i + 32]]
        for j, (image, faces) in enumerate(zip(images, pipeline.detector.detect([im.pixels for im in images]))):
            chosen = select_faces(faces, image.pixels.shape, "central")
            if not chosen:
                continue
            labels.append(names[i + j])
            image_index.append(i + j)
            for name, frame in framings.items():
                crops[name].append(frame(image.pixels, chosen[0]))
    detect_s = time.perf_counter() - start
    labels_a, index_a = np.array(labels), np.array(image_index)
    print(f"{len(labels)} central faces of {len(set(labels))} people, detected in {detect_s:.0f} s", flush=True)

    params = ClusterParams.from_settings(settings)
    rows = []
    for name, stack in crops.items():
        t = time.perf_counter()
        x = pipeline.embedder.embed(np.stack(stack))  # flip, normalised: the pipeline's embedding
        row = {"framing": name, **true_accept_rates(x, labels_a), **clustering(x, labels_a, index_a, params),
               "seconds": round(time.perf_counter() - t, 1)}
        rows.append(row)
        print(f"{name:16s} TAR@1e-3 {row['tar@0.001']:.4f} @1e-4 {row['tar@0.0001']:.4f} "
              f"@1e-5 {row['tar@1e-05']:.4f} | clustering {row['floor']:.2f}/{row['merge']:.2f} "
              f"P {row['bcubed_precision']:.4f} R {row['bcubed_recall']:.4f} F1 {row['bcubed_f1']:.4f} "
              f"| held out {row['held_out_f1'][0]:.4f} {row['held_out_f1'][1]:.4f}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "template_scan.json").write_text(json.dumps(
        {"machine": platform.processor() or platform.machine(), "precision": str(pipeline.embedder.precision),
         "faces": len(labels), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
