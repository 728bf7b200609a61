"""Insert synthetic 128-d face embeddings: binary COPY (the store's path) against
executemany INSERT, in the same run, on the same fresh embedded PostgreSQL.

    nice python benchmarks/bench_store_insert.py --rows 1000000 --insert-rows 50000

Both methods write the same kind of rows into `faces` (and so fire the same
change-log trigger and foreign-key checks), in transactions of --batch rows; the
timing covers encoding/parameter conversion, the insert and the commit, not the
generation of the synthetic data. executemany is measured on a subset
(--insert-rows) and reported as rows/s, because at its speed a million rows would
take most of an hour; the ratio compares rows/s.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from identity.store import pgcopy
from identity.store.embedded import ensure_database, start_server
from identity.store.migrate import upgrade_url
from identity.store.testing import server_directory

MODEL, VERSION, DIM = "bench-128", "v1", 128


def rows(n: int, first_image: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {
        "image_ids": np.arange(first_image, first_image + n, dtype=np.int64),
        "person_ids": rng.integers(1, 1001, n).astype(np.int64),
        "face_indexes": np.zeros(n, np.int16),
        "boxes": rng.uniform(0, 250, (n, 4)).astype(np.float32),
        "landmarks": rng.uniform(0, 250, (n, 10)).astype(np.float32),
        "det_probs": rng.uniform(0.9, 1, n).astype(np.float32),
        "qualities": rng.uniform(0, 1, n).astype(np.float32),
        "embeddings": vectors,
    }


def prepare(conn: psycopg.Connection, images: int) -> None:
    """Persons, images and the model row the faces refer to (not timed)."""
    conn.execute("INSERT INTO models (name, dim) VALUES (%s, %s)", (MODEL, DIM))
    conn.execute(
        "INSERT INTO persons (external_id) SELECT 'p' || g FROM generate_series(1, 1000) g"
    )
    conn.execute(
        "INSERT INTO images (sha256, width, height) "
        "SELECT sha256(int8send(g)), 250, 250 FROM generate_series(1, %s) g",
        (images,),
    )
    conn.execute("VACUUM ANALYZE")


def timed_copy(conn: psycopg.Connection, total: int, first_image: int, batch: int) -> tuple[float, float]:
    """(wall seconds, client CPU seconds)."""
    elapsed = cpu = 0.0
    for offset in range(0, total, batch):
        n = min(batch, total - offset)
        data = rows(n, first_image + offset, seed=offset)  # synthetic data: not timed
        start, start_cpu = time.perf_counter(), time.process_time()
        payload = pgcopy.encode_face_rows(model=MODEL, model_version=VERSION, **data)
        with conn.transaction():
            conn.execute("SELECT identity_lock_changes()")
            with conn.cursor().copy(f"COPY faces ({pgcopy.FACE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(payload)
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    return elapsed, cpu


def timed_executemany(conn: psycopg.Connection, total: int, first_image: int, batch: int) -> tuple[float, float]:
    """(wall seconds, client CPU seconds)."""
    from pgvector.psycopg import register_vector

    register_vector(conn)
    sql = (
        f"INSERT INTO faces ({pgcopy.FACE_COLUMNS}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    elapsed = cpu = 0.0
    for offset in range(0, total, batch):
        n = min(batch, total - offset)
        d = rows(n, first_image + offset, seed=10_000_000 + offset)  # not timed
        start, start_cpu = time.perf_counter(), time.process_time()
        params = [
            (
                int(d["image_ids"][i]), int(d["person_ids"][i]), int(d["face_indexes"][i]),
                d["boxes"][i].tolist(), d["landmarks"][i].tolist(), float(d["det_probs"][i]),
                float(d["qualities"][i]), MODEL, VERSION, d["embeddings"][i],
            )
            for i in range(n)
        ]
        with conn.transaction():
            conn.execute("SELECT identity_lock_changes()")
            conn.cursor().executemany(sql, params)
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    return elapsed, cpu


def timed_add_faces(url: str, total: int, batch: int) -> float:
    """Store.add_faces as enrollment calls it: batches of `batch` one-face images, each
    with its person (new every 4 images), images and faces written in one transaction."""
    import hashlib

    from identity.config import Settings
    from identity.faces.types import Face, ImageResult
    from identity.store import FacesToAdd, ModelInfo, Store

    model = ModelInfo("bench-enroll-128", VERSION, DIM)
    elapsed = 0.0
    with Store.open(Settings(database_url=url)) as store:
        for offset in range(0, total, batch):
            d = rows(min(batch, total - offset), 0, seed=20_000_000 + offset)  # not timed
            items = [
                FacesToAdd(
                    ImageResult(
                        source=f"/photos/{offset + i}.jpg",
                        sha256=hashlib.sha256(b"enroll-%d" % (offset + i)).hexdigest(),
                        width=250,
                        height=250,
                        faces=(Face(tuple(d["boxes"][i]), d["landmarks"][i].reshape(5, 2), 0.99,
                                    embedding=d["embeddings"][i], quality=0.8),),
                    ),
                    external_id=f"enroll-{(offset + i) // 4}",
                )
                for i in range(len(d["embeddings"]))
            ]
            start = time.perf_counter()
            outcomes = store.add_faces(items, model=model)
            elapsed += time.perf_counter() - start
            assert all(o.status == "added" for o in outcomes)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows inserted with binary COPY")
    parser.add_argument("--insert-rows", type=int, default=50_000, help="rows inserted with executemany")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per transaction")
    parser.add_argument("--enroll-images", type=int, default=20_000, help="images through Store.add_faces")
    parser.add_argument("--enroll-batch", type=int, default=32, help="images per add_faces call")
    args = parser.parse_args()

    with server_directory() as directory:
        server = start_server(directory / "pgdata", cleanup_mode="delete")
        url = ensure_database(server, "bench")
        upgrade_url(url)
        with psycopg.connect(url, autocommit=True) as conn:
            prepare(conn, args.rows + args.insert_rows)
            copy_s, copy_cpu = timed_copy(conn, args.rows, 1, args.batch)
            many_s, many_cpu = timed_executemany(conn, args.insert_rows, args.rows + 1, args.batch)
            faces, logged = conn.execute("SELECT (SELECT count(*) FROM faces), (SELECT count(*) FROM change_log)").fetchone()
        enroll_s = timed_add_faces(url, args.enroll_images, args.enroll_batch)
        server.cleanup()
    assert faces == logged == args.rows + args.insert_rows, (faces, logged)

    copy_rate, many_rate = args.rows / copy_s, args.insert_rows / many_s
    print(f"machine: {platform.machine()}, {platform.python_version()}, PostgreSQL (pgserver) embedded")
    print(f"binary COPY     : {args.rows:>9,} rows in {copy_s:7.1f} s = {copy_rate:>9,.0f} rows/s"
          f"  (client CPU {1e6 * copy_cpu / args.rows:.1f} us/row)")
    print(f"executemany     : {args.insert_rows:>9,} rows in {many_s:7.1f} s = {many_rate:>9,.0f} rows/s"
          f"  (client CPU {1e6 * many_cpu / args.insert_rows:.1f} us/row)")
    print(f"executemany, {args.rows:,} rows extrapolated: {args.rows / many_rate:,.0f} s")
    print(f"ratio COPY / executemany (rows/s): {copy_rate / many_rate:.1f}x")
    print(f"change_log rows written by the trigger: {logged:,} (one per face)")
    print(f"Store.add_faces : {args.enroll_images:>9,} images in batches of {args.enroll_batch} "
          f"in {enroll_s:7.1f} s = {args.enroll_images / enroll_s:,.0f} images/s "
          f"({1e3 * enroll_s / args.enroll_images:.2f} ms per image, person + image + face rows)")


if __name__ == "__main__":
    main()
