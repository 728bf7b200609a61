"""LFW (View 1 dev-train) evaluation of a model, with and without flip, for each alignment.

    nice python -m benchmarks.bench_lfw --model facenet-keras-128 --dir ../shared/data/lfw-dev \
        --pairs ../shared/data/lfw-dev/pairsDevTrain.txt

Detection does not depend on flip or alignment, so every image is decoded and detected
once; each alignment's crops are then embedded twice, plain and mirrored, with a plain
(flip=False, normalize=False) embedder that returns the network's raw outputs. The
flip=True embedding is normalise(plain + mirrored), what `Embedder(flip=True)` computes
in one call; the script checks this equality (and that the factorised path reproduces
`FacePipeline.process`) on the first images before trusting it. Time per configuration
= decode + detect (shared, measured once) + align + its embedding passes (one without
flip, two with) + metrics.

The default configuration (the model's own alignment, flip) is also calibrated as
`identity calibrate` does it: thresholds at FAR 1e-2/1e-3/1e-4 and TAR at 1e-4/1e-5 from
every cross-identity pair, and the clustering floor and merge (BCubed F1 of the central
faces clustered as if unlabelled).

Writes to benchmarks/out/<model>/: lfw_bench.json (all figures), lfw_roc_<config>.png,
lfw_dev_embeddings.npz (default settings, every detected face), calibration.json; and, for
facenet-keras-128 only, benchmarks/lfw_similarity_stats.json (same/different cosine mean
and std, the target of benchmarks/synthetic.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from identity.config import Settings
from identity.cluster import ClusterParams
from identity.evaluate.calibrate import (
    all_pair_scores,
    calibrate_clustering,
    calibrate_levels,
    level_entries,
)
from identity.evaluate.identify import identification_metrics, split_gallery
from identity.evaluate.metrics import verification_metrics
from identity.evaluate.report import plot_roc, write_json
from identity.evaluate.runner import EmbeddedImages, labelled_images, load_pairs, score_pairs
from identity.faces.align import align, crop
from identity.faces.detect import select_faces
from identity.faces.embed import Embedder
from identity.faces.pipeline import FacePipeline
from identity.faces.types import DetectedFace

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
SYNTHETIC_TARGET_MODEL = "facenet-keras-128"  # lfw_similarity_stats.json describes this model
TAR_FARS = {"1e-4": 1e-4, "1e-5": 1e-5}


@dataclass
class Detections:
    paths: list[Path]
    shapes: list[tuple[int, int]]
    scales: list[float]
    faces: list[list[DetectedFace]]  # all faces, working-image coordinates
    central: list[DetectedFace | None]
    seconds: float


def detect_all(pipeline: FacePipeline, paths: list[Path], batch: int) -> Detections:
    start = time.perf_counter()
    shapes, scales, faces, central = [], [], [], []
    for i in range(0, len(paths), batch):
        images = [pipeline.decode(str(p)) for p in paths[i : i + batch]]
        found = pipeline.detector.detect([im.pixels for im in images])
        for im, fs in zip(images, found):
            shapes.append(im.pixels.shape[:2])
            scales.append(im.scale)
            faces.append(fs)
            chosen = select_faces(fs, im.pixels.shape, "central")
            central.append(chosen[0] if chosen else None)
        print(f"  detected {min(i + batch, len(paths))}/{len(paths)}", flush=True)
    return Detections(paths, shapes, scales, faces, central, time.perf_counter() - start)


def fallback_box(det: Detections) -> np.ndarray:
    """Median central box relative to the image: the runner's no-face fallback."""
    rel = [
        np.array(f.box) / [w, h, w, h]
        for f, (h, w) in zip(det.central, det.shapes)
        if f is not None
    ]
    return np.median(rel, axis=0)


def crops_for(
    pipeline: FacePipeline,
    det: Detections,
    method: str,
    faces: list[tuple[int, DetectedFace | None]],
) -> np.ndarray:
    size, margin = pipeline.spec.input_size, pipeline.margin
    rel = fallback_box(det)
    out = np.zeros((len(faces), size, size, 3), np.uint8)
    for k, (i, face) in enumerate(faces):
        pixels = pipeline.decode(str(det.paths[i])).pixels
        if face is None:
            h, w = pixels.shape[:2]
            out[k] = crop(pixels, tuple(rel * [w, h, w, h]), image_size=size, margin=margin)
        else:
            out[k] = align(
                pixels,
                face,
                method=method,
                image_size=size,
                margin=margin,
                template=pipeline.spec.template,
            )
    return out


