"""The store side of a large index: build the mirror from PostgreSQL, snapshot it, restart.

    nice python -m benchmarks.bench_mirror --state /tmp/sv/s1m --out benchmarks/out/mirror_1m.json

On a state directory that `benchmarks.bench_serving` filled (its embedded PostgreSQL with N
synthetic faces; `--faces N` fills a new one the same way), in one process:

1. the binary COPY alone: every face's row streamed out of PostgreSQL (`snapshot_embeddings`),
   rows per second;
2. a cold build: `IndexMirror.open()` with no snapshot, i.e. the store's count, the index
   chosen for it, the COPY streamed straight into it (`build_index(..., expected=...)`) and
   the first snapshot written; seconds and the process's peak anonymous memory;
3. a restart: a second mirror on the same snapshot directory, `open()` maps the snapshot
   and replays the change log above its watermark; seconds, and the first search's answer
   against the built mirror's.

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


def main() -> None:
    from benchmarks.bench_serving import prepare
    from identity.config import Settings
    from identity.index import IndexMirror
    from identity.service import Service
    from identity.store import Store

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state", type=Path, required=True, help="a bench_serving state directory")
    ap.add_argument("--faces", type=int, default=1_000_000, help="faces to fill a new state with")
    ap.add_argument("--index", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/mirror.json"))
    args = ap.parse_args()
    url, _, _ = prepare(args.state, argparse.Namespace(faces=args.faces, index=args.index))
    result: dict = {"machine": {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                                "load_average_at_start": os.getloadavg()}, "state": str(args.state)}
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
