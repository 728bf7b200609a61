"""Exact top-k by inner product that reads a quarter of the bytes: an 8-bit scan whose
error is bounded, then exact re-ranking of every row the bound cannot rule out.

Why. One query against N float32 rows of dimension d is a matrix-vector product: every
byte of the matrix is read once for two flops, so the memory bus sets the time. FAISS's
flat scan (fewer than 20 queries) and a BLAS GEMV both stream 4·N·d bytes. Here the scan
streams N·d bytes of int8 codes with FAISS's integer kernel, and only a few dozen rows
per query are read back in float32.

Definitions (row x_i, query q, both float32 vectors of dimension d):

* Exact score. ``score_i = float32(sum_j float64(q_j) * float64(x_ij))``: every product
  of two float32 values is exact in float64, the sum is numpy's (pairwise) float64 sum
  over the last axis, and the result is rounded once to float32. The same function
  (`exact_scores`) scores a brute-force scan and the re-ranked candidates, row by row,
  so both give bit-identical values.
* Order. Score descending, then id ascending: ties are broken by the smaller id.
* Codes. Per-dimension scales S_j > 0; c_ij = clip(round(x_ij * S_j), -127, 127), so the
  reconstruction is x~_ij = c_ij / S_j. At encoding time we compute (in float64) the
  residual norm rho_i = ||x_i - x~_i|| and nu_i = ||x~_i||.
* Query codes. w_j = q_j / S_j, B = 127 / max_j |w_j|, a_j = round(B * w_j) (integers in
  [-127, 127]). FAISS's QT_8bit_direct_signed scan computes A_i = sum_j a_j * c_ij; it is
  an integer with |A_i| <= d * 127^2 < 2^24 for d <= 1040, so it is exact whether FAISS
  accumulates in int32 or in float32 (`check_integer_scan` verifies this at first use).
  The approximate score is s~_i = A_i / B.

The bound. Let q~_j = a_j * S_j / B. Then q~ . x~_i = sum_j a_j c_ij / B = s~_i exactly,
and

    s_i - s~_i = q . x_i - q~ . x~_i = q . (x_i - x~_i) + (q - q~) . x~_i

so by Cauchy-Schwarz, for every row whose residual was measured,

    |s_i - s~_i| <= ||q|| * rho_i + ||q - q~|| * nu_i  <=  E := ||q|| * rho_max + ||q - q~|| * nu_max

where rho_max and nu_max are maxima over the rows kept in the scan ("body" rows). Rows
whose residual is unusually large (a component far outside the scales, e.g. a corrupt
embedding) are kept out of E: they are "loose" rows, re-ranked exactly on every query.

Why the result is exact. The scan returns the k' rows of largest A_i (k' >= k); let lo
be the smallest of their approximate scores and t the k-th best exact score among the
candidates (those k' rows plus the loose rows). Every other body row has s~_i <= lo,
hence a real score s_i <= lo + E. If

    lo + E + slack(t) < t

then its float32 score is strictly below t (`slack` covers float64 rounding of the
re-ranking sum and of A_i / B, and the final rounding to float32), while at least k
candidates score >= t: whatever its id, it cannot be among the top k. So the top k of the
candidates, in the order above, is the top k of all rows. When the test fails the scan is
repeated with a larger k' (4x), until it holds or k' covers every row (then every row is
a candidate and the answer is the brute-force one by definition).

Nothing here assumes unit vectors; the bound only gets looser for large norms.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np

log = logging.getLogger(__name__)

CODE_MAX = 127
MAX_EXACT_DIM = 1040  # d * 127^2 < 2^24: integer sums stay exact in float32
_GAMMA_UNIT = 2.0**-53


def exact_scores(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Scores of `rows` (r×d, or q×r×d for one row set per query) against `queries`
    (q×d): float32 of the float64 sum of exact float64 products. Row by row the sum is
    numpy's reduction over the contiguous last axis, so a row's score does not depend
    on which other rows are scored with it."""
    q64 = np.asarray(queries, np.float64)
    r64 = np.asarray(rows, np.float64)
    if r64.ndim == 2:
        prod = r64[None, :, :] * q64[:, None, :]
    else:
        prod = r64 * q64[:, None, :]
    return np.ascontiguousarray(prod).sum(axis=-1).astype(np.float32)


