"""Where bfloat16's error comes from in Inception-ResNet-v1, and what it does to lfw-dev.

    nice python -m benchmarks.bench_precision --out benchmarks/out/precision.json

The central face of every lfw-dev pair image is detected and aligned once (float32, the
default model's pipeline); its crop and its mirror image then go through each form of the
network below, and each form's vectors (plain + mirrored, normalised, as the embedder
computes them with flip) are compared with float32's (1 − cosine: largest and mean) and
scored on the pairs (10-fold accuracy, VAL at FAR 1e-3), as `identity evaluate lfw` does.

* `fp32`: facenet-pytorch's module in float32 (the reference);
* `autocast`: the module under bf16 autocast (what bf16 ran before its fused form);
* `autocast, <part> fp32`: the same with one part of the network kept in float32, to find
  which layers' rounding the vectors feel (the stem: the six convolutions before the first
  residual block; the head: the last blocks and the bottleneck; the first convolution);
* `fused bf16`: what the embedder runs in bf16 on a CPU (`embed.for_inference`: the fused
  form with its residual blocks in bf16 and its stem in float32).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from identity.config import Settings
from identity.evaluate.metrics import cosine_scores, verification_metrics
from identity.evaluate.runner import load_pairs
from identity.faces import models
from identity.faces.embed import for_inference, standardize
from identity.faces.pipeline import FacePipeline

SHARED = Path(__file__).resolve().parents[2] / "shared"
STEM = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "conv2d_3b", "conv2d_4a", "conv2d_4b")
FLOAT32_PARTS = {
    "autocast": (),
    "autocast, stem fp32": STEM,
    "autocast, head fp32": ("repeat_3", "block8", "last_linear"),
    "autocast, first conv fp32": ("conv2d_1a",),
}


class Float32(nn.Module):
    """A part of the network computed in float32 inside an autocast region."""

    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        self.part = part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return self.part(x.float())


def embed(network: nn.Module, batches: list[torch.Tensor], autocast: bool) -> tuple[np.ndarray, float]:
    """Flip embeddings (raw plain + mirrored outputs, normalised) and the CPU seconds taken."""
    out = []
    started = time.process_time()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for batch in batches:
            both = network(torch.cat([batch, batch.flip(3)])).float()
            out.append(nn.functional.normalize(both[: len(batch)] + both[len(batch):], dim=1))
    return torch.cat(out).numpy(), time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "lfw-dev")
    parser.add_argument("--pairs", type=Path, default=SHARED / "data" / "lfw-dev" / "pairsDevTrain.txt")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    settings = Settings(models_dir=args.models_dir, device="cpu", precision="fp32")
    pipeline = FacePipeline.from_settings(settings)
    spec = pipeline.spec
    pairs = load_pairs(args.data, args.pairs)
    paths = pairs.unique_paths()
    crops = []
    for path, result in zip(paths, pipeline.process([str(p) for p in paths], select="central", keep_crops=True)):
        if not result.faces:
            raise SystemExit(f"{path}: no face found; this benchmark needs a face in every pair image")
        crops.append(result.faces[0].crop)
    pixels = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
    batches = [standardize(pixels[i : i + 32], spec.normalization).contiguous(memory_format=torch.channels_last)
               for i in range(0, len(pixels), 32)]
    row = {p: i for i, p in enumerate(paths)}
    first = np.array([row[p.path1] for p in pairs.pairs])
    second = np.array([row[p.path2] for p in pairs.pairs])

    def load() -> nn.Module:
        return models.load_network(spec, settings).to(memory_format=torch.channels_last).eval()

    forms: dict[str, tuple[nn.Module, bool]] = {"fp32": (load(), False)}
    for name, parts in FLOAT32_PARTS.items():
        network = load()
        for part in parts:
            setattr(network, part, Float32(getattr(network, part)))
        forms[name] = (network, True)
    fused = for_inference(load(), torch.device("cpu"), torch.bfloat16)
    forms["fused bf16"] = (fused, False)

    figures = {"model": spec.name, "images": len(paths), "pairs": len(pairs.pairs), "threads": torch.get_num_threads(),
               "fused_bf16_form": type(fused).__name__, "load_average": os.getloadavg(), "forms": {}}
    reference = None
    for name, (network, autocast) in forms.items():
        vectors, seconds = embed(network, batches, autocast)
        if reference is None:
            reference = vectors
        error = 1 - np.einsum("ij,ij->i", vectors, reference)
        metrics, _ = verification_metrics(cosine_scores(vectors[first], vectors[second]), pairs.labels, pairs.folds)
        figures["forms"][name] = {
            "cpu_s": seconds, "max_one_minus_cosine": float(error.max()), "mean_one_minus_cosine": float(error.mean()),
            "accuracy": metrics.accuracy_mean, "accuracy_std": metrics.accuracy_std, "val": metrics.val_mean,
        }
        print(f"{name:>26}: {seconds:6.1f} CPU-s, 1-cos ≤ {error.max():.1e} (mean {error.mean():.1e}), "
              f"accuracy {metrics.accuracy_mean:.4f} ± {metrics.accuracy_std:.4f}, VAL {metrics.val_mean:.4f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
