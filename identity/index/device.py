"""Where the searchable index lives: a CUDA GPU when faiss-gpu sees one, else the CPU.

One code path: the index is always built (and trained, and filled) on the CPU, then
cloned to the GPU with `index_cpu_to_gpu` when one is present and allowed. Snapshots
are always written from the CPU copy, which we keep as the authoritative one, so a
snapshot never depends on the GPU build of faiss. Updates go to both copies.

What FAISS cannot do on the GPU, and what we do instead:
* HNSW has no GPU version → it stays on the CPU (logged once).
* Per-call SearchParameters (nprobe, id selectors) are CPU-only → the GPU clone gets
  nprobe set once at clone time, and person restrictions fall back to post-filtering.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faiss

from identity.index.spec import IndexSpec, gpu_count  # noqa: F401 - gpu_count is part of this module's API

log = logging.getLogger(__name__)

_resources: Any = None  # one StandardGpuResources per process: it owns scratch memory


@dataclass
class Placement:
    """The index to search and where it runs; `index` is the CPU one when on the CPU."""

    index: faiss.Index
    device: str  # "cpu" or "cuda:N"

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"


def place(cpu_index: faiss.Index, spec: IndexSpec, *, use_gpu: bool, gpu: int = 0) -> Placement:
    """Clone `cpu_index` to GPU `gpu` when possible; otherwise search the CPU index itself."""
    if not use_gpu or gpu_count() == 0:
        return Placement(cpu_index, "cpu")
    if spec.graph:
        log.info("index: HNSW has no GPU implementation in faiss; searching on the CPU")
        return Placement(cpu_index, "cpu")
    global _resources
    try:
        if _resources is None:
            _resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        # PQ codes with many sub-quantizers need the float16 lookup tables on GPU.
        options.useFloat16LookupTables = spec.kind == "ivfpq" and spec.pq_m > 48
        gpu_index = faiss.index_cpu_to_gpu(_resources, gpu, cpu_index, options)
    except (RuntimeError, AttributeError) as exc:  # faiss raises RuntimeError for unsupported cases
        log.warning("index: could not move %s to cuda:%d (%s); searching on the CPU", spec.describe(), gpu, exc)
        return Placement(cpu_index, "cpu")
    if spec.kind in ("ivf", "ivfpq"):
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", spec.nprobe)
    return Placement(gpu_index, f"cuda:{gpu}")
