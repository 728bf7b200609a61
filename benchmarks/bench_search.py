"""1:N search benchmark: every index type on the same face-like synthetic data.

    nice python -m benchmarks.bench_search --out benchmarks/out/search.json
    nice python -m benchmarks.bench_search --sizes 20000 --dims 128 --queries 50   # smoke run

For each (N, dim): identities with 2..8 faces each (mean 5) from `benchmarks.synthetic`
(calibrated to the model's LFW similarity statistics), and probe faces that are *new*
faces of enrolled identities. Per method: build time, resident-memory growth, single-query
p50/p99 latency and batched queries/s — all through `FaceIndex.search` (FAISS call +
per-person aggregation), except the two references: a bare `IndexFlatIP.search` and
numpy brute force — recall@10 of face ids against exact search, and the rate at which
the probe's identity is the first person returned. Results are appended to a JSON file
per configuration, so a partial run still reports what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import faiss
import numpy as np
import psutil

from benchmarks.synthetic import FaceLikeGenerator, load_target
from identity.config import Settings
from identity.index.exact import exact_scores, top_k_order
from identity.index.face_index import FaceIndex
from identity.index.spec import choose_spec, sample_rows, training_sample_size

K = 10
THRESHOLD = 0.4  # well under same-identity similarity, above different-identity (synthetic)


@dataclass
class Row:
    n: int
    dim: int
    method: str
    params: str
    build_s: float
    rss_mb: float
    p50_ms: float
    p99_ms: float
    batch_qps: float
    recall10: float
    identity_first: float
    vs_bare: float | None = None  # p50 ratio to a bare IndexFlatIP.search, interleaved query by query
    vs_numpy: float | None = None  # p50 ratio to numpy matmul + argpartition, interleaved query by query
    batch_vs_numpy: float | None = None  # time ratio for the whole batch, same run, alternated
    exact_match: str | None = None  # "m/n": queries whose ids and scores equal brute force bit for bit
    cpu_p50_ms: float | None = None  # median CPU time of the calling thread per single query


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def single_latencies(search, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wall ms, calling-thread CPU ms) per single query. On the shared machine the wall
    time includes waiting for a core; the CPU time is what the query costs on an idle
    one, when the search runs on the calling thread (HNSW and the exact scan do for one
    query; BLAS and OpenMP worker threads are not counted)."""
    search(queries[:5])  # warm-up
    times, cpu = [], []
    for q in queries:
        c, t = time.thread_time(), time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    return np.array(times) * 1000, np.array(cpu) * 1000


def measure(n, dim, method, params, build_s, rss, search_ids, search_persons, queries, batch, truth, labels) -> Row:
    """search_ids(q) -> (nq×K face ids); search_persons(q) -> best person per query (or -1)."""
    lat, cpu = single_latencies(search_persons, queries)
    t = time.perf_counter()
    search_persons(batch)
    qps = len(batch) / (time.perf_counter() - t)
    got = search_ids(queries)
    recall = np.mean([len(set(g.tolist()) & set(w.tolist())) / K for g, w in zip(got, truth)])
    first = np.mean(search_persons(queries) == labels)
    return Row(n, dim, method, params, build_s, rss, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
               qps, float(recall), float(first), cpu_p50_ms=float(np.percentile(cpu, 50)))


SWEEP = {"nprobe": (16, 64, 256), "ef_search": (32, 40, 48, 64, 96, 128)}
RERANK_FACTORS: tuple[int, ...] = ()  # hnsw-sq8: also swept when given (--rerank-factors)


