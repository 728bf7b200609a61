"""HNSW variants on the same face-like data, by CPU time per query at equal recall.

    nice python -m benchmarks.bench_hnsw_variants --n 1000000 --variants sq8-m32 flat-m16

Bare FAISS calls (not `FaceIndex.search`): the question is which graph and which codes
reach recall@10 ≥ 0.95 for the least work, before one of them is wired into the index.
Variants: `flat-mM` (IndexHNSWFlat, float32 rows) and `sq8-mM` (IndexHNSWSQ over 8-bit
codes: the graph walk reads a quarter of the bytes; the best `--rerank` candidates are
then re-scored exactly from the float32 rows, so returned scores are exact). Latency is
the CPU time of the calling thread (one OpenMP thread), so it does not depend on how busy
the machine is; builds use two threads. Recall@10 is against brute force on the same
300 probes (new faces of enrolled identities), identical for every variant.
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from benchmarks.synthetic import FaceLikeGenerator, load_target

K = 10


def build(variant: str, x: np.ndarray, ef_construction: int) -> faiss.Index:
    kind, m = variant.split("-m")
    dim = x.shape[1]
    if kind == "flat":
        index = faiss.IndexHNSWFlat(dim, int(m), faiss.METRIC_INNER_PRODUCT)
    elif kind == "sq8":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, int(m), faiss.METRIC_INNER_PRODUCT)
        index.train(x[: min(len(x), 50_000)])
    else:
        raise SystemExit(f"unknown variant {variant!r}: flat-mM or sq8-mM")
    index.hnsw.efConstruction = ef_construction
    index.add(x)
    return index


def searcher(index: faiss.Index, x: np.ndarray, rerank: int, exact_codes: bool):
    if exact_codes:
        return lambda q: index.search(q, K)[1][0]

    def search(q: np.ndarray) -> np.ndarray:
        candidates = index.search(q, rerank)[1][0]
        candidates = candidates[candidates >= 0]
        scores = x[candidates] @ q[0]
        return candidates[np.argsort(-scores, kind="stable")[:K]]

    return search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="faces (identities × 2..8 faces)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--variants", nargs="+", default=["flat-m32", "sq8-m32", "flat-m16"])
    ap.add_argument("--ef", type=int, nargs="+", default=[32, 48, 64, 96, 128])
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--rerank", type=int, default=40, help="candidates re-scored exactly (sq8)")
    ap.add_argument("--probes", type=int, default=300)
    args = ap.parse_args()

    gen = FaceLikeGenerator.calibrated(args.dim, load_target(), seed=args.dim)
    n_ids = args.n // 5
    x, _ = gen.faces(n_ids, (2, 8))
    probes = gen.new_faces(np.random.default_rng(1).choice(n_ids, args.probes))
    truth = np.argsort(-(probes @ x.T), axis=1)[:, :K]
    print(json.dumps({"n": len(x), "dim": args.dim, "faiss": faiss.__version__}), flush=True)

    for variant in args.variants:
        faiss.omp_set_num_threads(2)
        started = time.perf_counter()
        index = build(variant, x, args.ef_construction)
        build_s = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        search = searcher(index, x, args.rerank, exact_codes=variant.startswith("flat"))
        for ef in args.ef:
            index.hnsw.efSearch = ef
            cpu, hits = [], 0
            for i in range(len(probes)):
                t = time.thread_time()
                ids = search(probes[i : i + 1])
                cpu.append(time.thread_time() - t)
                hits += len(set(ids.tolist()) & set(truth[i].tolist()))
            print(json.dumps({"variant": variant, "ef_search": ef, "build_s": round(build_s, 1),
                              "cpu_p50_ms": round(float(np.median(cpu)) * 1e3, 3),
                              "recall10": round(hits / (K * len(probes)), 3)}), flush=True)
        del index


if __name__ == "__main__":
    main()
