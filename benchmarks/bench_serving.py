"""The serving path: `POST /v1/search/embedding` through `identity serve` (uvicorn, every
request authenticated with an API key), at C clients, with N synthetic faces in an HNSW
index; and the resident memory (RSS, PSS, USS) of 1, 2 and 4 API worker processes, each
reading its own copy of the index snapshot, then mapping it (`index.mmap_snapshot`).

Faces come from benchmarks/synthetic.py (face-like, calibrated to the model's LFW
statistics, 5 per identity), written by `Store.add_faces` (COPY). The index snapshot is
built once, in this process, before any server starts, so every server (and every worker
of a server) loads it instead of building its own.

Before/after in the same run: `--before REV` serves the same database from the `identity`
package and migrations of git revision REV (extracted to a temporary directory), and the
runs alternate (before 1 worker, after 1 worker, before 2 workers, ...). The load comes
from benchmarks/loadgen.py in its own process (asyncio, raw HTTP/1.1 keep-alive), whose
CPU is reported beside the server's and PostgreSQL's.

    nice python -m benchmarks.bench_serving --faces 1000000 --before <rev> \
        --out benchmarks/out/serving.json

`--state DIR` keeps the database and snapshot in DIR between runs (filled once).

`--enroll N`: the memory rows then measure a server under a stream of writes. Each
server (mapped snapshot) serves, then N new faces are enrolled through `Store.add_faces`,
and memory is measured once every worker has applied them (its /readyz face count).
They run on a copy of the state (`CREATE DATABASE … TEMPLATE`, the snapshot directory
hard-linked: snapshot files are never rewritten), so the state itself is left as it was;
with `--before REV` the rows alternate between that revision and this tree.

    nice python -m benchmarks.bench_serving --state /tmp/sv/s1m --workers \
        --memory-workers 1 2 4 --enroll 20000 --before HEAD --out benchmarks/out/serving_memory_writes.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from benchmarks.bench_api import CACHE, MODELS, ROOT, fill_store, free_port

KEY_FILE = "bench-key.txt"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def memory(pid: int) -> dict:
    """RSS, PSS and USS (MiB) of a server: each process, and the sum."""
    rows = []
    for p in tree(pid):
        try:
            m = p.memory_full_info()
            rows.append({"pid": p.pid, "rss_mb": round(m.rss / 2**20, 1), "pss_mb": round(m.pss / 2**20, 1),
                         "uss_mb": round(m.uss / 2**20, 1)})
        except psutil.NoSuchProcess:
            pass
    total = {k: round(sum(r[k] for r in rows), 1) for k in ("rss_mb", "pss_mb", "uss_mb")}
    return {"processes": rows, "total": total}


def extract(rev: str, into: Path) -> Path:
    """The `identity` package, migrations and model manifest of git revision `rev`, under `into`."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "identity", "migrations", "models/manifest.toml"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


class Server:
    def __init__(self, *, code: Path, env: dict[str, str], workers: int, log: Path) -> None:
        self.port = free_port()
        env = {**env, "PYTHONPATH": str(code), "IDENTITY_API_WORKERS": str(workers),
               "IDENTITY_API_PORT": str(self.port)}
        self.workers = workers
        self.proc = subprocess.Popen([sys.executable, "-m", "identity.cli", "serve", "--port", str(self.port)],
                                     cwd=code, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log

    def wait_ready(self, timeout: float = 1800) -> dict:
        """Every worker ready: /readyz answered 200 many times in a row (the kernel spreads
        connections over the workers)."""
        deadline = time.monotonic() + timeout
        streak, body = 0, {}
        while streak < 20 * self.workers:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "server did not become ready"
            try:
                with httpx.Client(timeout=10) as http:  # a new connection each time: any worker
                    r = http.get(self.url + "/readyz")
                streak = streak + 1 if r.status_code == 200 else 0
                body = r.json()
            except httpx.HTTPError:
                streak = 0
            if streak == 0:
                time.sleep(0.5)
        return body

    def wait_faces(self, count: int, timeout: float = 600) -> None:
        """Every worker's index holds `count` faces (its /readyz, many times in a row)."""
        deadline, streak = time.monotonic() + timeout, 0
        while streak < 20 * self.workers:
            assert time.monotonic() < deadline, f"workers did not reach {count} faces"
            with httpx.Client(timeout=10) as http:
                faces = http.get(self.url + "/readyz").json().get("checks", {}).get("index", {}).get("faces")
            streak = streak + 1 if faces == count else 0
            if streak == 0:
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def load(server: Server, key: str, bodies: Path, clients: int, seconds: float, pg_pid: int | None) -> dict:
    procs, pg = tree(server.proc.pid), tree(pg_pid) if pg_pid else []
    server_cpu0, pg_cpu0 = cpu_seconds(procs), cpu_seconds(pg)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", "--port", str(server.port), "--key", key,
         "--bodies", str(bodies), "--clients", str(clients), "--seconds", str(seconds)],
        cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    wall = result["seconds"]
    result["server_cpu_share"] = round((cpu_seconds(procs) - server_cpu0) / wall, 3)
    result["postgres_cpu_share"] = round((cpu_seconds(tree(pg_pid) if pg_pid else []) - pg_cpu0) / wall, 3)
    return result


