"""What face chips cost: bytes per chip on lfw-dev at several sizes and JPEG qualities,
the time to cut and encode one, and what PostgreSQL stores per chip (row, TOAST, index).

    python benchmarks/bench_chips.py [--limit N] [--store] [--realign N]

Every lfw-dev image is decoded and detected as enrollment does it (working resolution,
MTCNN, faces ≥ 0.95); each face's chip is cut with `identity.faces.chips.make_chip`.
With --store, the default configuration's chips are written to a throwaway embedded
PostgreSQL through `Store.add_faces` (as enrollment writes them) and the table's total
size (`pg_total_relation_size('face_chips')`, TOAST and primary key included) is divided
by the number of chips. With --realign N, N images spread over lfw-dev go through the full pipeline
(default model) keeping chips, each face is re-aligned from its chip alone (chip pixels and
chip landmarks, the model's own alignment) and embedded again, and the cosine similarity to
the embedding enrollment stored is reported: is a chip enough to re-embed a face?
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from identity.config import Settings
from identity.faces.chips import make_chip
from identity.faces.decode import decode_image
from identity.faces.detect import Detector

SHARED = Path(__file__).resolve().parents[2] / "shared"
CONFIGS = [(160, 85), (192, 85), (224, 75), (224, 85), (224, 90), (256, 85)]
DEFAULT = (224, 85)


def detect_all(paths: list[Path], settings: Settings) -> list[tuple]:
    detector = Detector.from_settings(settings.pipeline)
    found = []
    for start in range(0, len(paths), 32):
        images = [decode_image(p.read_bytes(), source=str(p), max_pixels=settings.pipeline.max_image_pixels,
                               max_side=settings.pipeline.detect_max_side) for p in paths[start:start + 32]]
        for image, faces in zip(images, detector.detect([i.pixels for i in images])):
            found += [(image, face) for face in faces]
    return found


def measure(found: list[tuple], size: int, quality: int) -> dict:
    sizes, start = [], time.perf_counter()
    for image, face in found:
        sizes.append(len(make_chip(image.pixels, face.box, face.landmarks, scale=image.scale,
                                   size=size, quality=quality).jpeg))
    seconds = time.perf_counter() - start
    sizes = np.asarray(sizes)
    return {"size": size, "quality": quality, "chips": len(sizes), "mean_bytes": round(float(sizes.mean())),
            "p50_bytes": int(np.percentile(sizes, 50)), "p95_bytes": int(np.percentile(sizes, 95)),
            "gb_per_million": round(float(sizes.mean()) * 1e6 / 1e9, 2),
            "ms_per_chip": round(1000 * seconds / len(sizes), 3)}


def stored_bytes(found: list[tuple], settings: Settings) -> dict:
    from identity.faces.types import Face, ImageResult
    from identity.store import FacesToAdd, ModelInfo, Store
    from identity.store.testing import PgTestServer, server_directory

    model = ModelInfo("bench", "1", 128)
    rng = np.random.default_rng(0)
    items = []
    for n, (image, face) in enumerate(found):
        chip = make_chip(image.pixels, face.box, face.landmarks, scale=image.scale,
                         size=DEFAULT[0], quality=DEFAULT[1])
        vector = rng.normal(size=128).astype(np.float32)
        stored = Face(box=face.box, landmarks=face.landmarks, probability=face.probability,
                      embedding=vector / np.linalg.norm(vector), chip=chip)
        items.append(FacesToAdd(ImageResult(source=image.source, sha256=hashlib.sha256(str(n).encode()).hexdigest(),
                                            width=image.width, height=image.height, faces=(stored,))))
    with server_directory() as directory:
        server = PgTestServer.start(directory)
        try:
            url = server.new_database("chips")
            with Store.open(settings.replace(database_url=url)) as store:
                for start in range(0, len(items), 256):
                    store.add_faces(items[start:start + 256], model=model)
                with store.connection() as conn:
                    conn.execute("VACUUM ANALYZE face_chips")
                    total, payload, chips = conn.execute(
                        "SELECT pg_total_relation_size('face_chips'), sum(octet_length(jpeg)), count(*) "
                        "FROM face_chips").fetchone()
        finally:
            server.stop()
    return {"chips": chips, "table_bytes_per_chip": round(total / chips), "jpeg_bytes_per_chip": round(payload / chips),
            "table_gb_per_million": round(total / chips * 1e6 / 1e9, 2)}


def realign(paths: list[Path], settings: Settings) -> dict:
    import io

    from PIL import Image

    from identity.faces.align import align
    from identity.faces.pipeline import FacePipeline
    from identity.faces.types import DetectedFace

    pipeline = FacePipeline.from_settings(settings)
    sims = []
    for result in pipeline.process(paths, keep_chips=True):
        for face in result.faces:
            chip = face.chip
            pixels = np.array(Image.open(io.BytesIO(chip.jpeg)).convert("RGB"))
            k = chip.size / chip.region[2]
            x, y = chip.region[:2]
            box = tuple((v - o) * k for v, o in zip(face.box, (x, y, x, y)))
            crop = align(pixels, DetectedFace(box, chip.landmarks, 1.0), method=pipeline.alignment,
                         image_size=pipeline.spec.input_size, margin=settings.pipeline.margin, template=pipeline.spec.template)
            sims.append(float(np.dot(pipeline.embedder.embed(crop[None])[0], face.embedding)))
    sims = np.asarray(sims)
    return {"model": pipeline.model_name, "faces": len(sims), "mean_cosine": round(float(sims.mean()), 4),
            "min_cosine": round(float(sims.min()), 4), "p05_cosine": round(float(np.percentile(sims, 5)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--store", action="store_true")
    parser.add_argument("--realign", type=int, default=0)
    args = parser.parse_args()
    settings = Settings(device="cpu", models_dir=SHARED / "models")
    every = sorted((SHARED / "data" / "lfw-dev").glob("*/*.jpg"))
    paths = every[: args.limit]
    if paths:  # --limit 0: only --realign
        start = time.perf_counter()
        found = detect_all(paths, settings)
        print(json.dumps({"images": len(paths), "faces": len(found),
                          "detect_seconds": round(time.perf_counter() - start, 1)}), flush=True)
        for size, quality in CONFIGS:
            print(json.dumps(measure(found, size, quality)), flush=True)
        if args.store:
            print(json.dumps({"store": stored_bytes(found, settings)}), flush=True)
    if args.realign:  # a sample spread over lfw-dev: every (len // N)-th image
        sample = every[:: max(1, len(every) // args.realign)][: args.realign]
        print(json.dumps({"realign": realign(sample, settings)}), flush=True)


if __name__ == "__main__":
    main()