def bench_faiss(kind, settings, n, dim, vectors, persons, queries, batch, truth, labels, *, override=None) -> list[Row]:
    spec = choose_spec(settings.index, n, dim, kind=kind)
    if override:
        spec = replace(spec, **override)
    before = rss_mb()
    t = time.perf_counter()
    index = FaceIndex(spec)
    if spec.trained:
        rows = sample_rows(np.random.default_rng(0), n, training_sample_size(spec, n))
        index.train(vectors[rows])
    ids = np.arange(n, dtype=np.int64)
    for start in range(0, n, 262_144):
        index.add(ids[start : start + 262_144], persons[start : start + 262_144], vectors[start : start + 262_144])
    build = time.perf_counter() - t
    rss = rss_mb() - before

    def ids_of(q):
        return [r[1] for r in index.search_faces(q, K)]

    def persons_of(q):
        return np.array([r.best.person_id if r.known else -1 for r in index.search(q, K, THRESHOLD)])

    rows = []
    sweep = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "ef_search", "hnsw-sq8": "ef_search"}.get(spec.kind)
    values = [None] if sweep is None else sorted({getattr(spec, sweep), *SWEEP[sweep]})
    factors = RERANK_FACTORS if spec.kind == "hnsw-sq8" and RERANK_FACTORS else (spec.rerank_factor,)
    for value, factor in [(v, f) for f in factors for v in values]:
        if sweep is not None:
            if sweep == "nprobe" and value > spec.nlist:
                continue
            index.spec = replace(spec, **{sweep: value}, rerank_factor=factor)
        rows.append(measure(n, dim, f"faiss {kind}", index.spec.describe(), build, rss, ids_of, persons_of,
                            queries, batch, truth, labels))
    if spec.kind == "flat":
        rows[0].vs_bare = ratio_to_bare(index, vectors, queries)
        rows[0].vs_numpy, rows[0].batch_vs_numpy = ratio_to_numpy(index, vectors, queries, batch)
        rows[0].exact_match = verify_exact(index, vectors, queries[:VERIFY_QUERIES])
        stats = index._exact.stats if index._exact is not None else None
        if stats is not None and stats.queries:
            rows[0].params += (f", int8 scan + exact re-rank: {stats.candidates / stats.queries:.0f} rows "
                               f"re-ranked/query, {stats.rescans / stats.queries:.3f} rescans/query")
    del index
    return rows


VERIFY_QUERIES = 20
NUMPY_CHUNK = 100  # queries per numpy matmul: 1,000 × 1M float32 scores would be 4 GB


def numpy_top_k(vectors: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    """The reference: matmul + argpartition (+ sort of the k), in chunks of queries."""
    out = []
    for start in range(0, len(q), NUMPY_CHUNK):
        sims = q[start:start + NUMPY_CHUNK] @ vectors.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
        out.append(np.take_along_axis(top, order, 1))
    return np.concatenate(out)


def ratio_to_numpy(index: FaceIndex, vectors: np.ndarray, queries: np.ndarray, batch: np.ndarray):
    """(p50 ours / p50 numpy for single queries, alternating query by query;
    ours / numpy for the whole batch, alternating twice). Ours = FaceIndex.search."""
    ours, theirs = [], []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], K, THRESHOLD)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        numpy_top_k(vectors, q[None])
        theirs.append(time.perf_counter() - t)
    single = float(np.median(ours) / np.median(theirs))
    ours_b, theirs_b = [], []
    for _ in range(2):
        t = time.perf_counter()
        index.search(batch, K, THRESHOLD)
        ours_b.append(time.perf_counter() - t)
        t = time.perf_counter()
        numpy_top_k(vectors, batch)
        theirs_b.append(time.perf_counter() - t)
    print(f"  exact vs numpy: single p50 {np.median(ours) * 1e3:.2f} / {np.median(theirs) * 1e3:.2f} ms, "
          f"batch of {len(batch)} {min(ours_b):.2f} / {min(theirs_b):.2f} s", flush=True)
    return single, float(min(ours_b) / min(theirs_b))


def verify_exact(index: FaceIndex, vectors: np.ndarray, queries: np.ndarray, chunk: int = 131_072) -> str:
    """Compare FaceIndex's exact top-K with a brute-force scan under the same definition
    (exact.exact_scores over every row, score desc then id asc): ids and scores equal."""
    got = index.search_faces(queries, K)
    ok = 0
    for q, (sims, ids, _) in zip(queries, got):
        scores = np.concatenate([exact_scores(q[None], vectors[s:s + chunk])[0] for s in range(0, len(vectors), chunk)])
        kth = -np.partition(-scores, K - 1)[K - 1]
        tied = np.flatnonzero(scores >= kth)  # every row that could be in the top K (ties included)
        best = tied[top_k_order(scores[tied], tied, K)]
        ok += ids.tolist() == best.tolist() and np.array_equal(sims, scores[best])
    return f"{ok}/{len(queries)}"


def ratio_to_bare(index: FaceIndex, vectors: np.ndarray, queries: np.ndarray) -> float:
    """p50(our search) / p50(bare IndexFlatIP.search), alternating query by query so both
    see the same machine load (the shared 2-core machine is noisy)."""
    bare = faiss.IndexFlatIP(vectors.shape[1])
    bare.add(vectors)
    ours, theirs = [], []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], K, THRESHOLD)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        bare.search(q[None], K)
        theirs.append(time.perf_counter() - t)
    return float(np.median(ours) / np.median(theirs))


