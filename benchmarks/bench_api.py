"""API and workers benchmark.

1. Search under concurrent clients: 100,000 synthetic face-like embeddings
   (benchmarks/synthetic.py, 20,000 identities x 5) written straight into the store, a
   real `uvicorn` server process (the docker image's command), C client threads with one
   HTTP connection each. Two request kinds: `POST /v1/search` with a real LFW photo
   (decode + MTCNN + embedding + index) and `POST /v1/search/embedding` (index only).
2. Bulk enrollment throughput, same photos, same run: in-process `Service.enroll_batch`
   versus one Celery worker (solo pool) through `identity.runners.celery.CeleryRunner`,
   each into a fresh database; model loading excluded from both.

    nice python -m benchmarks.bench_api --out benchmarks/out/api.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = SHARED / "models"
LFW = SHARED / "data" / "lfw-dev"
CACHE = ROOT / "benchmarks" / "out" / "weights-cache"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000.0


def fill_store(settings, n_identities: int, per_identity: int) -> np.ndarray:
    """Synthetic faces of the real model's name/dim, written by Store.add_faces (the
    enrollment path); returns the identity labels' generator queries."""
    from benchmarks.synthetic import FaceLikeGenerator, load_target
    from identity.faces import models
    from identity.faces.types import Face, ImageResult
    from identity.store import FacesToAdd, ModelInfo, Store

    spec = models.get_model(settings.pipeline.model)
    model = ModelInfo(spec.name, spec.version, spec.dim)
    gen = FaceLikeGenerator.calibrated(dim=spec.dim, target=load_target(), seed=0)
    vectors, labels = gen.faces(n_identities, per_identity)
    box, marks = (10.0, 10.0, 110.0, 130.0), np.zeros((5, 2), np.float32)
    with Store.open(settings) as store:
        for start in range(0, len(vectors), 10_000):
            items = [
                FacesToAdd(ImageResult(source=f"synthetic/{i}.jpg",
                                       sha256=hashlib.sha256(b"api-bench-%d" % i).hexdigest(),
                                       width=250, height=250,
                                       faces=(Face(box, marks, 0.99, embedding=vectors[i], quality=0.9),)),
                           external_id=f"synthetic-{labels[i]}")
                for i in range(start, min(start + 10_000, len(vectors)))
            ]
            store.add_faces(items, model=model)
    queries = gen.new_faces(np.random.default_rng(1).integers(0, n_identities, 256))
    return queries


