"""Clustering benchmark (issue 7).

    python -m benchmarks.bench_cluster embed      # lfw-dev → benchmarks/out/<model>/lfw_dev_embeddings.npz (once)
    python -m benchmarks.bench_cluster quality    # every algorithm on all of lfw-dev, unlabelled

`embed` and `quality` take `--model NAME` (default: the configured model); bench_lfw writes
the same embeddings file as a by-product.
    python -m benchmarks.bench_cluster scale      # time + peak memory on 1e5 and 1e6 synthetic faces
    python -m benchmarks.bench_cluster grid       # `identity calibrate`'s clustering grid on lfw-dev's subjects,
                                                  # against clustering each setting on its own

Evaluation rule for lfw-dev: every detected face takes part in the clustering, but only
one face per photo has a known identity, its subject: LFW photos are centred on it, and
we pick it as facenet's align_dataset_mtcnn does (largest box, penalised by its offset
from the centre); the others are bystanders whose names nobody knows. The metrics are
computed over the subjects only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LFW_DIR = ROOT.parent / "shared" / "data" / "lfw-dev"
OUT = ROOT / "benchmarks" / "out"


def embeddings_path(model: str) -> Path:
    return OUT / model / "lfw_dev_embeddings.npz"


# --- embed ----------------------------------------------------------------------------------


def embed(args: argparse.Namespace) -> None:
    target = embeddings_path(args.model)
    if target.exists() and not args.force:
        print(f"{target} exists; reusing it (--force to recompute)")
        return
    from identity.config import Settings
    from identity.faces.pipeline import FacePipeline

    settings = Settings(model=args.model, models_dir=ROOT.parent / "shared" / "models",
                        cache_dir=OUT / "weights-cache", device="cpu")
    pipeline = FacePipeline.from_settings(settings)
    paths = sorted(str(p) for p in LFW_DIR.glob("*/*.jpg"))
    rows: dict[str, list] = {k: [] for k in ("embeddings", "paths", "labels", "boxes", "probs", "image_index")}
    start = time.perf_counter()
    for i, result in enumerate(pipeline.process(paths, select="all")):
        for face in result.faces:
            rows["embeddings"].append(face.embedding)
            rows["paths"].append(result.source)
            rows["labels"].append(Path(result.source).parent.name)
            rows["boxes"].append(face.box)
            rows["probs"].append(face.probability)
            rows["image_index"].append(i)
        if i % 200 == 0:
            print(f"{i}/{len(paths)} images, {time.perf_counter() - start:.0f} s", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        embeddings=np.array(rows["embeddings"], np.float32),
        paths=np.array(rows["paths"]),
        labels=np.array(rows["labels"]),
        boxes=np.array(rows["boxes"], np.float32),
        probs=np.array(rows["probs"], np.float32),
        image_index=np.array(rows["image_index"], np.int64),
        model=np.array(pipeline.model_name),
        model_version=np.array(pipeline.model_version),
    )
    os.replace(tmp, target)
    print(f"{len(rows['paths'])} faces in {len(paths)} images, {time.perf_counter() - start:.0f} s → {target}")


# --- quality on lfw-dev -----------------------------------------------------------------------


def primary_faces(faces, image_size: float = 250.0) -> np.ndarray:
    """Row of each photo's subject (see module docstring); LFW photos are 250×250."""
    from identity.cluster.metrics import subject_faces

    sizes = np.full((len(faces.sources), 2), image_size)
    return subject_faces(faces.boxes, faces.image_index, sizes)


THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.72, 0.75, 0.78, 0.8)
GRID: dict[str, list[dict]] = {
    "components": [{"threshold": t} for t in THRESHOLDS],
    "chinese_whispers": [{"threshold": t} for t in THRESHOLDS],
    "dbscan": [{"threshold": t, "min_samples": m} for t in THRESHOLDS for m in (2, 3)],
    "hdbscan": [
        {"threshold": t, "min_cluster_size": 2, "min_samples": m, "merge_similarity": g}
        for t in THRESHOLDS for m in (1, 2) for g in (0.7, 0.8, 1.01)
    ],
}


