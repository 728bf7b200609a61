"""Exact search through int8 codes + re-ranking (identity/index/exact.py) equals brute force:
the same ids and bit-identical scores, ties broken by the smaller id, on adversarial data."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from identity.index.exact import ExactScan, check_integer_scan, exact_scores
from identity.index.face_index import FaceIndex
from identity.index.spec import IndexSpec


def brute_force(store: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int, allowed=None):
    """The definition: float32 of the float64 sum of products, order (score desc, label asc)."""
    rows = np.arange(len(store)) if allowed is None else np.asarray(sorted(allowed), np.int64)
    out_s = np.full((len(queries), k), -np.inf, np.float32)
    out_p = np.full((len(queries), k), -1, np.int64)
    for i, q in enumerate(queries):
        if len(rows) == 0:
            continue
        s = np.float32((store[rows].astype(np.float64) * q.astype(np.float64)).sum(axis=1))
        order = np.lexsort((labels[rows], -s.astype(np.float64)))[:k]
        out_s[i, : len(order)] = s[order]
        out_p[i, : len(order)] = rows[order]
    return out_s, out_p


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def adversarial_store(rng: np.random.Generator, n: int, d: int, kinds: list[str]) -> np.ndarray:
    """Unit vectors plus the cases that break naive two-stage search."""
    x = unit(rng, n, d)
    parts = [x]
    if "duplicates" in kinds:  # identical rows under different labels: exact ties
        parts.append(x[rng.integers(0, n, max(1, n // 4))])
    if "near_ties" in kinds:  # differences far below the int8 step: the scan cannot order them
        base = x[rng.integers(0, n, max(1, n // 8))]
        jitter = rng.standard_normal(base.shape).astype(np.float32) * 1e-4
        parts.append(base + jitter)
        parts.append(base)
    if "clusters" in kinds:  # many rows within one quantisation step of each other
        base = np.repeat(x[rng.integers(0, n, 3)], 20, axis=0)
        parts.append(base + rng.standard_normal(base.shape).astype(np.float32) * np.float32(0.02 / d))
    if "half_steps" in kinds:  # every component on a rounding boundary of a plausible scale
        step = 1.0 / 127 * np.abs(x).max()
        parts.append(((np.floor(x[: max(1, n // 8)] / step) + 0.5) * step).astype(np.float32))
    if "outliers" in kinds:  # far outside the fitted scales: loose rows
        spike = np.zeros((3, d), np.float32)
        spike[np.arange(3), rng.integers(0, d, 3)] = [5.0, -7.0, 3.0]
        parts.append(spike)
    if "zeros" in kinds:
        parts.append(np.zeros((2, d), np.float32))
    if "scaled" in kinds:  # not unit length
        parts.append(x[: max(1, n // 8)] * np.float32(3.5))
    store = np.concatenate(parts).astype(np.float32)
    return store[rng.permutation(len(store))]


KINDS = ["duplicates", "near_ties", "clusters", "half_steps", "outliers", "zeros", "scaled"]


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 400),
    d=st.sampled_from([8, 32, 64, 100, 128]),
    k=st.sampled_from([1, 3, 10, 50, 1000]),
    kinds=st.lists(st.sampled_from(KINDS), unique=True),
    oversample=st.sampled_from([0, 2, 32]),
    query_kind=st.sampled_from(["random", "row", "row_scaled", "zero"]),
    restrict=st.booleans(),
    openmp=st.booleans(),
)
def test_int8_scan_with_reranking_equals_brute_force(seed, n, d, k, kinds, oversample, query_kind, restrict,
                                                     openmp):
    rng = np.random.default_rng(seed)
    store = adversarial_store(rng, n, d, kinds)
    n = len(store)
    # Labels (face ids) out of position order, so the tie rule is not the position order.
    labels = rng.permutation(n * 3)[:n].astype(np.int64)
    if query_kind == "random":
        queries = unit(rng, 4, d)
    elif query_kind == "row":  # queries that are stored rows: maximal ties at the top
        queries = store[rng.integers(0, n, 4)].copy()
    elif query_kind == "row_scaled":
        queries = store[rng.integers(0, n, 4)] * np.float32(0.01)
    else:
        queries = np.zeros((2, d), np.float32)
    # openmp: FAISS's parallel search; otherwise the single-thread scanner.
    scan = ExactScan(d, quantise_above=0, oversample=oversample, sample_rows=max(1, n // 2),
                     omp_min_queries=1 if openmp else 1000)
    scan.fit(store)
    allowed = selector = None
    if restrict:
        allowed = set(rng.choice(n, size=max(1, n // 3), replace=False).tolist())
        selector = faiss.IDSelectorBatch(np.fromiter(allowed, np.int64))
    got_s, got_p = scan.search(store, queries, k, labels=labels, selector=selector)
    want_s, want_p = brute_force(store, labels, queries, min(k, n), allowed)
    kk = min(k, n)
    assert np.array_equal(got_p[:, :kk], want_p)
    assert np.array_equal(got_s[:, :kk], want_s)  # bit-identical, not approximately equal
    assert (got_p[:, kk:] == -1).all() and np.isneginf(got_s[:, kk:]).all()  # k > N: padded


def test_the_quantisation_bound_holds_for_every_row():
    """|s_i - s~_i| <= ||q|| rho_max + ||q - q~|| nu_max, checked directly on every row."""
    rng = np.random.default_rng(7)
    store = adversarial_store(rng, 3000, 128, ["half_steps", "scaled", "duplicates"])
    scan = ExactScan(128, quantise_above=0)
    scan.fit(store)
    codes = faiss.vector_to_array(scan._index.codes).reshape(-1, 128).astype(np.int64) - 128
    queries = np.concatenate([unit(rng, 20, 128), store[:5] * np.float32(2.0)])
    a, b, q_norm, err_norm = scan._quantise_queries(queries)
    approx = (a.astype(np.int64) @ codes.T) / b[:, None]
    real = queries.astype(np.float64) @ store.astype(np.float64).T
    body = np.setdiff1d(np.arange(len(store)), scan.loose)
    bound = q_norm[:, None] * scan.rho_max + err_norm[:, None] * scan.nu_max
    assert (np.abs(real - approx)[:, body] <= bound).all()
    # The scan's integers are what FAISS returns.
    d_faiss, i_faiss = scan._index.search(a, 10)
    assert np.array_equal(d_faiss.astype(np.int64), np.take_along_axis(a.astype(np.int64) @ codes.T, i_faiss, 1))


@pytest.mark.parametrize("dim", [8, 100, 128, 512, 1040])
def test_faiss_int8_scan_is_an_exact_integer_dot_product(dim):
    check_integer_scan.cache_clear()
    check_integer_scan(dim)  # raises if not


def test_exact_scores_of_a_row_do_not_depend_on_the_other_rows():
    rng = np.random.default_rng(3)
    store, q = unit(rng, 500, 128), unit(rng, 3, 128)
    whole = exact_scores(q, store)
    picks = rng.integers(0, 500, 77)
    assert np.array_equal(exact_scores(q, store[picks]), whole[:, picks])
    per_query = exact_scores(q, np.stack([store[picks]] * 3))
    assert np.array_equal(per_query, whole[:, picks])


def test_loose_rows_are_reranked_and_do_not_widen_the_bound():
    rng = np.random.default_rng(5)
    store = unit(rng, 2000, 64)
    scan = ExactScan(64, quantise_above=0)
    scan.fit(store)
    rho_before = scan.rho_max
    spike = np.zeros((1, 64), np.float32)
    spike[0, 3] = 9.0  # far outside the fitted scale of dimension 3
    store = np.concatenate([store, spike])
    scan.append(spike, store)
    assert scan.loose.tolist() == [2000] and scan.rho_max == rho_before
    q = np.zeros((1, 64), np.float32)
    q[0, 3] = 1.0
    _, pos = scan.search(store, q, 1)
    assert pos[0, 0] == 2000


def test_removals_keep_codes_and_rows_in_step_and_growth_refits_the_scales():
    rng = np.random.default_rng(9)
    store = unit(rng, 1000, 32) * np.float32(0.1)  # small values: first scales are tight
    scan = ExactScan(32, quantise_above=0, refit_growth=2.0)
    scan.fit(store)
    first = scan.scales.copy()
    gone = np.zeros(len(store), bool)
    gone[rng.choice(len(store), 300, replace=False)] = True
    store = store[~gone]
    scan.remove(gone)
    assert scan.ntotal == len(store)
    more = unit(rng, 1500, 32)
    store = np.concatenate([store, more])
    scan.append(more, store)  # 2200 >= 2 x 1000 rows at fit: re-fitted
    assert not np.array_equal(scan.scales, first) and scan.ntotal == len(store)
    queries = unit(rng, 8, 32)
    labels = np.arange(len(store))
    got = scan.search(store, queries, 7, labels=labels)
    want = brute_force(store, labels, queries, 7)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@hsettings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.sampled_from([1, 5, 40]))
def test_face_index_exact_path_equals_brute_force_through_adds_and_removes(seed, k):
    rng = np.random.default_rng(seed)
    d = 32
    index = FaceIndex(IndexSpec("flat", d), exact_scan_above=0)
    rows: dict[int, np.ndarray] = {}
    next_id = 1
    for _ in range(6):
        n = int(rng.integers(1, 120))
        vectors = adversarial_store(rng, n, d, ["duplicates", "near_ties"])
        ids = np.arange(next_id, next_id + len(vectors))
        next_id += len(vectors)
        index.add(ids, ids % 11, vectors)
        rows.update(zip(ids.tolist(), vectors))
        victims = rng.choice(list(rows), size=len(rows) // 5, replace=False)
        index.remove(victims)
        for v in victims.tolist():
            del rows[v]
    assert index._exact is not None and index._exact.ntotal == len(rows)
    ids = np.array(sorted(rows), np.int64)
    store = np.stack([rows[i] for i in ids])
    queries = np.concatenate([unit(rng, 3, d), store[:2]])
    want_s, want_p = brute_force(store, ids, queries, min(k, len(ids)))
    for (sims, got_ids, _), ws, wp in zip(index.search_faces(queries, k), want_s, want_p):
        assert got_ids.tolist() == ids[wp].tolist()
        assert np.array_equal(sims, ws)
    persons = [2, 3]
    allowed = {i for i, face in enumerate(ids.tolist()) if face % 11 in persons}
    want_s, want_p = brute_force(store, ids, queries, min(k, max(1, len(allowed))), allowed)
    for (sims, got_ids, _), ws, wp in zip(index.search_faces(queries, k, persons=persons), want_s, want_p):
        keep = wp >= 0
        assert got_ids.tolist() == ids[wp[keep]].tolist() and np.array_equal(sims, ws[keep])


def test_the_adversarial_data_would_catch_a_missing_bound():
    """The data above has teeth: with the bound set to zero (trusting the int8 order), the
    same kind of store gives wrong answers, and with the bound it never does."""
    wrong_without, wrong_with = 0, 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        store = adversarial_store(rng, 300, 64, ["clusters", "duplicates"])
        labels = rng.permutation(len(store)).astype(np.int64)
        queries = store[rng.integers(0, len(store), 4)]
        want = brute_force(store, labels, queries, 1)[1]
        for zero_bound in (False, True):
            scan = ExactScan(64, quantise_above=0, oversample=0)
            scan.fit(store)
            if zero_bound:
                scan.rho_max = scan.nu_max = 0.0
            got = scan.search(store, queries, 1, labels=labels)[1]
            if zero_bound:
                wrong_without += not np.array_equal(got, want)
            else:
                wrong_with += not np.array_equal(got, want)
    assert wrong_with == 0 and wrong_without > 0