def bench_bare_flat(n, dim, vectors, persons, queries, batch, truth, labels) -> Row:
    before = rss_mb()
    t = time.perf_counter()
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    build = time.perf_counter() - t
    rss = rss_mb() - before

    def ids_of(q):
        return index.search(q, K)[1]

    def persons_of(q):  # no aggregation: the top face's person
        return persons[index.search(q, K)[1][:, 0]]

    row = measure(n, dim, "bare IndexFlatIP.search", "no ids, no aggregation", build, rss, ids_of, persons_of,
                  queries, batch, truth, labels)
    del index
    return row


def bench_numpy(n, dim, vectors, persons, queries, batch, truth, labels) -> Row:
    def ids_of(q):
        return numpy_top_k(vectors, q)

    def persons_of(q):
        return persons[ids_of(q)[:, 0]]

    return measure(n, dim, "numpy brute force", f"matmul + argpartition, {NUMPY_CHUNK} queries per matmul",
                   0.0, 0.0, ids_of, persons_of, queries, batch, truth, labels)


def bench_pgvector(n, dim, vectors, persons, queries, batch, truth, labels, ef_search: int) -> Row:
    """pgvector HNSW (m=16, ef_construction=64) through identity.store.vector_search."""
    import psycopg

    from identity.store import Store
    from identity.store.testing import PgTestServer, server_directory
    from identity.store.vector_search import ensure_hnsw_index, hnsw_index_name, search_faces_sql

    model = "bench-model"
    with server_directory() as directory:
        server = PgTestServer.start(directory)
        try:
            url = server.new_database("bench")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("INSERT INTO models (name, dim) VALUES (%s, %s)", (model, dim))
                n_images = (n + 29_999) // 30_000
                for i in range(n_images):
                    conn.execute("INSERT INTO images (sha256, width, height) VALUES (%s, 1, 1)",
                                 (i.to_bytes(32, "big"),))
                image_ids = [r[0] for r in conn.execute("SELECT id FROM images ORDER BY id")]
                persons_exist = np.unique(persons)
                with conn.cursor().copy("COPY persons (external_id) FROM STDIN") as copy:
                    for p in persons_exist.tolist():
                        copy.write_row((f"p{p}",))
                pid = dict(conn.execute("SELECT external_id, id FROM persons").fetchall())
                with conn.cursor().copy(
                    "COPY faces (image_id, person_id, face_index, box, landmarks, det_prob, quality, model, "
                    "model_version, embedding) FROM STDIN"
                ) as copy:
                    for i in range(n):
                        copy.write_row((image_ids[i // 30_000], pid[f"p{persons[i]}"], i % 30_000, [0, 0, 1, 1],
                                        [0] * 10, 1.0, 1.0, model, "1", str(vectors[i].tolist())))
                face_ids = np.array([r[0] for r in conn.execute("SELECT id FROM faces ORDER BY id")], np.int64)
                person_by_db = {v: int(k[1:]) for k, v in pid.items()}
            store = Store.open(Settings(database_url=url, data_dir=directory / "data"), migrate=False)
            try:
                t = time.perf_counter()
                ensure_hnsw_index(store, model, dim)
                build = time.perf_counter() - t
                with store.connection() as conn:
                    conn.execute("VACUUM ANALYZE faces")
                    idx_mb = conn.execute("SELECT pg_relation_size(%s::regclass)", (hnsw_index_name(model),)).fetchone()[0] / 2**20

                def ids_of(q):
                    rows = search_faces_sql(store, model, dim, q, K, ef_search=ef_search)
                    # Face ids follow COPY order: position in face_ids = row in `vectors`.
                    return [np.searchsorted(face_ids, r[1]) for r in rows]

                def persons_of(q):
                    rows = search_faces_sql(store, model, dim, q, K, ef_search=ef_search)
                    return np.array([person_by_db.get(int(r[2][0]), -1) if len(r[2]) else -1 for r in rows])

                row = measure(n, dim, "pgvector hnsw", f"m=16, ef_construction=64, ef_search={ef_search}",
                              build, idx_mb, ids_of, persons_of, queries, batch[:200], truth, labels)
                row.params += " (memory = index size on disk)"
                return row
            finally:
                store.close()
        finally:
            server.stop()


def machine_info() -> dict:
    """What the figures depend on: CPU, BLAS libraries and their threads, load."""
    from threadpoolctl import threadpool_info

    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')}, {i['num_threads']} threads, "
            f"{Path(i['filepath']).name})" for i in threadpool_info() if i.get("user_api") == "blas"]
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "faiss": faiss.__version__, "numpy": np.__version__, "omp_threads": faiss.omp_get_max_threads(),
        "blas": blas, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "loadavg_at_start": os.getloadavg(), "target": str(load_target()),
    }


