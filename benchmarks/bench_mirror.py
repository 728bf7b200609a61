"""The store side of a large index: build the mirror from PostgreSQL, snapshot it, restart.

    nice python -m benchmarks.bench_mirror --state /tmp/sv/s1m --out benchmarks/out/mirror_1m.json
    nice python -m benchmarks.bench_mirror --state /tmp/sv/s10m --faces 10000000 --copy-fill \
        --out benchmarks/out/mirror_10m.json

On a state directory that `benchmarks.bench_serving` filled (its embedded PostgreSQL with N
synthetic faces; `--faces N` fills a new one the same way, through `Store.add_faces`, or with
`--copy-fill` by bulk COPY: N/5 persons, N images and N faces, 5 faces a person, the faces in
binary COPY batches of 100,000 that fire the change-log trigger as enrollment's do; the fill's
rows/s, the VACUUM ANALYZE after it and the database's size are recorded), in one process:

1. the binary COPY alone: every face's row streamed out of PostgreSQL (`snapshot_embeddings`),
   rows per second;
2. a cold build: `IndexMirror.open()` with no snapshot, i.e. the store's count, the index
   chosen for it, the COPY streamed straight into it (`build_index(..., expected=...)`) and
   the first snapshot written; seconds and the process's peak anonymous memory;
3. a restart: a second mirror on the same snapshot directory, `open()` maps the snapshot
   and replays the change log above its watermark; seconds, and the first search's answer
   against the built mirror's.

`--keep-heap`, the comparison: the heap the build freed stays in the process (the mirror
otherwise hands it back to the kernel, `identity.memory.release_free_memory`). `--keep-lists`,
the other comparison: an IVF index keeps the spare capacity its lists grew while the rows
streamed in (the build otherwise refits them, `identity.index.invlists`).

The snapshot directory is a temporary one, so the state's own snapshot is left as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def anon_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) / 1024
    return 0.0


def fill_by_copy(state: Path, faces: int, batch: int = 100_000) -> dict:
    """A new bench_serving-shaped state (database `serving`, API key, queries) whose faces are
    loaded by COPY: the bulk load an operator would run, not enrollment's per-image path."""
    import psycopg

    from benchmarks.bench_serving import KEY_FILE
    from benchmarks.synthetic import FaceLikeGenerator, load_target
    from identity.config import Settings
    from identity.faces import models
    from identity.store import Store, pgcopy
    from identity.store.embedded import ensure_database, start_server
    from identity.store.keys import create_key
    from identity.store.migrate import upgrade_url

    done = state / "filled.json"
    if done.exists():
        return json.loads(done.read_text())
    state.mkdir(parents=True, exist_ok=True)
    server = start_server(state / "pgdata", cleanup_mode=None)
    url = ensure_database(server, "serving")
    upgrade_url(url)
    spec = models.get_model(Settings().pipeline.model)
    per, persons = 5, faces // 5
    gen = FaceLikeGenerator.calibrated(dim=spec.dim, target=load_target(), seed=0)
    labels = np.repeat(np.arange(persons, dtype=np.int64), per)
    gen.centres(persons)
    noise = np.random.default_rng([spec.dim, 5])
    rng = np.random.default_rng(1)
    timings: dict = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO models (name, dim) VALUES (%s, %s)", (spec.name, spec.dim))
        t = time.perf_counter()
        conn.execute("INSERT INTO persons (external_id) SELECT 'synthetic-' || g FROM generate_series(0, %s) g",
                     (persons - 1,))
        (first_person,) = conn.execute("SELECT min(id) FROM persons").fetchone()
        timings["persons_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        for start in range(0, faces, 1_000_000):
            conn.execute("INSERT INTO images (sha256, source, width, height) "
                         "SELECT sha256(int8send(g)), 'synthetic/' || g || '.jpg', 250, 250 "
                         "FROM generate_series(%s, %s) g", (start, min(faces, start + 1_000_000) - 1))
        (first_image,) = conn.execute("SELECT min(id) FROM images").fetchone()
        timings["images_s"] = round(time.perf_counter() - t, 1)
        faces_s = generate_s = 0.0
        for start in range(0, faces, batch):
            stop = min(faces, start + batch)
            t = time.perf_counter()
            vectors = gen._faces_of(labels[start:stop], noise)
            generate_s += time.perf_counter() - t
            n = stop - start
            t = time.perf_counter()
            payload = pgcopy.encode_face_rows(
                image_ids=np.arange(first_image + start, first_image + stop, dtype=np.int64),
                person_ids=labels[start:stop] + first_person, face_indexes=np.zeros(n, np.int16),
                boxes=np.tile(np.float32([10, 10, 110, 130]), (n, 1)), landmarks=np.zeros((n, 10), np.float32),
                det_probs=np.full(n, 0.99, np.float32), qualities=np.full(n, 0.9, np.float32),
                model=spec.name, model_version=spec.version, embeddings=vectors)
            with conn.transaction():
                conn.execute("SELECT identity_lock_changes()")
                with conn.cursor().copy(f"COPY faces ({pgcopy.FACE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(payload)
            faces_s += time.perf_counter() - t
            if (stop // batch) % 10 == 0 or stop == faces:
                print(json.dumps({"faces_copied": stop, "seconds": round(faces_s, 1)}), flush=True)
        timings.update(faces_s=round(faces_s, 1), faces_per_s=round(faces / faces_s), generate_s=round(generate_s, 1))
        t = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        timings["vacuum_analyze_s"] = round(time.perf_counter() - t, 1)
        timings["database_gb"] = round(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**30, 2)
        logged = conn.execute("SELECT count(*) FROM change_log").fetchone()[0]
        assert logged == faces, (logged, faces)
    with Store.open(Settings(database_url=url)) as store:
        (state / KEY_FILE).write_text(create_key(store, "bench", ["read"])[1])
    queries = gen.new_faces(rng.integers(0, persons, 256))
    (state / "queries.json").write_text(json.dumps([{"vectors": [q], "k": 5} for q in queries.tolist()]))
    record = {"faces": faces, "fill": "copy", **timings}
    done.write_text(json.dumps(record))
    return record


def main() -> None:
    from benchmarks.bench_serving import prepare
    from identity.config import Settings
    from identity.index import IndexMirror
    from identity.service import Service
    from identity.store import Store

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state", type=Path, required=True, help="a bench_serving state directory")
    ap.add_argument("--faces", type=int, default=1_000_000, help="faces to fill a new state with")
    ap.add_argument("--copy-fill", action="store_true", help="fill a new state by bulk COPY")
    ap.add_argument("--index", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/mirror.json"))
    ap.add_argument("--keep-heap", action="store_true",
                    help="the comparison: the mirror does not hand freed heap back after the build")
    ap.add_argument("--keep-lists", action="store_true",
                    help="the comparison: the build does not refit an IVF index's lists")
    args = ap.parse_args()
    if args.keep_lists:
        from identity.index.face_index import FaceIndex

        FaceIndex.fit_lists = lambda self: 0
    if args.keep_heap:
        import identity.index.mirror

        identity.index.mirror.release_free_memory = lambda: False
    fill = fill_by_copy(args.state, args.faces) if args.copy_fill else None
    url, _, _ = prepare(args.state, argparse.Namespace(faces=args.faces, index=args.index))
    result: dict = {"keep_heap": args.keep_heap, "keep_lists": args.keep_lists,
                    "machine": {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                                "load_average_at_start": os.getloadavg()}, "state": str(args.state),
                    "fill": fill or json.loads((args.state / "filled.json").read_text())}
    with tempfile.TemporaryDirectory(prefix="identity-mirror-") as data:
        settings = Settings(database_url=url, data_dir=Path(data), device="cpu", index_type=args.index,
                            index_use_gpu=False)
        with Store.open(settings) as store:
            model = Service(settings).model_info
            t = time.perf_counter()
            rows = 0
            _, batches = store.snapshot_embeddings(model.name)
            for ids, _, _ in batches:
                rows += len(ids)
            copy_s = time.perf_counter() - t
            result["copy"] = {"rows": rows, "seconds": round(copy_s, 1), "rows_per_s": round(rows / copy_s)}
            print(json.dumps(result["copy"]), flush=True)

            before = anon_mb()
            t = time.perf_counter()
            built = IndexMirror.from_settings(store, settings, model)
            built.open()
            status = built.status()
            result["cold_build"] = {
                "seconds": round(time.perf_counter() - t, 1), "faces": status.count, "index": status.index_type,
                "chosen_because": status.chosen_because, "anon_mb_before": round(before),
                "anon_mb_after": round(anon_mb()),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
            print(json.dumps(result["cold_build"]), flush=True)

            t = time.perf_counter()
            restarted = IndexMirror.from_settings(store, settings, model)
            restarted.open()
            restart_s = time.perf_counter() - t
            queries = np.random.default_rng(0).standard_normal((20, model.dim)).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            same = restarted.search(queries, 5, 0.0) == built.search(queries, 5, 0.0)
            result["restart"] = {"seconds": round(restart_s, 2), "faces": restarted.status().count,
                                 "shared_snapshot": restarted.status().shared_snapshot, "same_answers": same}
            print(json.dumps(result["restart"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
