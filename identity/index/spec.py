"""Which FAISS index to build, with explicit parameters, and how to build it.

Vectors are L2-normalised, so inner product equals cosine similarity: every index
here uses METRIC_INNER_PRODUCT.

Default rule (index_type="auto", N = number of faces, d = dimension, B = memory budget,
`index_memory_budget_mb`, default half of the machine's RAM). `choose()` returns the
spec together with the reason, which `identity index status` shows.

* "flat" (exact) while N <= index_exact_max and its memory fits B: float32 rows + int8
  codes, 5·d bytes a face (exact.py: an int8 scan re-ranked exactly). On a CPU an exact
  query reads d bytes a face, so its latency grows with N·d; index_exact_max caps it.
* "hnsw-sq8" while N <= HNSW_MAX and float32 rows + 8-bit codes + graph (5·d + 8·M bytes
  a face) fit B: the graph is walked over 8-bit codes (a quarter of the bytes a distance
  reads) and the best k·rerank_factor candidates are re-scored exactly from the float32
  rows (FAISS's IndexRefineFlat), so returned scores are exact. HNSW is the only index
  type measured at recall@10 >= 0.95 under a millisecond on face-like data (IVF-Flat needs
  a quarter of its lists for that), and over codes, with the defaults below, it reached
  recall@10 0.956 at 1M in under half the float32 graph's time (BENCHMARKS.md,
  "Approximate search"). Not on a GPU
  (faiss has no GPU HNSW): with a usable GPU, IVF-Flat (GPU-friendly) takes its place.
  Above HNSW_MAX the graph's build time on a CPU (single-digit hours at 10M on two
  cores) rules it out. "hnsw" (the graph over float32 rows, no re-ranking) only when
  asked for: the same memory less d bytes a face, a faster build, slower searches.
* "ivf" when it fits B and HNSW does not apply; else "ivfpq" with the largest number of
  8-bit sub-quantizers (a divisor of d, at most d/4) whose codes fit B.
* "hnsw" / "hnsw-sq8" only when asked for below index_exact_max.

Parameter defaults derived from N (each overridable in the index settings, `settings.index`):

* nlist  = power of two nearest 4*sqrt(N), clamped to [16, 65536]: FAISS's guideline
  is 4..16*sqrt(N) lists; the low end keeps coarse assignment cheap on a CPU.
* nprobe = max(16, nlist/64): on face-like data (benchmarks/bench_search.py, 100k) the
  probe's identity is found first 100% of the time already at nprobe=16, but recall@10
  of *face ids* is only 0.67 (0.80 at 64); recall@10 >= 0.95 needs nprobe ≈ nlist/4.
  The tail of a face's top-10 is near-equidistant strangers, which IVF finds poorly.
* pq_m   = d/4 sub-quantizers of 8 bits (d/4 bytes per vector, 16x smaller than float32).
* rerank_factor = index_rerank_factor (2): hnsw-sq8 re-scores 2·k candidates (20 for a
  top-10), which recovers the order the 8-bit codes blur; at 1M, 4·k bought no recall
  that a larger efSearch did not buy more cheaply (BENCHMARKS.md, "Search").
* hnsw M = index_hnsw_m (32); efConstruction = index_ef_construction (160): at 1M face-like
  rows the graph built with 160 reached recall@10 0.97 at efSearch 32, where the one
  built with 64 needed about 96 for 0.957, for 3x the build time. efSearch grows with
  sqrt(N) (`default_ef_search`): the steps a greedy graph search needs to reach the same
  recall grow with the graph. hnsw-sq8: 32·sqrt(N/1M), at least 16 (recall@10 0.98 at
  100k with 16, 0.970 at 1M with 32); hnsw (float32, calibrated on the efConstruction-64
  graph, so on the safe side now): 32·sqrt(N/100k), at least 32.
* IVF trains on a sample of max(50*nlist, 100k) vectors (capped at N); FAISS wants at
  least 39 points per centroid and more buys nothing measurable.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Literal

import faiss
import numpy as np

from identity.config import IndexSettings
from identity.errors import ConfigError

IndexKind = Literal["flat", "ivf", "ivfpq", "hnsw", "hnsw-sq8"]
GRAPH_KINDS = ("hnsw", "hnsw-sq8")

PQ_ABOVE_BYTES = 4 * 1024**3  # kept for callers; the budget rule below replaces it
HNSW_EF_CONSTRUCTION = 160
HNSW_MAX = 5_000_000
ID_BYTES = 24  # id_map (8) + PersonMap ids and persons (16), per face


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
    ef_construction: int = HNSW_EF_CONSTRUCTION
    rerank_factor: int = 2  # hnsw-sq8: candidates re-scored exactly per query = rerank_factor·k

    @property
    def trained(self) -> bool:
        """True when the index needs a training sample before vectors can be added
        (IVF's coarse centroids; the 8-bit quantizer's per-dimension ranges)."""
        return self.kind in ("ivf", "ivfpq", "hnsw-sq8")

    @property
    def graph(self) -> bool:
        """An HNSW graph: FAISS cannot remove from it, nor search it on a GPU."""
        return self.kind in GRAPH_KINDS

    @property
    def removable(self) -> bool:
        """Whether FAISS can remove ids from this index type (HNSW cannot)."""
        return not self.graph

    @property
    def approximate(self) -> bool:
        return self.kind != "flat"

    def describe(self) -> str:
        if self.kind == "flat":
            return f"flat(d={self.dim})"
        if self.kind == "ivf":
            return f"ivf(d={self.dim}, nlist={self.nlist}, nprobe={self.nprobe})"
        if self.kind == "ivfpq":
            return f"ivfpq(d={self.dim}, nlist={self.nlist}, nprobe={self.nprobe}, m={self.pq_m})"
        if self.kind == "hnsw-sq8":
            return (f"hnsw-sq8(d={self.dim}, M={self.hnsw_m}, efSearch={self.ef_search}, "
                    f"exact re-rank of {self.rerank_factor}·k)")
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


def default_ef_search(n: int, kind: str = "hnsw") -> int:
    if kind == "hnsw-sq8":
        return int(min(1024, max(16, round(32 * math.sqrt(max(n, 1) / 1_000_000)))))
    return int(min(1024, max(32, round(32 * math.sqrt(max(n, 1) / 100_000)))))


def memory_budget(index: IndexSettings) -> tuple[int, str]:
    """(bytes, where the figure comes from): `index_memory_budget_mb`, else half the RAM."""
    mb = index.memory_budget_mb
    if mb:
        return int(mb) * 2**20, "index_memory_budget_mb"
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 * 2**30
    return ram // 2, "half of RAM; index_memory_budget_mb unset"


def index_bytes(kind: str, n: int, dim: int, *, hnsw_m: int = 32, pq_m: int = 0, nlist: int = 0) -> int:
    """Resident bytes of an index of `n` faces, ids and person map included (estimate:
    FAISS's allocations plus our arrays; vectors dominate)."""
    if kind == "flat":
        per = 4 * dim + dim  # float32 rows + int8 codes of the exact scan
    elif kind in GRAPH_KINDS:
        per = 4 * dim + 2 * hnsw_m * 4 + hnsw_m * 4 // 2 + 16  # rows, level-0 links, upper levels, offsets
        per += dim if kind == "hnsw-sq8" else 0  # the 8-bit codes the graph walk reads
    elif kind == "ivf":
        per = 4 * dim + 8
    else:
        per = (pq_m or default_pq_m(dim)) + 8
    fixed = 4 * dim * nlist if kind in ("ivf", "ivfpq") else 0
    return n * (per + ID_BYTES) + fixed


@dataclass(frozen=True)
class Choice:
    """The index chosen for N faces and why; shown by `identity index status`."""

    spec: IndexSpec
    reason: str
    memory_bytes: int  # estimate for the chosen index at N faces
    budget_bytes: int


def _gib(b: int) -> str:
    return f"{b / 2**30:.2f} GiB"


def choose_kind(index: IndexSettings, n: int, dim: int) -> IndexKind:
    return choose(index, n, dim).spec.kind


def choose(index: IndexSettings, n: int, dim: int, *, kind: IndexKind | None = None,
           gpu: bool | None = None) -> Choice:
    """The index for `n` faces of dimension `dim` under the memory budget, and why.
    `gpu`: whether a GPU will search it (default: index_use_gpu and faiss sees one)."""
    budget, budget_from = memory_budget(index)
    fits = f"the memory budget {_gib(budget)} ({budget_from})"
    m = index.hnsw_m
    if kind is not None or index.type != "auto":
        kind = kind or index.type
        spec = _spec(index, n, dim, kind)
        mem = index_bytes(kind, n, dim, hnsw_m=m, pq_m=spec.pq_m, nlist=spec.nlist)
        why = f"index_type={kind} asked for" if kind == index.type else f"{kind} asked for by the caller"
        over = "" if mem <= budget else f"; over {fits}"
        return Choice(spec, f"{why}: {spec.describe()}, about {_gib(mem)} at {n:,} faces{over}", mem, budget)
    if gpu is None:
        gpu = bool(index.use_gpu) and gpu_count() > 0
    size = f"{n:,} faces × {dim}-d"
    flat = index_bytes("flat", n, dim)
    if n <= index.exact_max and flat <= budget:
        spec = _spec(index, n, dim, "flat")
        return Choice(spec, f"exact: {size} <= index_exact_max {index.exact_max:,} and "
                            f"{_gib(flat)} fits {fits}", flat, budget)
    why = (f"{size} > index_exact_max {index.exact_max:,}" if n > index.exact_max
           else f"exact search needs {_gib(flat)}, over {fits}")
    hnsw = index_bytes("hnsw-sq8", n, dim, hnsw_m=m)
    if not gpu and n <= HNSW_MAX and hnsw <= budget:
        spec = _spec(index, n, dim, "hnsw-sq8")
        return Choice(spec, f"{why}; HNSW over 8-bit codes with exact re-ranking (float32 rows + "
                            f"codes + graph, {_gib(hnsw)}) fits {fits} and "
                            f"{n:,} <= {HNSW_MAX:,} faces (graph build time)", hnsw, budget)
    not_hnsw = ("a GPU will search it (faiss has no GPU HNSW)" if gpu
                else f"{n:,} > {HNSW_MAX:,} faces (HNSW build time)" if n > HNSW_MAX
                else f"HNSW needs {_gib(hnsw)}, over {fits}")
    ivf_spec = _spec(index, n, dim, "ivf")
    ivf = index_bytes("ivf", n, dim, nlist=ivf_spec.nlist)
    if ivf <= budget:
        return Choice(ivf_spec, f"{why}; {not_hnsw}; IVF-Flat ({_gib(ivf)}) fits {fits}", ivf, budget)
    spec = _spec(index, n, dim, "ivfpq")
    if not index.pq_m:
        # The most sub-quantizers (best recall) whose codes still fit.
        for pq_m in sorted({m_ for m_ in range(1, max(1, dim // 4) + 1) if dim % m_ == 0}, reverse=True):
            if index_bytes("ivfpq", n, dim, pq_m=pq_m, nlist=spec.nlist) <= budget:
                break
        spec = replace(spec, pq_m=pq_m)
    mem = index_bytes("ivfpq", n, dim, pq_m=spec.pq_m, nlist=spec.nlist)
    over = "" if mem <= budget else f"; still over {fits}: raise the budget or shard"
    return Choice(spec, f"{why}; {not_hnsw}; float32 rows ({_gib(ivf)}) over {fits}: IVF-PQ with "
                        f"{spec.pq_m} bytes a face ({_gib(mem)}){over}", mem, budget)


def choose_spec(index: IndexSettings, n: int, dim: int, *, kind: IndexKind | None = None) -> IndexSpec:
    """The index for `n` faces of dimension `dim`: settings first, defaults derived from n."""
    return choose(index, n, dim, kind=kind).spec


def _spec(index: IndexSettings, n: int, dim: int, kind: IndexKind) -> IndexSpec:
    nlist = index.nlist or default_nlist(n)
    pq_m = index.pq_m or default_pq_m(dim)
    if kind == "ivfpq" and dim % pq_m:
        raise ConfigError(f"index_pq_m={pq_m} must divide the dimension {dim}")
    spec = IndexSpec(
        kind=kind,
        dim=dim,
        hnsw_m=index.hnsw_m,
        ef_search=index.ef_search or default_ef_search(n, kind),
        ef_construction=index.ef_construction,
        rerank_factor=index.rerank_factor,
    )
    if kind in ("ivf", "ivfpq"):
        spec = replace(spec, nlist=nlist, nprobe=min(nlist, index.nprobe or default_nprobe(nlist)))
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
        hnsw.hnsw.efConstruction = spec.ef_construction
        hnsw.hnsw.efSearch = spec.ef_search
        return faiss.IndexIDMap2(hnsw)
    if spec.kind == "hnsw-sq8":
        codes = faiss.IndexHNSWSQ(spec.dim, faiss.ScalarQuantizer.QT_8bit, spec.hnsw_m, ip)
        codes.hnsw.efConstruction = spec.ef_construction
        codes.hnsw.efSearch = spec.ef_search
        refined = faiss.IndexRefineFlat(codes)  # keeps the float32 rows for the re-rank
        refined.k_factor = float(spec.rerank_factor)
        refined.own_fields = True
        codes.this.disown()  # the refine index now owns (and frees) the graph
        return faiss.IndexIDMap2(refined)
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
    mutate the shared index. efSearch grows with k: HNSW returns at most efSearch hits.
    For hnsw-sq8 these are its graph's: FaceIndex re-ranks the graph's rerank_factor·k
    candidates itself (face_index._reranker), so the walk must return that many."""
    if spec.kind in ("ivf", "ivfpq"):
        return faiss.SearchParametersIVF(nprobe=spec.nprobe, sel=selector)
    if spec.graph:
        wanted = spec.rerank_factor * k if spec.kind == "hnsw-sq8" else 2 * k
        return faiss.SearchParametersHNSW(efSearch=max(spec.ef_search, wanted), sel=selector)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def sample_rows(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Sorted random row positions (sorted so a streaming reader can pick them in one pass)."""
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def gpu_count() -> int:
    """GPUs FAISS can use (0 with a CPU build, which lacks get_num_gpus)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0
