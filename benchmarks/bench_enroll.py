"""End-to-end `identity enroll` throughput, and what the store costs of it.

    python benchmarks/bench_enroll.py [--limit N] [--out FILE]

In one run, on a fresh embedded PostgreSQL under a temporary data directory:
1. the pipeline alone over the images (`FacePipeline.process`, one face per image);
2. `Service.enroll` over the same images (folder per person, the CLI's code path), with
   the time spent inside the store's calls (`known_images`, `add_faces`) measured
   directly, so the store's share does not depend on how the machine's load moved
   between steps 1 and 2;
3. the same enrollment again: the idempotent re-run (nothing to do).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from identity.config import Settings
from identity.enroll import items_from_directory
from identity.service import Service

SHARED = Path(__file__).resolve().parents[2] / "shared"


def timed(obj, name: str, bucket: dict) -> None:
    """Wrap `obj.name` so every call adds its duration to bucket[name]."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            bucket[name] = bucket.get(name, 0.0) + time.perf_counter() - start

    setattr(obj, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "lfw-dev")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    items = list(items_from_directory(args.data))[: args.limit]
    with tempfile.TemporaryDirectory(prefix="bench-enroll-") as data_dir:
        os.chmod(data_dir, 0o755)  # the embedded server may run as the `pgserver` user
        settings = Settings(models_dir=args.models_dir, data_dir=Path(data_dir))
        with Service(settings) as service:
            pipeline = service.pipeline
            list(pipeline.process([items[0].source]))  # warm-up

            start = time.perf_counter()
            faces = sum(len(r.faces) for r in pipeline.process([i.source for i in items]))
            pipeline_s = time.perf_counter() - start

            store_time: dict[str, float] = {}
            service.store  # start the embedded server outside the timed region
            for name in ("known_images", "add_faces"):
                timed(service.store, name, store_time)
            summary = service.enroll(items, report=Path(data_dir) / "report.csv")
            rerun = service.enroll(items, report=Path(data_dir) / "rerun.csv")

    store_s = sum(store_time.values())
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, device {pipeline.device}",
        "images": len(items),
        "faces_detected": faces,
        "pipeline_alone_images_per_s": len(items) / pipeline_s,
        "enroll_images_per_s": len(items) / summary.seconds,
        "enroll_over_pipeline_time": summary.seconds / pipeline_s,
        "store_seconds": store_s,
        "store_share_of_enroll": store_s / summary.seconds,
        "store_calls_seconds": store_time,
        "outcomes": summary.to_dict(),
        "rerun_seconds": rerun.seconds,
        "rerun_outcomes": rerun.to_dict(),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