def run_config(n, dim, args, out: Path) -> None:
    settings = Settings(index_exact_max=0)  # every kind explicitly; defaults derived from N
    gen = FaceLikeGenerator.calibrated(dim, load_target(), seed=dim)
    n_ids = max(1, n // 5)
    t = time.perf_counter()
    vectors, persons = gen.faces(n_ids, (2, 8))
    vectors, persons = vectors[:n], persons[:n]
    n = len(vectors)
    rng = np.random.default_rng(1)
    labels = rng.choice(np.unique(persons), args.queries, replace=False)
    queries = gen.new_faces(labels)
    batch = gen.new_faces(rng.choice(np.unique(persons), args.batch))
    truth = faiss.knn(queries, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    print(f"[{n}x{dim}] data in {time.perf_counter() - t:.1f}s", flush=True)

    def emit(row: Row) -> None:
        record = asdict(row) | {"loadavg": round(os.getloadavg()[0], 2)}
        print(json.dumps(record), flush=True)
        with out.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    common = (n, dim, vectors, persons, queries, batch, truth, labels)
    methods = args.methods.split(",")
    big = n * dim * 4 > args.max_flat_gb * 2**30
    if "bare" in methods and not big:
        emit(bench_bare_flat(*common))
    if "numpy" in methods and not big:
        emit(bench_numpy(*common))
    for kind in ("flat", "ivf", "ivfpq", "hnsw", "hnsw-sq8"):
        if kind not in methods or (kind == "flat" and big):
            continue
        if kind.startswith("hnsw") and n * dim > args.max_hnsw:
            print(f"[{n}x{dim}] {kind} skipped (build too slow on this machine; --max-hnsw)", flush=True)
            continue
        if kind == "ivfpq" and dim > 256 and not big:
            continue
        override = {"nlist": min(4096, choose_spec(settings.index, n, dim, kind="ivf").nlist)} if big else None
        if override and kind in ("ivf", "ivfpq"):
            override["nprobe"] = 64
        if kind.startswith("hnsw"):
            override = {"ef_construction": args.ef_construction} if args.ef_construction else None
        for row in bench_faiss(kind, settings, *common, override=override):
            emit(row)
    if "pgvector" in methods and n <= args.pgvector_max:
        emit(bench_pgvector(*common, ef_search=args.pg_ef_search))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--methods", default="bare,numpy,flat,ivf,ivfpq,hnsw,hnsw-sq8,pgvector")
    ap.add_argument("--queries", type=int, default=200, help="single queries (latency, recall, identity-first)")
    ap.add_argument("--batch", type=int, default=2000, help="queries in the batched-throughput call")
    ap.add_argument("--max-hnsw", type=int, default=1_000_000 * 128, help="largest n*dim for which HNSW is built")
    ap.add_argument("--ef-construction", type=int, default=None, help="HNSW build breadth (default: the settings')")
    ap.add_argument("--ef", type=int, nargs="+", default=None, help="efSearch values swept (default: %s)" % (SWEEP["ef_search"],))
    ap.add_argument("--rerank-factors", type=int, nargs="+", default=None,
                    help="hnsw-sq8: re-rank factors swept with each efSearch (default: the settings')")
    ap.add_argument("--max-flat-gb", type=float, default=3.0, help="skip exact baselines above this much float32")
    ap.add_argument("--pgvector-max", type=int, default=100_000)
    ap.add_argument("--pg-ef-search", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/search.jsonl"))
    args = ap.parse_args()
    if args.ef:
        SWEEP["ef_search"] = tuple(args.ef)
    if args.rerank_factors:
        global RERANK_FACTORS
        RERANK_FACTORS = tuple(args.rerank_factors)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print(json.dumps(info), flush=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(info) + "\n")
    for dim in args.dims:
        for n in args.sizes:
            run_config(n, dim, args, args.out)


if __name__ == "__main__":
    main()