def top_k_order(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of the best k entries of one query: score descending, then label ascending."""
    return np.lexsort((labels, -scores.astype(np.float64)))[:k]


def slack(t: float, lo: float, q_norm: float, x_norm: float, dim: int) -> float:
    """Rounding allowance of the exactness test: float64 error of the re-ranking sum
    (gamma_d * ||q|| * ||x||), of lo = A / B, and the final rounding to float32 (a value
    below t - 2^-22 |t| - 2^-140 rounds to a float32 strictly below t)."""
    gamma = dim * _GAMMA_UNIT / (1 - dim * _GAMMA_UNIT)
    return gamma * q_norm * x_norm + 2.0**-50 * abs(lo) + 2.0**-22 * abs(t) + 2.0**-140


@functools.cache
def check_integer_scan(dim: int) -> None:
    """FAISS's QT_8bit_direct_signed scan must return the exact integer dot product for
    integer queries in [-127, 127]: the bound relies on it. Checked once per dimension
    on extreme codes, so a FAISS build that saturated or rounded would fail loudly
    instead of returning wrong neighbours."""
    rng = np.random.default_rng(dim)
    codes = rng.choice(np.array([-127, 127, -1, 0, 1], np.int16), size=(64, dim))
    codes[0] = 127
    queries = np.stack([np.full(dim, 127, np.int16), -codes[1], codes[2]]).astype(np.float32)
    index = _scan_index(dim)
    index.add_sa_codes((codes + 128).astype(np.uint8))
    got, pos = index.search(queries, len(codes))
    want = queries.astype(np.int64) @ codes.T.astype(np.int64)
    ok = np.array_equal(np.take_along_axis(want, pos, 1), got.astype(np.int64))
    if not ok:
        raise RuntimeError(f"faiss {faiss.__version__}: the int8 scan is not exact at d={dim}; "
                           "exact search cannot use it")


def _scan_index(dim: int) -> faiss.IndexScalarQuantizer:
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT)


@dataclass
class ScanStats:
    queries: int = 0
    rescans: int = 0  # queries that needed a second (or later) scan with a larger k'
    candidates: int = 0  # rows re-ranked exactly, summed over queries


class ExactScan:
    """int8 codes of a float32 row store, kept in step with it, and exact top-k over it.

    The float32 rows themselves live elsewhere (a FAISS IndexFlat, a memory-mapped
    file): every call takes them as an (n×d) array whose row i is the row coded at
    position i. Appends and removals must be mirrored with `append` and `remove`.

    Parameters:
      dim            vector dimension (at most 1040).
      quantise_above below this many rows the scan is skipped: all rows are scored
                     exactly (cheaper than two stages, and the same answer).
      oversample     first scan fetches k' = max(2k, k + oversample) rows.
      omp_min_queries  batches of at least this many queries are scanned by FAISS's
                     OpenMP search (parallel over queries); smaller ones by a scanner on
                     the calling thread. FAISS opens an OpenMP region even for one query,
                     and on a loaded machine waking the second thread costs a scheduler
                     time slice, which is longer than the scan itself.
      refit_growth   the scales are re-fitted (every row re-encoded) when the row count
                     has grown by this factor since the last fit: O(1) amortised per
                     row, and the first rows do not fix the scales forever.
      range_margin   the scale of dimension j maps range_margin × (largest |x_ij| of the
                     fitting sample) to 127, so rows outside the sample rarely clamp.
      loose_factor   a row whose residual exceeds loose_factor × the worst rounding
                     error of an in-range row (half a step in every dimension) is
                     "loose": it was clamped, it stays out of E and is re-ranked on
                     every query. Refit when loose rows pass max(64, n / 1024).
    """

    def __init__(self, dim: int, *, quantise_above: int = 8192, oversample: int = 96,
                 omp_min_queries: int = 8, refit_growth: float = 2.0, loose_factor: float = 1.0,
                 range_margin: float = 1.2, sample_rows: int = 65536, seed: int = 0) -> None:
        if dim > MAX_EXACT_DIM:
            raise ValueError(f"int8 scan is exact up to d={MAX_EXACT_DIM}, not {dim}")
        self.dim = dim
        self.quantise_above = quantise_above
        self.oversample = oversample
        self.omp_min_queries = omp_min_queries
        self.refit_growth = refit_growth
        self.loose_factor = loose_factor
        self.range_margin = range_margin
        self.sample_rows = sample_rows
        self.seed = seed
        self.stats = ScanStats()
        self._reset()

    def _reset(self) -> None:
        self.scales: np.ndarray | None = None  # S_j, float64; None: not fitted (small store)
        self._index: faiss.IndexScalarQuantizer | None = None
        self._rows_at_fit = 0
        self._rho_cap = math.inf
        self.rho_max = 0.0
        self.nu_max = 0.0
        self._loose = np.zeros(0, np.int64)  # sorted positions

    # --- keeping in step with the row store --------------------------------------------

    @property
    def fitted(self) -> bool:
        return self._index is not None

    @property
    def ntotal(self) -> int:
        return self._index.ntotal if self._index is not None else 0

    @property
    def loose(self) -> np.ndarray:
        return self._loose

    def fit(self, rows: np.ndarray) -> None:
        """Choose scales from (a sample of) `rows` and encode all of them."""
        n = len(rows)
        self._reset()
        if n == 0:
            return
        check_integer_scan(self.dim)
        take = np.arange(n) if n <= self.sample_rows else np.sort(
            np.random.default_rng(self.seed).choice(n, self.sample_rows, replace=False))
        peak = np.abs(rows[take]).max(axis=0).astype(np.float64) * self.range_margin
        # A dimension that is ~0 in the sample still needs a finite scale.
        peak = np.maximum(peak, max(float(peak.max()) * 1e-3, 1e-30))
        self.scales = CODE_MAX / peak
        # The largest residual an in-range row can have: half a step in every dimension.
        self._rho_cap = self.loose_factor * 0.5 * float(np.linalg.norm(1.0 / self.scales))
        self._index = _scan_index(self.dim)
        self._rows_at_fit = n
        self._encode_append(rows)

    def append(self, rows: np.ndarray, store: np.ndarray) -> None:
        """Rows were appended to the store (`store` is the whole store, new rows last)."""
        if len(rows) == 0:
            return
        if not self.fitted:
            if len(store) >= self.quantise_above:
                self.fit(store)
            return
        if len(store) >= self.refit_growth * self._rows_at_fit or len(self._loose) > max(64, len(store) // 1024):
            self.fit(store)
            return
        self._encode_append(rows)

    def remove(self, gone: np.ndarray) -> None:
        """Rows at the positions where `gone` (bool, one per stored row) is True were
        removed from the store, the others keeping their order."""
        if not self.fitted or not gone.any():
            return
        self._index.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(gone).astype(np.int64)))
        shift = np.cumsum(gone)
        kept = self._loose[~gone[self._loose]]
        self._loose = kept - shift[kept]
        # rho_max / nu_max stay: a maximum over a superset is still a valid bound.

    def _encode_append(self, rows: np.ndarray, chunk: int = 16384) -> None:
        base = self._index.ntotal
        for start in range(0, len(rows), chunk):
            block = np.asarray(rows[start:start + chunk], np.float64)
            codes = np.clip(np.rint(block * self.scales), -CODE_MAX, CODE_MAX)
            recon = codes / self.scales
            rho = np.linalg.norm(block - recon, axis=1) * (1 + 2.0**-30)
            nu = np.linalg.norm(recon, axis=1) * (1 + 2.0**-30)
            loose = rho > self._rho_cap
            if (~loose).any():
                self.rho_max = max(self.rho_max, float(rho[~loose].max()))
                self.nu_max = max(self.nu_max, float(nu[~loose].max()))
            if loose.any():
                self._loose = np.concatenate([self._loose, base + start + np.flatnonzero(loose)])
            self._index.add_sa_codes((codes + 128).astype(np.uint8))

    # --- search ----------------------------------------------------------------------------

    def search(self, store: np.ndarray, queries: np.ndarray, k: int, *, labels: np.ndarray | None = None,
               selector: faiss.IDSelector | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k: (scores float32 nq×k, positions int64 nq×k), best first by
        (score desc, label asc), -1 / -inf padding where fewer than k rows are allowed.
        `labels[i]` is row i's tie-break key (face id; default: the position);
        `selector` (over positions) restricts the rows considered."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        nq, n = len(queries), len(store)
        scores = np.full((nq, k), -np.inf, np.float32)
        positions = np.full((nq, k), -1, np.int64)
        if n == 0 or k <= 0 or nq == 0:
            return scores, positions
        if labels is None:
            labels = np.arange(n, dtype=np.int64)
        self.stats.queries += nq
        if self.fitted and self.ntotal != n:
            # Codes out of step with the rows would give wrong answers: re-encode.
            log.warning("exact scan: %d codes for %d rows; re-encoding", self.ntotal, n)
            self.fit(store)
        if not self.fitted:
            return self._brute(store, queries, k, labels, selector, scores, positions)

        a, b, q_norm, err_norm = self._quantise_queries(queries)
        fetch = min(n, max(2 * k, k + self.oversample))
        pending = np.arange(nq)
        loose = self._loose
        if selector is not None and len(loose):
            loose = loose[[bool(selector.is_member(int(p))) for p in loose]]
        while len(pending):
            approx, found = self._scan(a[pending], fetch, selector)
            retry = []
            for start in range(0, len(pending), self.RERANK_CHUNK):
                rows = slice(start, start + self.RERANK_CHUNK)
                retry.extend(self._rerank(store, queries, labels, pending[rows], approx[rows], found[rows],
                                          loose, k, fetch >= n, (a, b, q_norm, err_norm), scores, positions))
            self.stats.rescans += len(retry)
            pending = np.asarray(retry, np.int64)
            fetch = min(n, fetch * 4)
        return scores, positions

    RERANK_CHUNK = 128  # queries re-ranked together: bounds the (queries × candidates × d) float64 block

    def _rerank(self, store, queries, labels, qi, approx, found, loose, k, whole, quantised, scores, positions):
        """Exact scores of each query's candidates, the top k in (score desc, label asc)
        order written into scores/positions, and the queries whose bound test failed."""
        _, b, q_norm, err_norm = quantised
        valid = found >= 0
        # The scan returned every allowed row when it came back short of k' rows.
        complete = ~valid.all(axis=1) | whole
        lo = np.where(valid, approx, np.inf).min(axis=1).astype(np.float64) / b[qi]
        cand = found
        if len(loose):
            cand = np.where(np.isin(found, loose), -1, found)  # loose rows are added once below
            cand = np.concatenate([cand, np.broadcast_to(loose, (len(qi), len(loose)))], axis=1)
        ok = cand >= 0
        safe = np.where(ok, cand, 0)
        exact = np.where(ok, exact_scores(queries[qi], store[safe]), -np.inf).astype(np.float32)
        self.stats.candidates += int(ok.sum())
        # Invalid slots sort last: score -inf, then the largest label.
        order = np.lexsort((np.where(ok, labels[safe], np.iinfo(np.int64).max), -exact.astype(np.float64)),
                           axis=1)[:, :k]
        best_s = np.take_along_axis(exact, order, 1)
        best_p = np.take_along_axis(cand, order, 1)
        have = np.take_along_axis(ok, order, 1)
        retry = []
        for row, q in enumerate(qi.tolist()):
            n_best = int(have[row].sum())
            if not complete[row] and n_best == k:
                t = float(best_s[row, k - 1])
                bound = (q_norm[q] * self.rho_max + err_norm[q] * self.nu_max) * (1 + 2.0**-20)
                margin = bound + slack(t, lo[row], q_norm[q], self.nu_max + self.rho_max, self.dim)
                if not lo[row] + margin < t:
                    retry.append(q)
                    continue
            scores[q, :n_best] = best_s[row, :n_best]
            positions[q, :n_best] = best_p[row, :n_best]
        return retry

    def _scan(self, a: np.ndarray, k: int, selector: faiss.IDSelector | None):
        """(A, positions) of the k largest integer scores per query, unordered; -1 where
        fewer rows are allowed."""
        if len(a) >= self.omp_min_queries:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            return self._index.search(a, k, params=params)
        index = self._index
        codes = index.codes.data()
        approx = np.full((len(a), k), -np.inf, np.float32)
        found = np.full((len(a), k), -1, np.int64)
        # store_pairs with list 0 and no ids: labels are row positions, and a selector
        # is asked about positions, as in IndexScalarQuantizer.search.
        scanner = index.sq.select_InvertedListScanner(faiss.METRIC_INNER_PRODUCT, None, True, selector, False)
        scanner.list_no = 0
        for i in range(len(a)):
            scanner.set_query(faiss.swig_ptr(a[i]))
            scanner.scan_codes(index.ntotal, codes, None, faiss.swig_ptr(approx[i]), faiss.swig_ptr(found[i]), k)
        return approx, found

    def _quantise_queries(self, queries: np.ndarray):
        """Integer query codes a (float32 holding integers), B, ||q||, ||q - q~||."""
        q64 = queries.astype(np.float64)
        w = q64 / self.scales
        peak = np.abs(w).max(axis=1)
        b = np.where(peak > 0, CODE_MAX / np.where(peak > 0, peak, 1.0), 1.0)
        a = np.clip(np.rint(w * b[:, None]), -CODE_MAX, CODE_MAX)
        q_tilde = a * self.scales / b[:, None]
        q_norm = np.linalg.norm(q64, axis=1) * (1 + 2.0**-30)
        err_norm = np.linalg.norm(q64 - q_tilde, axis=1) * (1 + 2.0**-30)
        return a.astype(np.float32), b, q_norm, err_norm

    def _brute(self, store, queries, k, labels, selector, scores, positions):
        allowed = np.arange(len(store))
        if selector is not None:
            allowed = allowed[[bool(selector.is_member(int(p))) for p in allowed]] if len(allowed) else allowed
        if len(allowed) == 0:
            return scores, positions
        for qi in range(len(queries)):
            exact = exact_scores(queries[qi:qi + 1], store[allowed])[0]
            best = top_k_order(exact, labels[allowed], k)
            scores[qi, :len(best)] = exact[best]
            positions[qi, :len(best)] = allowed[best]
        self.stats.candidates += len(allowed) * len(queries)
        return scores, positions