def plain_and_mirrored(
    embedder: Embedder, crops: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    start = time.perf_counter()
    plain = embedder.embed(crops)
    one_pass = time.perf_counter() - start
    mirrored = embedder.embed(np.ascontiguousarray(crops[:, :, ::-1]))
    return plain, mirrored, one_pass


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def check_factorisation(
    pipeline: FacePipeline, det: Detections, plain_embedder: Embedder, n: int = 16
) -> float:
    """Max |difference| between the factorised embeddings and the pipeline's own, first n images."""
    idx = [i for i in range(len(det.paths)) if det.central[i] is not None][:n]
    crops = crops_for(pipeline, det, pipeline.alignment, [(i, det.central[i]) for i in idx])
    plain, mirrored, _ = plain_and_mirrored(plain_embedder, crops)
    ours = normalise(plain + mirrored)
    results = list(pipeline.process([str(det.paths[i]) for i in idx], select="central"))
    theirs = np.stack([r.faces[0].embedding for r in results])
    return float(np.abs(ours - theirs).max())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=Settings().pipeline.model, help="a model of models/manifest.toml")
    ap.add_argument("--dir", type=Path, default=ROOT.parent / "shared/data/lfw-dev")
    ap.add_argument(
        "--pairs", type=Path, default=ROOT.parent / "shared/data/lfw-dev/pairsDevTrain.txt"
    )
    ap.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared/models")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".pytest_cache/d/identity-weights")
    ap.add_argument(
        "--per-fold-half",
        type=int,
        default=None,
        help="smoke run: N same + N different pairs per fold, and only their images",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--table", action="store_true", help="print BENCHMARKS.md tables from the last run's JSON"
    )
    args = ap.parse_args()
    out = OUT / args.model
    if args.table:
        print(markdown_tables(json.loads((out / "lfw_bench.json").read_text())))
        return
    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)

    settings = Settings(
        model=args.model,
        models_dir=args.models_dir,
        cache_dir=args.cache_dir,
        device="cpu",
        data_dir=out / "data",
    )
    pipeline = FacePipeline.from_settings(settings)
    plain_embedder = Embedder(
        pipeline.embedder.network,
        dim=pipeline.dim,
        input_size=pipeline.spec.input_size,
        normalization=pipeline.spec.normalization,
        device="cpu",
        flip=False,
        batch_size=settings.pipeline.batch_size,
        normalize=False,
        precision=pipeline.embedder.precision,
    )

    paths, labels = labelled_images(args.dir)
    pairs = load_pairs(args.dir, args.pairs, per_fold_half=args.per_fold_half)
    if args.per_fold_half:
        keep = set(pairs.unique_paths())
        labels = [lab for p, lab in zip(paths, labels) if p in keep]
        paths = [p for p in paths if p in keep]
    print(f"{len(paths)} images, {len(pairs)} pairs", flush=True)

    det = detect_all(pipeline, paths, settings.pipeline.batch_size)
    detected = np.array([f is not None for f in det.central])
    print(f"detection {det.seconds:.1f}s, no face in {int((~detected).sum())}", flush=True)
    max_diff = check_factorisation(pipeline, det, plain_embedder)
    print(f"factorised vs pipeline max |diff| {max_diff:.2e}", flush=True)
    assert max_diff < 1e-4, "factorised embeddings differ from FacePipeline.process"

    def default_artifacts() -> dict:
        """Outputs other parts reuse, from the default configuration (written as soon as it is done)."""
        default = results[default_key]["verification"]
        if pipeline.model_name == SYNTHETIC_TARGET_MODEL:
            write_json(
                {
                    "model": pipeline.model_name,
                    "version": pipeline.model_version,
                    "dim": pipeline.dim,
                    "alignment": str(pipeline.alignment),
                    "flip": settings.pipeline.flip,
                    "pairs": str(args.pairs.name),
                    "same": default["same_similarity"],
                    "different": default["different_similarity"],
                },
                ROOT / "benchmarks" / "lfw_similarity_stats.json",
            )
        plain, mirrored, *_ = per_method[pipeline.alignment]
        emb = normalise(plain + mirrored) if settings.pipeline.flip else normalise(plain)
        write_all_faces(
            pipeline, det, labels, pipeline.alignment, plain_embedder, emb, out / "lfw_dev_embeddings.npz"
        )

        names = [p.parent.name for p, d in zip(paths, detected) if d]
        impostor, genuine = all_pair_scores(emb[detected], names)
        levels = calibrate_levels(impostor, genuine)
        tar = calibrate_levels(impostor, genuine, TAR_FARS)
        pair_scores = score_pairs(
            pairs,
            EmbeddedImages(
                paths, emb, detected, np.zeros((len(paths), 4)), np.zeros(len(paths)), 0.0
            ),
        )
        view1_far = {
            k: float(np.mean(pair_scores[~pairs.labels] >= lt.similarity))
            for k, lt in levels.items()
        }
        t0 = time.perf_counter()
        fit = calibrate_clustering(emb[detected], names, ClusterParams.from_settings(settings))
        print(
            f"clustering fit in {time.perf_counter() - t0:.0f}s: floor {fit.floor} merge "
            f"{fit.merge_similarity}: BCubed P {fit.bcubed_precision:.4f} R {fit.bcubed_recall:.4f} "
            f"F1 {fit.bcubed_f1:.4f} ({fit.n_faces} central faces, {fit.n_identities} people)",
            flush=True,
        )
        calibration = {
            "model": pipeline.model_name,
            "version": pipeline.model_version,
            "levels": level_entries(levels),
            "view1_pairs_far": view1_far,
            "tar_at_far": level_entries(tar),
            "clustering": fit.entry(),
            "clustering_grid": fit.grid,
            "source": f"{args.dir.name}: {int(detected.sum())} detected central faces, {impostor.size} cross-identity "
            f"and {genuine.size} same-identity pairs ({default_key})",
        }
        write_json(calibration, out / "calibration.json")
        for k, lt in levels.items():
            print(
                f"calibrated {k}: similarity >= {lt.similarity} (FAR target {lt.far}, {lt.false_accepts}/{lt.n_impostor} "
                f"impostors accepted, TAR {lt.genuine_accept_rate:.4f}, View 1 FAR {view1_far[k]:.4f})",
                flush=True,
            )
        for k, lt in tar.items():
            print(f"TAR @ FAR {k}: {lt.genuine_accept_rate:.4f} (similarity >= {lt.similarity})", flush=True)
        return calibration

    def write_summary(calibration: dict | None) -> None:
        write_json(
            {
                "command": f"nice python -m benchmarks.bench_lfw --model {args.model}"
                + (f" --per-fold-half {args.per_fold_half}" if args.per_fold_half else ""),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
                "model": pipeline.model_name,
                "version": pipeline.model_version,
                "n_images": len(paths),
                "n_pairs": len(pairs),
                "n_no_face": int((~detected).sum()),
                "no_face": [str(p) for p, d in zip(paths, detected) if not d],
                "factorisation_max_abs_diff": max_diff,
                "results": results,
                "calibration": calibration,
            },
            out / "lfw_bench.json",
        )

    results: dict[str, dict] = {}
    default_key = f"{pipeline.alignment}+flip"
    per_method: dict[str, tuple[np.ndarray, np.ndarray, float, float]] = {}
    calibration = None
    for method in sorted(("crop", "similarity"), key=lambda m: m != pipeline.alignment):
        t0 = time.perf_counter()
        crops = crops_for(pipeline, det, method, list(enumerate(det.central)))
        align_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain, mirrored, one_pass = plain_and_mirrored(plain_embedder, crops)
        both = time.perf_counter() - t0
        per_method[method] = (plain, mirrored, align_s, one_pass)
        print(
            f"{method}: align {align_s:.1f}s, embed {one_pass:.1f}s + mirrored {both - one_pass:.1f}s",
            flush=True,
        )
        for flip in (False, True):
            key = f"{method}+flip" if flip else method
            emb = normalise(plain + mirrored) if flip else normalise(plain)
            embed_s = both if flip else one_pass
            t0 = time.perf_counter()
            embedded = EmbeddedImages(
                paths,
                emb.astype(np.float32),
                detected,
                np.zeros((len(paths), 4)),
                np.zeros(len(paths)),
                embed_s,
            )
            metrics, curve = verification_metrics(
                score_pairs(pairs, embedded), pairs.labels, pairs.folds
            )
            split = split_gallery(
                [lab for lab, d in zip(labels, detected) if d],
                [str(p) for p, d in zip(paths, detected) if d],
            )
            ident = identification_metrics(
                emb[detected],
                [lab for lab, d in zip(labels, detected) if d],
                split,
                false_alarm_rates=(1e-2, 1e-1),
            )
            metric_s = time.perf_counter() - t0
            plot_roc(
                curve,
                out / f"lfw_roc_{key.replace('+', '_')}.png",
                title=f"LFW dev, {pipeline.model_name}, {key}",
                label=f"acc {metrics.accuracy_mean:.4f}, AUC {metrics.auc:.4f}",
            )
            results[key] = {
                "alignment": method,
                "flip": flip,
                "verification": metrics.to_dict(),
                "identification": ident.to_dict(),
                "seconds": {
                    "decode_detect_shared": det.seconds,
                    "align": align_s,
                    "embed": embed_s,
                    "metrics": metric_s,
                    "total": det.seconds + align_s + embed_s + metric_s,
                },
            }
            m = metrics
            print(
                f"{key:16s} acc {m.accuracy_mean:.4f}±{m.accuracy_std:.4f} VAL@1e-3 {m.val_mean:.4f}±{m.val_std:.4f} "
                f"AUC {m.auc:.5f} EER {m.eer:.4f} rank1 {ident.rank_rates[1]:.4f} rank5 {ident.rank_rates[5]:.4f} "
                f"DIR@1e-2 {ident.open_set[0].dir:.4f} total {results[key]['seconds']['total']:.0f}s",
                flush=True,
            )
        if method == pipeline.alignment:
            calibration = default_artifacts()
        write_summary(calibration)  # after each method, so a cut-short run still leaves figures


