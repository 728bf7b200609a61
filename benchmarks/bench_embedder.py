"""The embedding network alone, in each form the embedder can run it, on the same real crops.

    nice python -m benchmarks.bench_embedder [--model facenet-keras-128] [--crops 64] [--rounds 5]

Real aligned crops (lfw-dev, through the pipeline's detection and alignment) go through, in
one thread and alternating round by round so every form sees the same machine load:

* `module`: the model's torch module as loaded (facenet-pytorch's InceptionResnetV1 for
  facenet-keras-128), channels-last, float32: what the embedder ran before the fused form;
* `fused`: what the embedder runs on a CPU in float32 (`embed.for_inference`: for
  Inception-ResNet-v1, batch norms folded, ReLUs fused, branch heads merged);
* `autocast`: the module under bfloat16 autocast (what bf16 ran before the fused bf16 form,
  and still runs for any network without a CPU form);
* `bf16`: what the embedder runs in bfloat16 (`for_inference(..., torch.bfloat16)`: for
  Inception-ResNet-v1 the fused form with its residual blocks in bf16 and its stem in
  float32; other networks, the module under autocast, as above).

Reported per form: crops/s and CPU-ms per crop (median round), GFLOP/s (the network's
multiply-adds counted by torch's FlopCounterMode, ×2), and the difference of its unit vectors
from the module's (1 − cosine: the largest and the mean over the crops).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from identity.config import Settings
from identity.faces import models
from identity.faces.embed import for_inference, standardize
from identity.faces.pipeline import FacePipeline

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="facenet-keras-128")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "lfw-dev")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument("--crops", type=int, default=64, help="crops per network call (the embedder's batch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    settings = Settings(model=args.model, models_dir=args.models_dir, device="cpu", flip=False)
    pipeline = FacePipeline.from_settings(settings)
    photos = sorted(args.data.glob("*/*.jpg"))[: 2 * args.crops]
    crops = np.stack([f.crop for r in pipeline.process(photos, select="central", keep_crops=True) for f in r.faces])
    crops = crops[: args.crops]
    spec = pipeline.spec
    batch = standardize(torch.from_numpy(crops).permute(0, 3, 1, 2).float(), spec.normalization)
    batch = batch.contiguous(memory_format=torch.channels_last)

    module = models.load_network(spec, settings).to(memory_format=torch.channels_last).eval()
    fused = for_inference(module, torch.device("cpu"), torch.float32)
    bf16 = for_inference(module, torch.device("cpu"), torch.bfloat16)
    forms = {"module": (module, False), "fused": (fused, False), "autocast": (module, True),
             "bf16": (bf16, bf16 is module)}
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(batch[:1])
    flops_per_crop = counter.get_total_flops()

    torch.set_num_threads(1)
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(module(batch).float(), dim=1)
    seconds: dict[str, list[float]] = {name: [] for name in forms}
    cpu: dict[str, list[float]] = {name: [] for name in forms}
    deviation, mean_deviation = {}, {}
    for _ in range(args.rounds):
        for name, (network, autocast) in forms.items():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                start, started = time.perf_counter(), time.process_time()
                out = network(batch)
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - started)
            vectors = torch.nn.functional.normalize(out.float(), dim=1)
            error = 1 - (vectors * reference).sum(dim=1)
            deviation[name], mean_deviation[name] = float(error.max()), float(error.mean())

    figures = {
        "model": args.model, "crops": len(batch), "rounds": args.rounds, "threads": 1,
        "fused_form": type(fused).__name__, "gflop_per_crop": flops_per_crop / 1e9,
        "load_average": os.getloadavg(),
    }
    module_s = statistics.median(seconds["module"])
    for name in forms:
        s, c = statistics.median(seconds[name]), statistics.median(cpu[name])
        figures[name] = {
            "crops_per_s": len(batch) / s, "cpu_ms_per_crop": 1000 * c / len(batch),
            "gflop_per_s": flops_per_crop * len(batch) / c / 1e9, "speedup_over_module": module_s / s,
            "max_one_minus_cosine": deviation[name], "mean_one_minus_cosine": mean_deviation[name],
        }
        print(f"{name:>8}: {len(batch) / s:6.1f} crops/s, {1000 * c / len(batch):5.1f} CPU-ms/crop, "
              f"{figures[name]['gflop_per_s']:5.1f} GFLOP/s, {module_s / s:.2f}× module, "
              f"1-cos ≤ {deviation[name]:.1e} (mean {mean_deviation[name]:.1e})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
