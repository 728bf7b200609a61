"""Migration speed: `identity models migrate` (identity.moves.migrate) on N stored faces.

    python -m benchmarks.bench_migrate [--faces 10000] [--photos 200] [--target w600k-mbf-512]
                                       [--batch 64] [--device cpu] [--out benchmarks/out/migrate.json]

A throwaway embedded PostgreSQL gets N faces of facenet-keras-128, each with a real
face chip: `--photos` lfw-dev photos are detected as enrollment detects them (MTCNN,
working resolution) and their chips cut with `make_chip`; the N faces cycle through those
chips (one image row per face, random source vectors: the move never reads them). Then
the move runs exactly as the command runs it: pages of `--batch` faces read with their
chips, JPEG decoded and re-aligned to the target's template on a thread while the
previous page is embedded, each page written in one transaction; then the target's
FAISS index is built and snapshotted, and the move switched. Reported: faces/s of the
re-embedding, the index build and the switch, the whole command's wall time, and its CPU
time (this process, all threads: on a shared machine faces per CPU-second is the figure
that does not depend on what else runs; on an idle 2-core machine wall faces/s is about
twice it, less what the PostgreSQL server costs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_chips import SHARED, detect_all
from identity import moves
from identity.config import Settings
from identity.faces.chips import make_chip
from identity.faces.types import Face, ImageResult
from identity.store import FacesToAdd, ModelInfo, Store
from identity.store.testing import PgTestServer, server_directory

SOURCE = ModelInfo("facenet-keras-128", "20170512-110547", 128)


def real_chips(count: int, settings: Settings) -> list[tuple]:
    """(box, landmarks, chip) of the faces of the first `count` lfw-dev photos, in photo pixels."""
    paths = sorted((SHARED / "data" / "lfw-dev").glob("*/*.jpg"))[:count]
    out = []
    for image, face in detect_all(paths, settings):
        chip = make_chip(image.pixels, face.box, face.landmarks, scale=image.scale)
        inverse = 1.0 / image.scale
        out.append((tuple(float(v) * inverse for v in face.box),
                    (np.asarray(face.landmarks) * inverse).astype(np.float32), face.probability, chip))
    return out


def fill(store: Store, faces: int, chips: list[tuple]) -> float:
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, faces, 1000):
        items = []
        for n in range(start, min(faces, start + 1000)):
            box, landmarks, prob, chip = chips[n % len(chips)]
            vector = rng.normal(size=SOURCE.dim).astype(np.float32)
            face = Face(box=box, landmarks=landmarks, probability=prob, embedding=vector / np.linalg.norm(vector),
                        quality=0.9, chip=chip)
            items.append(FacesToAdd(ImageResult(source=f"/gone/{n}.jpg", sha256=hashlib.sha256(str(n).encode()).hexdigest(),
                                                width=250, height=250, faces=(face,))))
        store.add_faces(items, model=SOURCE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--target", default="w600k-mbf-512")
    parser.add_argument("--batch", type=int, default=moves.PAGE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as data, server_directory() as directory:
        server = PgTestServer.start(directory)
        try:
            url = server.new_database("migrate")
            settings = Settings(device=args.device, models_dir=SHARED / "models", data_dir=Path(data),
                                database_url=url)
            chips = real_chips(args.photos, settings)
            with Store.open(settings) as store:
                fill_s = fill(store, args.faces, chips)
                progress = []
                started, cpu_started = time.perf_counter(), time.process_time()
                report = moves.migrate(store, settings, args.target, page=args.batch,
                                       on_progress=lambda done, total: progress.append((time.perf_counter(), done)))
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
        finally:
            server.stop()
    result = {
        "faces": args.faces, "distinct_chips": len(chips), "target": args.target, "batch": args.batch,
        "device": args.device, "torch_threads": torch.get_num_threads(),
        "embedded": report.embedded, "reembed_seconds": round(report.seconds, 2),
        "faces_per_second": round(report.faces_per_second, 1),
        "index_seconds": round(report.index_seconds, 2), "switched": report.switched,
        "command_seconds": round(wall, 2), "faces_per_second_whole_command": round(args.faces / wall, 1),
        "cpu_seconds": round(cpu, 1), "faces_per_cpu_second": round(args.faces / cpu, 1),
        "fill_seconds": round(fill_s, 1),
        "load_average": [round(load_start, 1), round(os.getloadavg()[0], 1)],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                   + (torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"),
    }
    print(json.dumps(result), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