def env_for(settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_")}
    env.update({
        "IDENTITY_DATABASE_URL": settings.store.database_url, "IDENTITY_DATA_DIR": str(settings.data_dir),
        "IDENTITY_MODELS_DIR": str(MODELS), "IDENTITY_CACHE_DIR": str(CACHE), "IDENTITY_DEVICE": "cpu",
        "PYTHONPATH": str(ROOT), **extra,
    })
    return env


def load(url: str, key: str, make_request, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(n: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as http:
            i = n
            while time.perf_counter() < stop:
                t = time.perf_counter()
                response = make_request(http, i)
                elapsed = time.perf_counter() - t
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors += 1
                i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "errors": errors,
            "rps": round(len(latencies) / wall, 1), "p50_ms": round(percentile(latencies, 50), 1),
            "p99_ms": round(percentile(latencies, 99), 1)}


def bench_search(server, directory: Path, args) -> dict:
    from identity.config import Settings
    from identity.store import Store
    from identity.store.keys import create_key

    settings = Settings(database_url=server.new_database("search"), data_dir=directory / "search-data",
                        models_dir=MODELS, cache_dir=CACHE, device="cpu")
    t = time.perf_counter()
    queries = fill_store(settings, args.identities, 5)
    fill_s = time.perf_counter() - t
    with Store.open(settings) as store:
        key = create_key(store, "bench", ["read"])[1]
    port = free_port()
    log = (directory / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "identity.api.app:app_from_env",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env_for(settings), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                ready = httpx.get(url + "/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.5)
        faces = ready.json()["checks"]["index"]["faces"]
        photos = sorted(LFW.glob("*/*_0001.jpg"))[:64]
        blobs = [(p.name, p.read_bytes()) for p in photos]
        vectors = queries.tolist()

        def by_image(http, i):
            name, data = blobs[i % len(blobs)]
            return http.post("/v1/search", files={"image": (name, data, "image/jpeg")})

        def by_embedding(http, i):
            return http.post("/v1/search/embedding", json={"vectors": [vectors[i % len(vectors)]], "k": 5})

        rows = []
        for kind, fn, seconds in (("embedding", by_embedding, args.seconds), ("image", by_image, args.seconds * 2)):
            fn(httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120), 0)  # warm-up
            for clients in args.clients:
                rows.append({"kind": kind, **load(url, key, fn, clients, seconds)})
                print(json.dumps(rows[-1]), flush=True)
        return {"faces_in_index": faces, "fill_seconds": round(fill_s, 1), "rows": rows}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def bench_enroll(server, directory: Path, redis_url: str, args) -> dict:
    from identity.config import Settings
    from identity.enroll import EnrollItem, batched
    from identity.service import Service
    from identity.runners.celery import PING, CeleryRunner

    people = sorted(p for p in LFW.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 2)
    items = [EnrollItem(str(f), p.name) for p in people for f in sorted(p.glob("*.jpg"))][: args.enroll_images]
    base = dict(models_dir=MODELS, cache_dir=CACHE, device="cpu")

    # In-process: what `identity enroll` and `identity serve` do without a broker.
    local = Settings(database_url=server.new_database("local"), data_dir=directory / "local", **base)
    with Service(local) as service:
        service.pipeline  # noqa: B018 - load outside the timing
        service.store  # noqa: B018
        t = time.perf_counter()
        counts: dict[str, int] = {}
        for batch in batched(items, args.batch):
            for o in service.enroll_batch(batch):
                counts[o.status] = counts.get(o.status, 0) + 1
        local_s = time.perf_counter() - t

    # One worker (solo pool, as the GPU worker runs), started and warmed before timing.
    remote = Settings(database_url=server.new_database("remote"), data_dir=directory / "remote",
                      broker_url=redis_url, **base)
    log = (directory / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool=solo", "--concurrency=1",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "-n", "bench@%h"],
        env=env_for(remote, IDENTITY_BROKER_URL=redis_url), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        runner = CeleryRunner.from_settings(remote)
        runner.app.send_task(PING).get(timeout=600)
        t = time.perf_counter()
        outcomes = []
        runner.enroll(batched(items, args.batch), largest_face=False, on_done=outcomes.extend)
        remote_s = time.perf_counter() - t
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    remote_counts: dict[str, int] = {}
    for o in outcomes:
        remote_counts[o.status] = remote_counts.get(o.status, 0) + 1
    assert remote_counts == counts, (remote_counts, counts)
    n = len(items)
    return {"images": n, "batch": args.batch, "outcomes": counts,
            "in_process_s": round(local_s, 1), "in_process_images_per_s": round(n / local_s, 2),
            "worker_s": round(remote_s, 1), "worker_images_per_s": round(n / remote_s, 2),
            "worker_over_in_process": round((n / remote_s) / (n / local_s), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=20_000, help="x5 faces each")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=15.0, help="per load level (image search: twice)")
    parser.add_argument("--enroll-images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "api.json")
    args = parser.parse_args()

    from identity.store.testing import PgTestServer, server_directory

    redis_bin = shutil.which("redis-server")
    assert redis_bin, "apt-get install -y redis-server"
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU", "args": vars(args) | {"out": str(args.out)}}
    with server_directory() as directory:
        server = PgTestServer.start(directory)
        redis_port = free_port()
        redis = subprocess.Popen([redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            result["search"] = bench_search(server, directory, args)
            result["enroll"] = bench_enroll(server, directory, f"redis://127.0.0.1:{redis_port}/0", args)
            print(json.dumps(result["enroll"]), flush=True)
        finally:
            redis.terminate()
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
