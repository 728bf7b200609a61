"""The face pipeline with and without keeping freed memory in the process (`keep_freed_mb`).

    nice python -m benchmarks.bench_allocator [--images 320] [--rounds 4]

glibc's malloc settings are per process, so each side runs in its own process: the two
alternate round by round (same images, same machine load). Each process loads the default
pipeline (no flip), warms it on 64 images, then times `FacePipeline.process` over the next
`--images` lfw-dev images and reports images/s, user and system CPU-ms per image and minor
page faults per image (getrusage).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from identity.config import Settings
from identity.faces.pipeline import FacePipeline
keep, count, data, models_dir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
pipeline = FacePipeline.from_settings(Settings(models_dir=models_dir, device="cpu", flip=False, keep_freed_mb=keep))
photos = sorted(data.glob("*/*.jpg"))[: 64 + count]
list(pipeline.process(photos[:64]))
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
n = sum(1 for _ in pipeline.process(photos[64:]))
after, seconds = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
print(json.dumps({"images_per_s": n / seconds, "user_ms": 1000 * (after.ru_utime - before.ru_utime) / n,
                  "sys_ms": 1000 * (after.ru_stime - before.ru_stime) / n,
                  "faults": (after.ru_minflt - before.ru_minflt) / n}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "lfw-dev")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--keep-mb", type=int, default=256, help="the setting's value on the kept side")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {"glibc defaults (0)": [], f"kept ({args.keep_mb} MB)": []}
    for _ in range(args.rounds):
        for (name, side), keep in zip(runs.items(), (0, args.keep_mb)):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(keep), str(args.images), str(args.data),
                                  str(args.models_dir)], capture_output=True, text=True, check=True)
            side.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{name:>20}: {side[-1]}", flush=True)
    summary = {name: {key: statistics.median(r[key] for r in side) for key in side[0]} for name, side in runs.items()}
    for name, figures in summary.items():
        print(f"{name:>20} (median): {figures['images_per_s']:.1f} images/s, user {figures['user_ms']:.1f} "
              f"+ sys {figures['sys_ms']:.1f} CPU-ms/image, {figures['faults']:.0f} faults/image")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rounds": runs, "median": summary, "images": args.images}, indent=2))


if __name__ == "__main__":
    main()