def write_all_faces(
    pipeline: FacePipeline,
    det: Detections,
    labels: list[str],
    method: str,
    embedder: Embedder,
    central_emb: np.ndarray,
    path: Path,
) -> None:
    """Every detected face (not only the central one), default settings, for clustering.
    Central faces reuse their embeddings; only the others are embedded here."""
    rows = [(i, f) for i, fs in enumerate(det.faces) for f in fs]
    emb = np.zeros((len(rows), pipeline.dim), np.float32)
    others = [k for k, (i, f) in enumerate(rows) if f is not det.central[i]]
    for k, (i, f) in enumerate(rows):
        if f is det.central[i]:
            emb[k] = central_emb[i]
    if others:
        plain, mirrored, _ = plain_and_mirrored(
            embedder, crops_for(pipeline, det, method, [rows[k] for k in others])
        )
        emb[others] = normalise(plain + mirrored) if pipeline.embedder.flip else normalise(plain)
    inv = np.array([1.0 / det.scales[i] for i, _ in rows], np.float32)[:, None]
    np.savez_compressed(
        path,
        embeddings=emb,
        paths=np.array([str(det.paths[i]) for i, _ in rows]),
        labels=np.array([labels[i] for i, _ in rows]),
        boxes=(np.array([f.box for _, f in rows], np.float32).reshape(-1, 4) * inv).astype(
            np.float32
        ),
        probs=np.array([f.probability for _, f in rows], np.float32),
        image_index=np.array([i for i, _ in rows], np.int64),
    )


