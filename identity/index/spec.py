"""Which FAISS index to build, with explicit parameters, and how to build it.

Vectors are L2-normalised, so inner product equals cosine similarity: every index
here uses METRIC_INNER_PRODUCT.

Default rule (index_type="auto", N = number of faces, d = dimension):

* N <= settings.index_exact_max          → "flat": IndexFlatIP in an IndexIDMap2. Exact.
* N * d * 4 bytes <= PQ_ABOVE_BYTES      → "ivf": IVF-Flat. Same memory as flat, a
                                            fraction of the scan.
* beyond                                  → "ivfpq": IVF-PQ, d/4 bytes per vector.
* "hnsw" only when asked for: fastest queries, but slow to build, no removal
  (tombstones, see face_index.py) and no GPU version in faiss.

Parameter defaults derived from N (each overridable in Settings):

* nlist  = power of two nearest 4*sqrt(N), clamped to [16, 65536]: FAISS's guideline
  is 4..16*sqrt(N) lists; the low end keeps coarse assignment cheap on a CPU.
* nprobe = max(16, nlist/64): on face-like data (benchmarks/bench_search.py, 100k) the
  probe's identity is found first 100% of the time already at nprobe=16, but recall@10
  of *face ids* is only 0.67 (0.80 at 64); recall@10 >= 0.95 needs nprobe ≈ nlist/4.
  The tail of a face's top-10 is near-equidistant strangers, which IVF finds poorly.
* pq_m   = d/4 sub-quantizers of 8 bits (d/4 bytes per vector, 16x smaller than float32).
* hnsw M = settings.index_hnsw_m (32); efConstruction 64; efSearch = max(64, 2k).
* IVF trains on a sample of max(50*nlist, 100k) vectors (capped at N); FAISS wants at
  least 39 points per centroid and more buys nothing measurable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import faiss
import numpy as np

from identity.config import Settings
from identity.errors import ConfigError

IndexKind = Literal["flat", "ivf", "ivfpq", "hnsw"]

PQ_ABOVE_BYTES = 4 * 1024**3
HNSW_EF_CONSTRUCTION = 64


@dataclass(frozen=True)
class IndexSpec:
    """A complete, explicit description of one FAISS index (FAISS-style parameters)."""

    kind: IndexKind
    dim: int
    nlist: int = 0
    nprobe: int = 0
    pq_m: int = 0
    hnsw_m: int = 32
    ef_search: int = 64

    @property
    def trained(self) -> bool:
        """True when the index needs a training sample before vectors can be added."""
        return self.kind in ("ivf", "ivfpq")

    @property
    def removable(self) -> bool:
        """Whether FAISS can remove ids from this index type (HNSW cannot)."""
        return self.kind != "hnsw"

    def describe(self) -> str:
        if self.kind == "flat":
            return f"flat(d={self.dim})"
        if self.kind == "ivf":
            return f"ivf(d={self.dim}, nlist={self.nlist}, nprobe={self.nprobe})"
        if self.kind == "ivfpq":
            return f"ivfpq(d={self.dim}, nlist={self.nlist}, nprobe={self.nprobe}, m={self.pq_m})"
        return f"hnsw(d={self.dim}, M={self.hnsw_m}, efSearch={self.ef_search})"


def default_nlist(n: int) -> int:
    target = 4.0 * math.sqrt(max(n, 1))
    return int(min(65536, max(16, 2 ** round(math.log2(target)))))


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(16, nlist // 64))


def default_pq_m(dim: int) -> int:
    # The largest divisor of dim that is <= dim/4: PQ needs dim % m == 0.
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1


def choose_kind(settings: Settings, n: int, dim: int) -> IndexKind:
    if settings.index_type != "auto":
        return settings.index_type
    if n <= settings.index_exact_max:
        return "flat"
    return "ivf" if n * dim * 4 <= PQ_ABOVE_BYTES else "ivfpq"


def choose_spec(settings: Settings, n: int, dim: int, *, kind: IndexKind | None = None) -> IndexSpec:
    """The index for `n` faces of dimension `dim`: settings first, defaults derived from n."""
    kind = kind or choose_kind(settings, n, dim)
    nlist = settings.index_nlist or default_nlist(n)
    pq_m = settings.index_pq_m or default_pq_m(dim)
    if kind == "ivfpq" and dim % pq_m:
        raise ConfigError(f"index_pq_m={pq_m} must divide the dimension {dim}")
    spec = IndexSpec(
        kind=kind,
        dim=dim,
        hnsw_m=settings.index_hnsw_m,
        ef_search=settings.index_ef_search or 64,
    )
    if kind in ("ivf", "ivfpq"):
        spec = replace(spec, nlist=nlist, nprobe=min(nlist, settings.index_nprobe or default_nprobe(nlist)))
    if kind == "ivfpq":
        spec = replace(spec, pq_m=pq_m)
    return spec


def training_sample_size(spec: IndexSpec, n: int) -> int:
    return min(n, max(50 * spec.nlist, 100_000)) if spec.trained else 0


def create_index(spec: IndexSpec) -> faiss.Index:
    """An empty CPU index taking explicit int64 ids (the face ids) in `add_with_ids`."""
    ip = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(spec.dim))
    if spec.kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(spec.dim, spec.hnsw_m, ip)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.hnsw.efSearch = spec.ef_search
        return faiss.IndexIDMap2(hnsw)
    quantizer = faiss.IndexFlatIP(spec.dim)
    if spec.kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, spec.dim, spec.nlist, ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, spec.dim, spec.nlist, spec.pq_m, 8, ip)
    # 10 k-means iterations instead of FAISS's 25: coarse centroids barely move after
    # that on face-like data, and training is the slowest step of a build.
    index.cp.niter = 10
    index.own_fields = True
    quantizer.this.disown()  # the IVF index now owns (and frees) its quantizer
    index.nprobe = spec.nprobe
    return index


def train(index: faiss.Index, sample: np.ndarray) -> None:
    """Train an IVF index on a sample; no-op for indexes that need none."""
    if index.is_trained:
        return
    if len(sample) == 0:
        raise ConfigError("an IVF index needs a non-empty training sample")
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def search_params(spec: IndexSpec, k: int, selector: faiss.IDSelector | None = None) -> faiss.SearchParameters | None:
    """Per-call parameters (nprobe / efSearch / id filter), so concurrent searches never
    mutate the shared index. efSearch grows with k: HNSW returns at most efSearch hits."""
    if spec.kind in ("ivf", "ivfpq"):
        return faiss.SearchParametersIVF(nprobe=spec.nprobe, sel=selector)
    if spec.kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(spec.ef_search, 2 * k), sel=selector)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def sample_rows(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Sorted random row positions (sorted so a streaming reader can pick them in one pass)."""
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))
