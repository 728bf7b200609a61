"""Ten million faces: compressed indexes with exact re-ranking from rows memory-mapped on disk.

    nice python -m benchmarks.bench_10m --n 10000000 --dim 128 --out benchmarks/out/search10m.jsonl

The float32 rows are generated once (benchmarks.synthetic, face-like, 2-8 faces per
identity) into a raw file `<dir>/rows-<n>x<d>.f32` and memory-mapped; every index reads
them from there, so the process never holds them in anonymous memory. Sizes below --n
(the growth table) use the file's first rows: whole identities, the same distribution.

Per (size, method): build seconds, resident memory (anonymous = the index; file-backed =
pages of the row file in the page cache, shared and reclaimable), single-query p50/p99,
recall@10 against an exact scan of the file, and the identity-first rate (the probe's
identity owns the best face). Methods:

* exact    `ExactScan`: int8 codes in RAM (d bytes a face), exact re-ranking from the file.
* ivfpq    IVF-PQ (d/4 bytes a face) + `RerankedIndex` (k' candidates re-scored exactly).
* hnsw     FAISS HNSW with float32 rows in RAM (sizes up to --max-hnsw only: its build
           time on two cores is the limit).
* hnsw-sq8 HNSW over 8-bit codes in RAM (d bytes a face + the graph) + `RerankedIndex`
           (k' = --sq8-rerank candidates re-scored exactly from the file); sizes up to
           --max-hnsw-sq8.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.bench_search import machine_info
from benchmarks.synthetic import FaceLikeGenerator, load_target
from identity.index.exact import ExactScan
from identity.index.rerank import RerankedIndex, open_rows
from identity.index.spec import sample_rows

K = 10


def memory() -> dict:
    """Resident memory of this process, split: anonymous (heap, the index) and file-backed."""
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon", "RssFile", "VmHWM")):
                key, value = line.split(":")
                fields[key] = int(value.split()[0]) / 1024
    return {"anon_mb": round(fields.get("RssAnon", 0)), "file_mb": round(fields.get("RssFile", 0)),
            "peak_mb": round(fields.get("VmHWM", 0))}


def generate(path: Path, n: int, dim: int, chunk_ids: int = 200_000) -> np.ndarray:
    """Write n face-like rows to `path` (resumable: an existing complete file is reused);
    returns the identity label of every row."""
    labels_path = path.with_suffix(".labels.npy")
    if path.exists() and labels_path.exists() and path.stat().st_size == n * dim * 4:
        return np.load(labels_path)
    gen = FaceLikeGenerator.calibrated(dim, load_target(), seed=dim)
    rng = np.random.default_rng([dim, 4])
    counts = rng.integers(2, 9, n // 4 + 2)  # mean 5 a person: enough identities for n rows
    labels = np.repeat(np.arange(len(counts), dtype=np.int64), counts)[:n]
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, dim))
    gen.centres(int(labels[-1]) + 1)  # once: the cache is rebuilt whenever it must grow
    noise = np.random.default_rng([dim, 5])  # not new_faces' stream, which draws the probes
    for start in range(0, n, chunk_ids * 5):
        stop = min(n, start + chunk_ids * 5)
        out[start:stop] = gen._faces_of(labels[start:stop], noise)
    out.flush()
    del out
    np.save(labels_path, labels)
    return labels


def truth_top_k(rows: np.ndarray, queries: np.ndarray, n: int, chunk: int = 1 << 20) -> np.ndarray:
    """Exact top-K ids of each query among rows[:n] (float32 BLAS, chunk by chunk)."""
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_i = np.full((len(queries), K), -1, np.int64)
    for start in range(0, n, chunk):
        block = np.asarray(rows[start:min(n, start + chunk)])
        s = queries @ block.T
        top = np.argpartition(-s, K, axis=1)[:, :K]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + start], 1)
        keep = np.argsort(-cand_s, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_i


def timed_queries(search, queries):
    search(queries[:3])
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(search(q[None])[0])
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), np.stack(found)


def run_size(rows, labels, n, dim, args, emit) -> None:
    rng = np.random.default_rng(1)
    n_ids = int(labels[n - 1])  # identities wholly inside the first n rows
    probe_ids = rng.choice(n_ids, args.queries, replace=False)
    gen = FaceLikeGenerator.calibrated(dim, load_target(), seed=dim)
    queries = gen.new_faces(probe_ids)
    t = time.perf_counter()
    truth = truth_top_k(rows, queries, n)
    print(f"[{n}x{dim}] exact truth in {time.perf_counter() - t:.1f}s", flush=True)
    view = rows[:n]

    def report(method, params, build_s, mem, p50, p99, found):
        recall = np.mean([len(set(f.tolist()) & set(w.tolist())) / K for f, w in zip(found, truth)])
        first = np.mean(labels[np.maximum(found[:, 0], 0)] == probe_ids)
        emit({"n": n, "dim": dim, "method": method, "params": params, "build_s": round(build_s, 1), **mem,
              "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "recall10": round(float(recall), 4),
              "identity_first": round(float(first), 4), "loadavg": round(os.getloadavg()[0], 2)})

    methods = args.methods.split(",")
    if "exact" in methods:
        base = memory()["anon_mb"]
        t = time.perf_counter()
        scan = ExactScan(dim)
        scan.fit(view)
        build = time.perf_counter() - t
        mem = memory() | {"anon_before_mb": base}
        p50, p99, found = timed_queries(lambda q: scan.search(view, q, K)[1], queries)
        st = scan.stats
        report("exact (int8 scan + re-rank from file)",
               f"{st.candidates / st.queries:.0f} rows re-ranked/query, {st.rescans} rescans", build, mem,
               p50, p99, found)
        del scan
    if "ivfpq" in methods:
        nlist = min(args.max_nlist, 2 ** round(math.log2(4 * math.sqrt(n))))
        m = dim // 4
        base = memory()["anon_mb"]
        t = time.perf_counter()
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        sample = sample_rows(np.random.default_rng(0), n, min(n, max(50 * nlist, 100_000)))
        index.train(np.asarray(view[sample]))
        for start in range(0, n, 1 << 20):
            index.add(np.asarray(view[start:start + (1 << 20)]))
        build = time.perf_counter() - t
        mem = memory() | {"anon_before_mb": base}
        for nprobe in args.nprobe:
            if nprobe > nlist:
                continue
            reranked = RerankedIndex(index, view, rerank=args.rerank, params=faiss.SearchParametersIVF(nprobe=nprobe))
            p50, p99, found = timed_queries(lambda q, r=reranked: r.search(q, K)[1], queries)
            report("ivfpq + exact re-rank from file", f"nlist={nlist}, m={m}, nprobe={nprobe}, k'={args.rerank}",
                   build, mem, p50, p99, found)
        del index
    if "hnsw-sq8" in methods and n <= args.max_hnsw_sq8:
        base = memory()["anon_mb"]
        t = time.perf_counter()
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        index.train(np.asarray(view[sample_rows(np.random.default_rng(0), n, min(n, 100_000))]))
        for start in range(0, n, 1 << 20):
            index.add(np.asarray(view[start:start + (1 << 20)]))
        build = time.perf_counter() - t
        mem = memory() | {"anon_before_mb": base}
        for ef in args.ef:
            params = faiss.SearchParametersHNSW(efSearch=max(ef, args.sq8_rerank))
            reranked = RerankedIndex(index, view, rerank=args.sq8_rerank, params=params)
            p50, p99, found = timed_queries(lambda q, r=reranked: r.search(q, K)[1], queries)
            report("hnsw-sq8 + exact re-rank from file",
                   f"M=32, efConstruction={args.ef_construction}, efSearch={max(ef, args.sq8_rerank)}, "
                   f"k'={args.sq8_rerank}", build, mem, p50, p99, found)
        del index
    if "hnsw" in methods and n <= args.max_hnsw:
        base = memory()["anon_mb"]
        t = time.perf_counter()
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        for start in range(0, n, 1 << 20):
            index.add(np.asarray(view[start:start + (1 << 20)]))
        build = time.perf_counter() - t
        mem = memory() | {"anon_before_mb": base}
        for ef in args.ef:
            params = faiss.SearchParametersHNSW(efSearch=ef)
            p50, p99, found = timed_queries(lambda q, p=params: index.search(q, K, params=p)[1], queries)
            report("hnsw (float32 in RAM)", f"M=32, efConstruction=64, efSearch={ef}", build, mem, p50, p99, found)
        del index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="growth table sizes (default: 100k, 1M, n)")
    ap.add_argument("--methods", default="exact,ivfpq,hnsw")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--max-nlist", type=int, default=4096, help="coarse lists (training time on 2 cores)")
    ap.add_argument("--rerank", type=int, default=200, help="candidates re-ranked exactly per query")
    ap.add_argument("--ef", type=int, nargs="+", default=[96])
    ap.add_argument("--max-hnsw", type=int, default=1_000_000)
    ap.add_argument("--max-hnsw-sq8", type=int, default=10_000_000)
    ap.add_argument("--ef-construction", type=int, default=64, help="hnsw-sq8's build breadth")
    ap.add_argument("--sq8-rerank", type=int, default=40, help="hnsw-sq8: candidates re-ranked exactly per query")
    ap.add_argument("--dir", type=Path, default=Path("benchmarks/out/10m"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/search10m.jsonl"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    info = machine_info()

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    emit(info)
    path = args.dir / f"rows-{args.n}x{args.dim}.f32"
    t = time.perf_counter()
    labels = generate(path, args.n, args.dim)
    emit({"generated": str(path), "seconds": round(time.perf_counter() - t, 1), "gb": round(path.stat().st_size / 2**30, 2)})
    rows = open_rows(path, args.dim)
    for n in args.sizes or sorted({100_000, 1_000_000, args.n}):
        if n <= args.n:
            run_size(rows, labels, n, args.dim, args, emit)


if __name__ == "__main__":
    main()