def markdown_tables(bench: dict) -> str:
    rows = [
        "| configuration | accuracy (10-fold) | VAL @ FAR 1e-3 | AUC | EER | rank-1 | rank-5 | DIR @ FAR 1e-2 | seconds (detect shared + align + embed + metrics) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in bench["results"].items():
        v, i, t = r["verification"], r["identification"], r["seconds"]
        dir_1e2 = next(p["dir"] for p in i["open_set"] if p["false_alarm_rate"] == 1e-2)
        rows.append(
            f"| {key} | {v['accuracy_mean']:.4f} ± {v['accuracy_std']:.4f} | {v['val_mean']:.4f} ± {v['val_std']:.4f} "
            f"(FAR {v['far_mean']:.4f}) | {v['auc']:.5f} | {v['eer']:.4f} | {i['rank_rates']['1']:.4f} | "
            f"{i['rank_rates']['5']:.4f} | {dir_1e2:.4f} | {t['total']:.0f} = {t['decode_detect_shared']:.0f} + "
            f"{t['align']:.0f} + {t['embed']:.0f} + {t['metrics']:.1f} |"
        )
    cal = bench.get("calibration")
    if cal:
        rows += [
            "",
            "| level | target FAR | cosine similarity ≥ | squared distance ≤ | impostor comparisons | false accepts allowed / observed | TAR (all same-identity pairs) | FAR on the 1,100 View 1 different pairs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, lv in cal["levels"].items():
            rows.append(
                f"| {name} | {lv['far']:g} | {lv['similarity']:.6f} | {lv['distance']:.6f} | {lv['n_impostor']:,} | "
                f"{lv['allowed_false_accepts']:,} / {lv['false_accepts']:,} | {lv['genuine_accept_rate']:.4f} | "
                f"{cal['view1_pairs_far'][name]:.4f} |"
            )
        if cal.get("tar_at_far"):
            rows += [""] + [
                f"TAR @ FAR {k}: {lv['genuine_accept_rate']:.4f} (similarity ≥ {lv['similarity']:.6f}, "
                f"{lv['false_accepts']:,} of {lv['n_impostor']:,} impostors accepted)"
                for k, lv in cal["tar_at_far"].items()
            ]
        fit = cal.get("clustering")
        if fit:
            rows += [
                "",
                f"Clustering ({fit['algorithm']}, {fit['n_faces']:,} central faces of {fit['n_identities']:,} people): "
                f"floor {fit['floor']}, merge {fit['merge_similarity']}: BCubed P {fit['bcubed_precision']:.4f} "
                f"R {fit['bcubed_recall']:.4f} F1 {fit['bcubed_f1']:.4f}, pairwise F1 {fit['pairwise_f1']:.4f}",
            ]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