def quality(args: argparse.Namespace) -> None:
    from identity.cluster import (
        ClusterParams,
        FaceSet,
        cluster_faces,
        evaluate_clustering,
        knn_graph,
    )
    from identity.config import Settings

    faces, labels = FaceSet.from_npz(embeddings_path(args.model))
    primary = primary_faces(faces)
    settings = Settings(model=args.model)
    defaults = ClusterParams.from_settings(settings)
    print(f"{len(faces)} faces in {len(faces.sources)} images with a face; "
          f"{len(np.unique(labels[primary]))} people; evaluated on the {len(primary)} central faces")
    print(f"defaults: algorithm={defaults.algorithm} threshold={defaults.threshold} k={defaults.k} quality={defaults.quality}")
    from identity.cluster.quality import quality_reasons

    kept = quality_reasons(faces, defaults.quality) == ""
    graph = knn_graph(faces.subset(kept).embeddings, defaults.k)
    rows = []
    for algorithm, grid in GRID.items():
        for overrides in ({**o, "hubness": h} for h in (False, True) for o in grid):
            params = ClusterParams.from_settings(settings, algorithm=algorithm, **overrides)
            result = cluster_faces(faces, params, graph=graph)
            m = evaluate_clustering(labels[primary], result.labels[primary])
            rows.append({"algorithm": algorithm, **overrides, "seconds": round(result.seconds, 3), **m.to_dict()})
            print(f"{algorithm:17s} {json.dumps(overrides):72s} BCubed P {m.bcubed_precision:.4f} "
                  f"R {m.bcubed_recall:.4f} F1 {m.bcubed_f1:.4f} | pairwise P {m.pairwise_precision:.4f} "
                  f"R {m.pairwise_recall:.4f} F1 {m.pairwise_f1:.4f} | clusters {m.n_clusters} "
                  f"unclustered {m.fraction_unclustered:.3f} | {result.seconds:.2f} s", flush=True)
    result = cluster_faces(faces, defaults, graph=graph)
    m = evaluate_clustering(labels[primary], result.labels[primary])
    default_row = {"algorithm": f"default of {args.model}", "threshold": defaults.threshold,
                   "merge_similarity": defaults.merge_similarity, "hubness": defaults.hubness, **m.to_dict()}
    print(f"DEFAULT {args.model}: {defaults.algorithm} floor {defaults.threshold} merge "
          f"{defaults.merge_similarity} hubness {defaults.hubness}: BCubed P {m.bcubed_precision:.4f} R {m.bcubed_recall:.4f} "
          f"F1 {m.bcubed_f1:.4f} | pairwise F1 {m.pairwise_f1:.4f} | clusters {m.n_clusters} "
          f"unclustered {m.fraction_unclustered:.3f}", flush=True)
    (OUT / args.model / "cluster_quality.json").write_text(json.dumps([default_row, *rows], indent=1))


# --- scale on synthetic embeddings ----------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Face-like embeddings (benchmarks/synthetic.py, calibrated to LFW statistics) with
    1 to 9 faces per identity (mean 5), the first n faces."""
    from benchmarks.synthetic import FaceLikeGenerator, load_target

    gen = FaceLikeGenerator.calibrated(dim=128, target=load_target(), seed=seed)
    x, labels = gen.faces(n_identities=n // 5 + 1000, faces_per_identity=(1, 9))
    return x[:n], labels[:n]


def graph_step(args: argparse.Namespace) -> None:
    """One process: generate n faces, build the kNN graph, save it for the algorithm steps."""
    from identity.cluster import knn_graph

    x, labels = synthetic(args.n)
    base = peak_rss_mib()
    start = time.perf_counter()
    graph = knn_graph(x, args.k, exact_max=args.exact_max)
    seconds = time.perf_counter() - start
    np.savez(OUT / f"graph_{args.n}_{args.tag}.npz", indices=graph.indices, similarities=graph.similarities, labels=labels)
    print(json.dumps({"step": f"knn_{args.tag}", "n": args.n, "seconds": round(seconds, 2),
                      "peak_rss_mib": round(peak_rss_mib()), "rss_before_mib": round(base)}))


def algorithm_step(args: argparse.Namespace) -> None:
    """One process: load a saved graph, run one algorithm (+ constraints, numbering)."""
    from identity.cluster import (
        ClusterParams,
        FaceSet,
        KnnGraph,
        cluster_faces,
        evaluate_clustering,
    )

    with np.load(OUT / f"graph_{args.n}_{args.tag}.npz") as data:
        graph = KnnGraph(data["indices"], data["similarities"])
        labels = data["labels"]
    x, _ = synthetic(args.n)  # the same faces the graph was built from (seeded)
    faces = FaceSet.from_embeddings(x)
    base = peak_rss_mib()
    params = ClusterParams(algorithm=args.algorithm, threshold=args.threshold, k=graph.k, hubness=args.hubness)
    result = cluster_faces(faces, params, graph=graph)
    m = evaluate_clustering(labels, result.labels)
    print(json.dumps({"step": args.algorithm + ("+hubness" if args.hubness else ""), "n": args.n, "seconds": round(result.seconds, 2),
                      "peak_rss_mib": round(peak_rss_mib()), "rss_before_mib": round(base),
                      "bcubed_f1": round(m.bcubed_f1, 4), "clusters": m.n_clusters}))


def scale(args: argparse.Namespace) -> None:
    """Each step in its own process so each peak-memory figure is that step's own."""
    import subprocess

    from identity.cluster import ALGORITHMS

    results = []
    for n in args.sizes:
        steps = [["graph", "--n", str(n), "--tag", "auto"]]
        if n <= 100_000:  # exact vs IVF on the same data, to show what IVF costs in recall
            steps.append(["graph", "--n", str(n), "--tag", "ivf", "--exact-max", "0"])
        steps += [["algorithm", "--n", str(n), "--tag", "auto", "--algorithm", a, "--threshold", str(args.threshold)]
                  for a in ALGORITHMS]
        steps.append(["algorithm", "--n", str(n), "--tag", "auto", "--algorithm", "hdbscan", "--threshold",
                      str(args.threshold), "--hubness"])
        for step in steps:
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_cluster", *step],
                                 cwd=ROOT, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(row)
            print(json.dumps(row), flush=True)
        if n <= 100_000:
            results.append({"step": "ivf_edge_recall", "n": n, "value": _edge_recall(n, args.threshold)})
            print(json.dumps(results[-1]), flush=True)
    (OUT / "cluster_scale.json").write_text(json.dumps(results, indent=1))