def prepare(state: Path, args) -> tuple[str, str, Path]:
    """(database URL, API key, queries file): filled and indexed once per state directory."""
    from identity.config import Settings
    from identity.index import IndexMirror
    from identity.service import Service
    from identity.store import Store
    from identity.store.embedded import ensure_database, start_server
    from identity.store.keys import create_key
    from identity.store.migrate import upgrade_url

    server = start_server(state / "pgdata", cleanup_mode=None)
    url = ensure_database(server, "serving")
    upgrade_url(url)
    settings = Settings(database_url=url, data_dir=state / "data", models_dir=MODELS, cache_dir=CACHE,
                        device="cpu", index_type=args.index)
    done = state / "filled.json"
    if not done.exists():
        t = time.perf_counter()
        queries = fill_store(settings, args.faces // 5, 5)
        fill_s = time.perf_counter() - t
        (state / "queries.json").write_text(json.dumps(
            [{"vectors": [q], "k": 5} for q in queries.tolist()]))
        with Store.open(settings) as store:
            t = time.perf_counter()
            mirror = IndexMirror.from_settings(store, settings, Service(settings).model_info)
            mirror.open()  # builds and writes the snapshot every server will load
            build_s = time.perf_counter() - t
            status = mirror.status()
            (state / KEY_FILE).write_text(create_key(store, "bench", ["read"])[1])
        done.write_text(json.dumps({"faces": args.faces, "fill_s": round(fill_s, 1), "index_build_s": round(build_s, 1),
                                    "index": status.index_type, "count": status.count}))
    return url, (state / KEY_FILE).read_text().strip(), state / "queries.json"


def memory_copy(state: Path, url: str) -> tuple[str, Path]:
    """(database URL, data dir) of a fresh copy of the state for the --enroll rows."""
    import psycopg

    assert "/serving?" in url, url
    with psycopg.connect(url.replace("/serving?", "/postgres?"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS serving_mem")
        conn.execute("CREATE DATABASE serving_mem TEMPLATE serving")
    data = state / "data-mem"
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run(["cp", "-al", str(state / "data"), str(data)], check=True)
    return url.replace("/serving?", "/serving_mem?"), data


def enroll(url: str, data: Path, n: int, run: int) -> None:
    """N new synthetic faces (new identities, 5 a person) through Store.add_faces."""
    from benchmarks.synthetic import FaceLikeGenerator, load_target
    from identity.config import Settings
    from identity.faces import models
    from identity.faces.types import Face, ImageResult
    from identity.store import FacesToAdd, ModelInfo, Store

    settings = Settings(database_url=url, data_dir=data, models_dir=MODELS, cache_dir=CACHE, device="cpu")
    spec = models.get_model(settings.pipeline.model)
    model = ModelInfo(spec.name, spec.version, spec.dim)
    vectors, labels = FaceLikeGenerator.calibrated(dim=spec.dim, target=load_target(), seed=1000 + run).faces(n // 5, 5)
    box, marks = (10.0, 10.0, 110.0, 130.0), np.zeros((5, 2), np.float32)
    with Store.open(settings) as store:
        for start in range(0, len(vectors), 1000):  # batches as enrollments arrive, not one bulk load
            store.add_faces([
                FacesToAdd(ImageResult(source=f"enrolled/{run}/{i}.jpg",
                                       sha256=hashlib.sha256(b"memory-run-%d-%d" % (run, i)).hexdigest(),
                                       width=250, height=250,
                                       faces=(Face(box, marks, 0.99, embedding=vectors[i], quality=0.9),)),
                           external_id=f"enrolled-{run}-{labels[i]}")
                for i in range(start, min(start + 1000, len(vectors)))], model=model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--index", default="hnsw")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--memory-workers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--before", help="git revision to compare against, served from the same database")
    parser.add_argument("--rate-limit", default="1000000/minute",
                        help="the bench key's limit (the limiter stays in the path)")
    parser.add_argument("--state", type=Path, help="keep database and snapshot here between runs")
    parser.add_argument("--enroll", type=int, default=0,
                        help="memory rows: enroll this many faces into each running server before measuring")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "serving.json")
    args = parser.parse_args()

    state = args.state or Path(tempfile.mkdtemp(prefix="identity-serving-"))
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    url, key, bodies = prepare(state, args)
    pg_pid = _postmaster(state)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_")}
    env.update({"IDENTITY_DATABASE_URL": url, "IDENTITY_DATA_DIR": str(state / "data"),
                "IDENTITY_MODELS_DIR": str(MODELS), "IDENTITY_CACHE_DIR": str(CACHE), "IDENTITY_DEVICE": "cpu",
                "IDENTITY_INDEX_TYPE": args.index, "IDENTITY_RATE_LIMIT_READ": args.rate_limit,
                "OMP_NUM_THREADS": "1"})
    versions = {"after": ROOT}
    before_commit = None
    if args.before:
        before_commit = subprocess.run(["git", "rev-parse", args.before], cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout.strip()
        versions = {"before": extract(args.before, state / f"code-{args.before}"), **versions}
    result = {
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "load_average_at_start": os.getloadavg()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "before_commit": before_commit,
        "after": "the working tree",
        "store": json.loads((state / "filled.json").read_text()),
        "rows": [], "memory": [],
    }
    print(json.dumps(result["machine"]), json.dumps(result["store"]), flush=True)
    for workers in args.workers:
        for version, code in versions.items():
            server = Server(code=code, env=env, workers=workers, log=state / f"serve-{version}-{workers}.log")
            try:
                t = time.perf_counter()
                ready = server.wait_ready()
                start_s = time.perf_counter() - t
                load(server, key, bodies, args.clients, 3.0, pg_pid)  # warm-up
                row = {"version": version, "workers": workers, "start_s": round(start_s, 1),
                       "index": ready.get("checks", {}).get("index"),
                       **load(server, key, bodies, args.clients, args.seconds, pg_pid),
                       "memory": memory(server.proc.pid)["total"]}
            finally:
                server.stop()
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    if args.enroll:
        memory_under_writes(args, state, url, env, key, bodies, pg_pid, versions, result)
        args.memory_workers = []
    for workers in args.memory_workers:
        for mmap in (False, True):  # each worker reads its own copy / maps the snapshot
            server = Server(code=ROOT, env={**env, "IDENTITY_INDEX_MMAP_SNAPSHOT": str(mmap).lower()},
                            workers=workers, log=state / f"serve-memory-{workers}-{mmap}.log")
            try:
                server.wait_ready()
                load(server, key, bodies, args.clients, 3.0, pg_pid)  # every worker has served
                row = {"workers": workers, "mmap_snapshot": mmap, **memory(server.proc.pid)}
            finally:
                server.stop()
            result["memory"].append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def memory_under_writes(args, state, url, env, key, bodies, pg_pid, versions, result) -> None:
    mem_url, data = memory_copy(state, url)
    env = {**env, "IDENTITY_DATABASE_URL": mem_url, "IDENTITY_DATA_DIR": str(data),
           "IDENTITY_INDEX_MMAP_SNAPSHOT": "true"}
    run = 0
    for workers in args.memory_workers:
        for version, code in versions.items():
            server = Server(code=code, env=env, workers=workers, log=state / f"serve-writes-{version}-{workers}.log")
            try:
                ready = server.wait_ready()
                load(server, key, bodies, args.clients, 3.0, pg_pid)
                before = memory(server.proc.pid)
                count = ready["checks"]["index"]["faces"]
                t = time.perf_counter()
                enroll(mem_url, data, args.enroll, run)
                enroll_s = time.perf_counter() - t
                count += args.enroll
                run += 1
                server.wait_faces(count)
                load(server, key, bodies, args.clients, 3.0, pg_pid)  # every worker has served since
                row = {"version": version, "workers": workers, "enrolled": args.enroll, "faces": count,
                       "enroll_s": round(enroll_s, 1), "before_enrolling": before["total"], **memory(server.proc.pid)}
            finally:
                server.stop()
            result["memory"].append(row)
            print(json.dumps(row), flush=True)


def _postmaster(state: Path) -> int | None:
    pid_file = state / "pgdata" / "postmaster.pid"
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    main()
