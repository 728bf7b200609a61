"""End-to-end pipeline throughput against a naive per-image loop, in one run.

    python benchmarks/bench_pipeline.py [--limit N] [--naive-limit 400]

Both sides do the same work: decode, MTCNN detection, a margin-32 160-px crop of one face,
and the same Inception-ResNet-v1 weights (facenet-keras-128), without flip augmentation.
The naive loop is what a facenet-pytorch tutorial does: `MTCNN(...)(image)` then
`resnet(crop.unsqueeze(0))`, one image at a time, with torch's default threads (all
cores). The pipeline is `FacePipeline.process`: threaded decode, size-bucketed MTCNN
batches, batched embedding, and detection of the next batch running concurrently with the
embedding of the current one (each stage on half the cores). The naive loop is timed
on the first `--naive-limit` images, and so is the pipeline on the very same images, for
the ratio, alternating chunk by chunk so both see the same machine load (this machine is
shared and its load swings by minutes). The pipeline runs at --precision (default 'auto',
the product's default: the embedding network in bf16 on a CPU with hardware bf16) and, in
the same alternation, at fp32, so the run separates what the precision gives from what the
rest does. The pipeline then also runs over all images, without and with flip.

Besides wall-clock time, each side's CPU time (the process's, all threads) is recorded:
the naive loop's includes what its two threads burn waiting for each other (OpenMP spins),
which grows with the machine's load. With --single-threaded-naive the naive loop also
runs with one torch thread: no thread synchronisation at all, so its CPU time is its bare
compute, and its ratio to the pipeline's CPU time is the part of the gain that does not
depend on scheduling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from PIL import Image

from identity.config import Settings
from identity.faces import models
from identity.faces.pipeline import FacePipeline

SHARED = Path(__file__).resolve().parents[2] / "shared"


def naive_loop(
    paths: list[Path], network: torch.nn.Module, threads: int | None = None
) -> tuple[float, int, float]:
    from facenet_pytorch import MTCNN
    from facenet_pytorch.models.mtcnn import prewhiten

    mtcnn = MTCNN(image_size=160, margin=32, post_process=False, device=next(network.parameters()).device)
    faces = 0
    ours = torch.get_num_threads()
    # torch's own default (all cores) is what a tutorial loop gets.
    torch.set_num_threads(threads or os.cpu_count() or 1)
    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        image = Image.open(path).convert("RGB")
        crop = mtcnn(image)
        if crop is None:
            continue
        with torch.inference_mode():
            network(prewhiten(crop.float()).unsqueeze(0).to(next(network.parameters()).device))
        faces += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    torch.set_num_threads(ours)
    return elapsed, faces, cpu


def pipeline_run(
    pipeline: FacePipeline, paths: list[Path], select: str
) -> tuple[float, int, int, float]:
    start, cpu = time.perf_counter(), time.process_time()
    faces = images = 0
    for result in pipeline.process(paths, select=select):
        images += result.ok
        faces += len(result.faces)
    return time.perf_counter() - start, images, faces, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "lfw-dev")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument("--limit", type=int, default=None, help="images for the full pipeline run")
    parser.add_argument("--naive-limit", type=int, default=400)
    parser.add_argument("--chunk", type=int, default=128, help="images per alternation")
    parser.add_argument("--single-threaded-naive", action="store_true",
                        help="also the naive loop with one torch thread (its compute, no thread sync)")
    parser.add_argument("--precision", default="auto", choices=["fp32", "bf16", "auto"],
                        help="the embedding network's precision for the pipeline (fp32 also runs beside it)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    paths = sorted(args.data.glob("*/*.jpg"))[: args.limit]
    subset = paths[: args.naive_limit]
    base = dict(models_dir=args.models_dir, device="auto")
    plain = FacePipeline.from_settings(Settings(**base, flip=False, precision=args.precision))
    list(plain.process(subset[:8]))  # warm-up: first-call allocations, thread pools
    # The same pipeline in fp32 runs beside it, so a run at bf16
    # shows what the precision gives and what the rest does.
    fp32 = FacePipeline.from_settings(Settings(**base, flip=False, precision="fp32"))
    list(fp32.process(subset[:8]))
    # The naive loop runs facenet-pytorch's module, not the pipeline's CPU form of it (batch
    # norms folded, ReLUs fused); channels-last, as in every earlier run of this benchmark.
    network = models.load_network(plain.spec, Settings(**base), device=plain.device)
    network = network.to(memory_format=torch.channels_last)

    # The same images, the same work (one face per image, no flip), interleaved.
    load_start = os.getloadavg()
    naive_s = same_s = naive_cpu = same_cpu = single_s = single_cpu = fp32_s = fp32_cpu = 0.0
    naive_faces = same_faces = 0
    for start in range(0, len(subset), args.chunk):
        chunk = subset[start : start + args.chunk]
        seconds, faces, cpu = naive_loop(chunk, network)
        naive_s, naive_faces, naive_cpu = naive_s + seconds, naive_faces + faces, naive_cpu + cpu
        if args.single_threaded_naive:
            seconds, _, cpu = naive_loop(chunk, network, threads=1)
            single_s, single_cpu = single_s + seconds, single_cpu + cpu
        seconds, _, faces, cpu = pipeline_run(plain, chunk, select="central")
        same_s, same_faces, same_cpu = same_s + seconds, same_faces + faces, same_cpu + cpu
        seconds, _, _, cpu = pipeline_run(fp32, chunk, select="central")
        fp32_s, fp32_cpu = fp32_s + seconds, fp32_cpu + cpu
        print(f"  {start + len(chunk)}/{len(subset)}: ratio so far {naive_s / same_s:.2f}, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    load_subset_end = os.getloadavg()
    full_s, full_images, full_faces, _ = pipeline_run(plain, paths, select="all")
    flipped = FacePipeline.from_settings(Settings(**base, flip=True, precision=args.precision))
    flip_s, flip_images, flip_faces, _ = pipeline_run(flipped, paths, select="all")

    figures = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"device {plain.device}",
        "subset_images": len(subset),
        "naive_images_per_s": len(subset) / naive_s,
        "pipeline_same_subset_images_per_s": len(subset) / same_s,
        "ratio_pipeline_over_naive": naive_s / same_s,
        "naive_cpu_ms_per_image": 1000 * naive_cpu / len(subset),
        "pipeline_cpu_ms_per_image": 1000 * same_cpu / len(subset),
        "cpu_ratio_naive_over_pipeline": naive_cpu / same_cpu,
        "precision": str(plain.embedder.precision),
        "pipeline_fp32_same_subset_images_per_s": len(subset) / fp32_s,
        "pipeline_fp32_cpu_ms_per_image": 1000 * fp32_cpu / len(subset),
        "ratio_pipeline_fp32_over_naive": naive_s / fp32_s,
        **({"naive_1thread_images_per_s": len(subset) / single_s,
            "naive_1thread_cpu_ms_per_image": 1000 * single_cpu / len(subset),
            "ratio_pipeline_over_naive_1thread": single_s / same_s,
            "cpu_ratio_naive_1thread_over_pipeline": single_cpu / same_cpu}
           if args.single_threaded_naive else {}),
        "load_average_start": load_start,
        "load_average_after_subset": load_subset_end,
        "load_average_end": os.getloadavg(),
        "naive_faces": naive_faces,
        "pipeline_subset_faces": same_faces,
        "all_images": len(paths),
        "pipeline_all_faces_images_per_s": full_images / full_s,
        "pipeline_all_faces_faces_per_s": full_faces / full_s,
        "pipeline_flip_images_per_s": flip_images / flip_s,
        "pipeline_flip_faces_per_s": flip_faces / flip_s,
        "seconds": {"naive": naive_s, "pipeline_subset": same_s, "pipeline_fp32_subset": fp32_s, "pipeline_all": full_s,
                    "pipeline_all_flip": flip_s},
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