def _edge_recall(n: int, threshold: float) -> float:
    """Share of the exact graph's edges above threshold that the IVF graph also has."""
    def edges(tag: str) -> np.ndarray:
        from identity.cluster import KnnGraph

        with np.load(OUT / f"graph_{n}_{tag}.npz") as data:
            lo, hi, _ = KnnGraph(data["indices"], data["similarities"]).edges(threshold)
        return lo * n + hi

    exact, ivf = edges("auto"), edges("ivf")
    return round(float(np.isin(exact, ivf).mean()), 4)


# --- the calibration grid ----------------------------------------------------------------------


def grid(args: argparse.Namespace) -> None:
    """`calibrate_clustering` (one kNN graph; the hubness correction once per floor) against
    `cluster_faces` run on its own for every setting of the same grid (one kNN graph, the
    correction inside each run), on the same faces: time, and whether every row agrees."""
    from dataclasses import replace

    from identity.cluster import (
        ClusterParams,
        FaceSet,
        cluster_faces,
        evaluate_clustering,
        knn_graph,
    )
    from identity.evaluate.calibrate import CLUSTER_FLOORS, CLUSTER_MERGES, calibrate_clustering

    faces, labels = FaceSet.from_npz(embeddings_path(args.model))
    keep = primary_faces(faces)
    x, names = faces.embeddings[keep], np.asarray(labels)[keep]
    params = ClusterParams()
    start = time.perf_counter()
    fit = calibrate_clustering(x, names, params)
    grid_s = time.perf_counter() - start
    subjects = FaceSet.from_embeddings(x)
    start = time.perf_counter()
    graph = knn_graph(subjects.embeddings, params.k, exact_max=params.exact_max)
    each = []
    for corrected in (False, True):
        for floor in CLUSTER_FLOORS:
            for merge in CLUSTER_MERGES:
                trial = replace(params, threshold=float(floor), merge_similarity=float(merge), hubness=corrected)
                m = evaluate_clustering(names, cluster_faces(subjects, trial, graph=graph).labels)
                each.append((m.bcubed_f1, m.bcubed_precision))
    each_s = time.perf_counter() - start
    same = each == [(row["bcubed_f1"], row["bcubed_precision"]) for row in fit.grid]
    print(json.dumps({
        "model": args.model, "faces": len(x), "people": len(set(names)), "settings": len(each),
        "calibrate_clustering_s": round(grid_s, 1), "each_setting_alone_s": round(each_s, 1),
        "speedup": round(each_s / grid_s, 2), "rows_identical": same,
        "fit": {"floor": fit.floor, "merge": fit.merge_similarity, "hubness": fit.hubness, "f1": fit.bcubed_f1},
        "load_average": os.getloadavg(),
    }))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    from identity.config import Settings

    p = sub.add_parser("embed")
    p.add_argument("--force", action="store_true")
    p.add_argument("--model", default=Settings().pipeline.model)
    p.set_defaults(func=embed)
    p = sub.add_parser("quality")
    p.add_argument("--model", default=Settings().pipeline.model)
    p.set_defaults(func=quality)
    p = sub.add_parser("scale")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--threshold", type=float, default=0.5)
    p.set_defaults(func=scale)
    p = sub.add_parser("graph")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--tag", default="auto")
    p.add_argument("--exact-max", type=int, default=200_000)
    p.set_defaults(func=graph_step)
    p = sub.add_parser("algorithm")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--tag", default="auto")
    p.add_argument("--algorithm", required=True)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--hubness", action="store_true", help="hubness-correct the graph first")
    p.set_defaults(func=algorithm_step)
    p = sub.add_parser("grid")
    p.add_argument("--model", default=Settings().pipeline.model)
    p.set_defaults(func=grid)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
