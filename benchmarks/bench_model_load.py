"""Model start-up time: first start (hash + Keras/ONNX->PyTorch conversion + cache write)
against later starts (stat + cached state dict), each in a fresh Python process as a real
start is.

    nice python benchmarks/bench_model_load.py [--repeats 3] [--model w600k-mbf-512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT.parent / "shared" / "models"

# Timed inside the child so interpreter and torch import time are reported separately.
CHILD = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from identity.config import Settings
from identity.faces import models
t1 = time.perf_counter()
settings = Settings(models_dir=Path(sys.argv[1]), cache_dir=Path(sys.argv[2]))
models.load_network(models.get_model(sys.argv[3]), settings)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def start(cache: Path, model: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(MODELS), str(cache), model],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="facenet-keras-128")
    args = parser.parse_args()
    first, later = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            first.append(start(Path(cache), args.model))
            later.append(start(Path(cache), args.model))
    f = statistics.median(r["load_s"] for r in first)
    s = statistics.median(r["load_s"] for r in later)
    imp = statistics.median(r["import_s"] for r in first + later)
    print(f"import identity + torch: {imp:.2f} s (median of {2 * args.repeats})")
    print(
        f"first start load_network (hash + convert + cache): {f:.2f} s (median of {args.repeats})"
    )
    print(
        f"later start load_network (cached):                 {s:.2f} s (median of {args.repeats})"
    )
    print(f"ratio first/later: {f / s:.1f}x")


if __name__ == "__main__":
    main()
