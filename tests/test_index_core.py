"""The in-memory FAISS index: exactness, deletes, per-person results, snapshots, parameters.
No database here (see test_index_mirror.py for the PostgreSQL-backed mirror)."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from benchmarks.synthetic import FaceLikeGenerator, SimilarityTarget, calibrate, measure
from identity.config import IndexSettings, Settings
from identity.errors import ModelMismatchError
from identity.index.face_index import FaceIndex
from identity.index.persons import ABSENT, NO_PERSON, PersonMap
from identity.index.snapshot import load_snapshot, snapshot_dir, write_snapshot
from identity.index.spec import (
    IndexSpec,
    choose,
    choose_spec,
    default_ef_search,
    default_nlist,
    default_pq_m,
    index_bytes,
)

DIM = 32


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(db: dict[int, tuple[int, np.ndarray]], queries: np.ndarray, k: int, persons=None):
    """Reference: top-k (face id, similarity) by exhaustive numpy scan of the live rows."""
    ids = np.array([i for i, (p, _) in db.items() if persons is None or p in persons], np.int64)
    if len(ids) == 0:
        return [[] for _ in queries]
    vectors = np.stack([db[i][1] for i in ids])
    sims = queries @ vectors.T
    out = []
    for row in sims:
        order = np.lexsort((ids, -row))[:k]
        out.append([(int(ids[j]), float(row[j])) for j in order])
    return out


def assert_same_topk(got, want) -> None:
    """Same similarities in the same order; ids equal except where similarities tie."""
    for (g_sims, g_ids, _), w in zip(got, want):
        assert len(g_ids) == len(w)
        np.testing.assert_allclose(g_sims, [s for _, s in w], atol=1e-5)
        assert set(g_ids.tolist()) == {i for i, _ in w} or np.ptp(g_sims) < 1e-5 or _ties_only(g_sims, g_ids, w)


def _ties_only(g_sims, g_ids, w) -> bool:
    differing = set(g_ids.tolist()) ^ {i for i, _ in w}
    last = w[-1][1]
    return all(abs(dict(w).get(i, last) - last) < 1e-5 for i in differing)


# --- exactness under enrolls / deletes / re-assignments (property) ---------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 40), st.integers(0, 6)),  # n faces, person
        st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 15)),  # seed, n
        st.tuples(st.just("move"), st.integers(0, 10_000), st.integers(-1, 6)),  # seed, new person
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "hnsw-sq8"])
@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops, seed=st.integers(0, 2**16))
def test_exact_results_equal_brute_force_after_any_sequence_of_changes(kind, sequence, seed):
    """With a search breadth covering these small indexes, the graph kinds answer as a full
    scan does; hnsw-sq8 because every candidate it returns is re-scored from its float32 row."""
    rng = np.random.default_rng(seed)
    index = FaceIndex(IndexSpec(kind, DIM, ef_search=512, rerank_factor=64))
    index.train(unit(rng, 256))
    db: dict[int, tuple[int, np.ndarray]] = {}
    next_id = 1
    for op, a, b in sequence:
        if op == "add":
            ids = np.arange(next_id, next_id + a)
            vectors = unit(rng, a)
            index.add(ids, np.full(a, b), vectors)
            db.update({int(i): (b, v) for i, v in zip(ids, vectors)})
            next_id += a
        elif op == "delete" and db:
            victims = np.random.default_rng(a).choice(list(db), size=min(b, len(db)), replace=False)
            assert index.remove(victims) == len(victims)
            for v in victims.tolist():
                del db[v]
        elif op == "move" and db:
            face = int(np.random.default_rng(a).choice(list(db)))
            assert index.reassign(face, b)
            db[face] = (b, db[face][1])
    assert index.count == len(db)
    queries = unit(rng, 5)
    for k in (1, 7):
        assert_same_topk(index.search_faces(queries, k), brute_force(db, queries, k))
    assert_same_topk(index.search_faces(queries, 5, persons=[1, 2]), brute_force(db, queries, 5, {1, 2}))


# --- per-person semantics ----------------------------------------------------------------


def test_results_are_aggregated_per_person_with_best_similarity_and_face_count():
    q = np.eye(DIM, dtype=np.float32)[:1]
    # Person 7: three faces close to the query; person 8: one closer face; person 9: far.
    vectors = np.stack(
        [
            _at(q[0], 0.90, 1), _at(q[0], 0.80, 2), _at(q[0], 0.75, 3),
            _at(q[0], 0.95, 4),
            _at(q[0], 0.30, 5),
        ]
    )
    index = FaceIndex(IndexSpec("flat", DIM))
    index.add(np.array([1, 2, 3, 4, 5]), np.array([7, 7, 7, 8, 9]), vectors)

    (result,) = index.search(q, k=5, threshold=0.78)

    assert [m.person_id for m in result.matches] == [8, 7]  # 9 is under the threshold
    assert result.best.similarity == pytest.approx(0.95, abs=1e-5)
    seven = result.matches[1]
    assert (seven.face_id, seven.faces) == (1, 2)  # 0.90 and 0.80 reach 0.78, 0.75 does not
    assert seven.similarity == pytest.approx(0.90, abs=1e-5)
    assert result.known


def test_a_query_under_the_threshold_is_unknown_but_reports_its_nearest_face():
    rng = np.random.default_rng(0)
    index = FaceIndex(IndexSpec("flat", DIM))
    index.add(np.arange(10), np.arange(10), unit(rng, 10))
    (result,) = index.search(unit(rng, 1), k=3, threshold=0.99)
    assert not result.known and result.best is None
    assert result.nearest is not None and result.nearest.similarity < 0.99


def test_unassigned_faces_are_skipped_unless_asked_for():
    q = np.eye(DIM, dtype=np.float32)[:1]
    index = FaceIndex(IndexSpec("flat", DIM))
    index.add(np.array([1, 2]), np.array([NO_PERSON, 5]), np.stack([_at(q[0], 0.9, 1), _at(q[0], 0.8, 2)]))
    (plain,) = index.search(q, 2, 0.5)
    (wide,) = index.search(q, 2, 0.5, include_unassigned=True)
    assert [m.person_id for m in plain.matches] == [5]
    assert [(m.person_id, m.face_id) for m in wide.matches] == [(None, 1), (5, 2)]


def test_batch_search_answers_each_query_as_a_single_search_would():
    rng = np.random.default_rng(1)
    index = FaceIndex(IndexSpec("flat", DIM))
    index.add(np.arange(200), np.arange(200) // 4, unit(rng, 200))
    queries = unit(rng, 8)
    batch = index.search(queries, 5, 0.2)
    assert batch == [index.search(q[None], 5, 0.2)[0] for q in queries]


def test_an_empty_index_answers_unknown():
    index = FaceIndex(IndexSpec("flat", DIM))
    assert [r.known for r in index.search(unit(np.random.default_rng(0), 3), 5, 0.0)] == [False] * 3


def test_queries_of_the_wrong_dimension_are_refused():
    index = FaceIndex(IndexSpec("flat", DIM))
    with pytest.raises(ModelMismatchError):
        index.search(np.zeros((1, DIM + 1), np.float32), 5, 0.5)


def _at(axis: np.ndarray, similarity: float, salt: int) -> np.ndarray:
    """A unit vector whose inner product with the unit vector `axis` is `similarity`."""
    other = np.zeros_like(axis)
    other[salt % (len(axis) - 1) + 1] = 1.0
    return (similarity * axis + np.sqrt(1 - similarity**2) * other).astype(np.float32)


# --- approximate indexes, deletes and tombstones ------------------------------------


@pytest.fixture(scope="module")
def faces():
    gen = FaceLikeGenerator.calibrated(64, seed=3)
    vectors, labels = gen.faces(1500, (2, 6))
    return gen, vectors, labels


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw", "hnsw-sq8"])
def test_approximate_indexes_find_the_identity_of_a_new_face(faces, kind):
    gen, vectors, labels = faces
    spec = choose_spec(Settings(index_type=kind, index_nlist=64, index_nprobe=16).index, len(vectors), 64)
    index = FaceIndex(spec)
    index.train(vectors)
    index.add(np.arange(len(vectors)) + 1, labels, vectors)
    probes = np.arange(0, 1500, 7)
    results = index.search(gen.new_faces(probes), k=10, threshold=0.4)
    found = np.mean([r.known and r.best.person_id == p for r, p in zip(results, probes)])
    assert found >= 0.9


@pytest.mark.parametrize("kind", ["hnsw", "hnsw-sq8"])
def test_hnsw_deletes_are_tombstones_never_returned_and_compacted_past_the_limit(faces, kind):
    _, vectors, labels = faces
    ids = np.arange(len(vectors)) + 1
    index = FaceIndex(IndexSpec(kind, 64, hnsw_m=16, ef_search=128))
    index.train(vectors)
    index.add(ids, labels, vectors)
    victims = ids[: len(ids) // 20]  # 5%: under the compaction limit
    index.remove(victims)
    assert index.tombstones == len(victims) and not index.needs_compaction
    # Querying with the deleted vectors themselves: their own ids would rank first.
    hits = index.search_faces(vectors[: len(victims)], 10)
    assert all(len(i) == 10 and not np.isin(i, victims).any() for _, i, _ in hits)
    index.remove(ids[len(ids) // 20 : len(ids) // 5])
    assert index.needs_compaction
    index.compact()
    assert index.tombstones == 0 and index.cpu_index.ntotal == index.count == len(ids) - len(ids) // 5


@pytest.mark.parametrize("kind", ["hnsw", "hnsw-sq8"])
def test_hnsw_update_with_a_new_vector_replaces_the_old_one(faces, kind):
    _, vectors, labels = faces
    index = FaceIndex(IndexSpec(kind, 64, hnsw_m=16))
    index.train(vectors)
    index.add(np.arange(100) + 1, labels[:100], vectors[:100])
    index.upsert(np.array([5]), np.array([999]), vectors[500:501])
    (_, ids, persons), = index.search_faces(vectors[500:501], 1)
    assert (ids[0], persons[0]) == (5, 999)
    (_, ids, _), = index.search_faces(vectors[4:5], 2)
    assert 5 not in ids.tolist()


# --- parameters ----------------------------------------------------------------------


def test_default_index_type_follows_the_size_and_memory_rule():
    s = Settings(index_exact_max=1000)
    assert choose_spec(s.index, 1000, 128).kind == "flat"
    graph = choose(s.index, 1001, 128, gpu=False)  # recall >= 0.95 under a millisecond
    assert graph.spec.kind == "hnsw-sq8" and "8-bit codes with exact re-ranking" in graph.reason
    assert choose(s.index, 1001, 128, gpu=True).spec.kind == "ivf"  # faiss has no GPU HNSW
    assert choose(s.index, 10_000_000, 128, gpu=False).spec.kind in ("ivf", "ivfpq")  # HNSW build time
    big = choose(s.index, 1_000_000, 128, gpu=True).spec
    assert (big.nlist, big.nprobe) == (4096, 64)
    assert default_nlist(100_000) == 1024 and default_pq_m(128) == 32 and default_pq_m(100) == 25
    assert choose_spec(Settings(index_type="ivf", index_nlist=10, index_nprobe=99).index, 5, 8).nprobe == 10
    assert default_ef_search(100_000) == 32 and 96 <= default_ef_search(1_000_000) <= 112
    assert default_ef_search(100_000, "hnsw-sq8") == 16 and default_ef_search(1_000_000, "hnsw-sq8") == 32
    assert choose_spec(s.index, 1_000_000, 128).ef_search == 32  # what the auto choice (hnsw-sq8) searches with
    tuned = choose_spec(Settings(index_type="hnsw-sq8", index_ef_construction=100, index_rerank_factor=6).index, 10, 8)
    assert (tuned.ef_construction, tuned.rerank_factor) == (100, 6)
    index = FaceIndex(tuned)
    built = faiss.downcast_index(index.cpu_index.index)
    assert built.k_factor == 6 and faiss.downcast_index(built.base_index).hnsw.efConstruction == 100


def _budget(settings: Settings, mb: int) -> IndexSettings:
    return settings.replace(index_memory_budget_mb=mb).index


def test_the_memory_budget_moves_the_choice_and_the_reason_says_why():
    s = Settings(index_exact_max=2_000_000)
    exact = choose(_budget(s, 8192), 1_000_000, 128, gpu=False)
    assert exact.spec.kind == "flat" and "exact" in exact.reason and "8.00 GiB" in exact.reason
    assert exact.memory_bytes == index_bytes("flat", 1_000_000, 128) <= exact.budget_bytes
    # 1M × 512-d: exact (~2.5 GiB), HNSW (~2.3 GiB) and IVF-Flat (~2 GiB) are all over a
    # 1 GiB budget: IVF-PQ with the most sub-quantizers that fit.
    tight = choose(_budget(s, 1024), 1_000_000, 512, gpu=False)
    assert tight.spec.kind == "ivfpq" and tight.memory_bytes <= tight.budget_bytes
    assert "over the memory budget" in tight.reason and "IVF-PQ" in tight.reason
    assert 512 % tight.spec.pq_m == 0 and tight.spec.pq_m <= 128
    roomy = choose(_budget(s, 64 * 1024), 3_000_000, 128, gpu=False)
    assert roomy.spec.kind == "hnsw-sq8" and "index_exact_max" in roomy.reason
    assert roomy.memory_bytes == index_bytes("hnsw", 3_000_000, 128) + 3_000_000 * 128  # + the codes
    asked = choose(_budget(Settings(index_type="hnsw"), 10), 1_000_000, 128)
    assert asked.spec.kind == "hnsw" and "asked for" in asked.reason and "over" in asked.reason


def test_person_map_overlay_and_compaction_agree():
    m = PersonMap(np.array([5, 1, 3]), np.array([50, 10, 30]))
    m.set(7, 70)
    m.set(3, 31)
    assert m.remove(1) and not m.remove(1)
    expected = [ABSENT, 31, 50, 70, ABSENT]
    assert m.lookup(np.array([1, 3, 5, 7, -1])).tolist() == expected
    m.compact()
    assert m.lookup(np.array([1, 3, 5, 7, -1])).tolist() == expected and len(m) == 3


# --- snapshots -------------------------------------------------------------------------


def _filled(kind: str, n: int = 400, seed: int = 0) -> tuple[FaceIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = unit(rng, n)
    index = FaceIndex(IndexSpec(kind, DIM, nlist=8, nprobe=8, pq_m=8))
    index.train(vectors)
    index.add(np.arange(n) + 10, np.arange(n) % 37, vectors)
    index.remove(np.arange(10, 30))
    return index, unit(rng, 6)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw", "hnsw-sq8"])
def test_a_snapshot_answers_exactly_as_the_index_it_was_taken_from(tmp_path, kind):
    index, queries = _filled(kind)
    write_snapshot(tmp_path, index, model="m", model_version="1", watermark=42)
    loaded, meta = load_snapshot(tmp_path, model="m", model_version="1", dim=DIM, db_watermark=42)
    assert meta.watermark == 42 and loaded.count == index.count == 380
    assert loaded.tombstones == index.tombstones
    assert loaded.search(queries, 5, 0.1) == index.search(queries, 5, 0.1)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"model": "other"}, "model"),
        ({"model_version": "2"}, "version"),
        ({"dim": DIM * 2}, "dimension"),
        ({"db_watermark": 41}, "ahead of the database"),
    ],
)
def test_a_snapshot_that_does_not_fit_the_database_is_refused_with_the_reason(tmp_path, caplog, change, reason):
    index, _ = _filled("flat")
    write_snapshot(tmp_path, index, model="m", model_version="1", watermark=42)
    expected = {"model": "m", "model_version": "1", "dim": DIM, "db_watermark": 42} | change
    with caplog.at_level(logging.WARNING):
        assert load_snapshot(tmp_path, **expected) is None
    assert "discarded" in caplog.text and reason in caplog.text


def test_a_newer_snapshot_replaces_the_older_and_leaves_no_stray_files(tmp_path):
    index, queries = _filled("flat")
    write_snapshot(tmp_path, index, model="m", model_version="1", watermark=1)
    index.remove(np.arange(30, 60))
    write_snapshot(tmp_path, index, model="m", model_version="1", watermark=2)
    (tmp_path / ".CURRENT.json.dead").write_text("{")  # a crash mid-write leaves only this
    loaded, meta = load_snapshot(tmp_path, model="m", model_version="1", dim=DIM, db_watermark=2)
    assert meta.watermark == 2 and loaded.count == 350
    assert sorted(p.suffix for p in tmp_path.iterdir() if not p.name.startswith(".")) == [".faiss", ".json", ".npz"]


def test_a_snapshot_with_a_corrupt_index_file_is_refused(tmp_path, caplog):
    index, _ = _filled("flat")
    meta = write_snapshot(tmp_path, index, model="m", model_version="1", watermark=1)
    (tmp_path / meta.faiss_file).write_bytes(b"garbage")
    assert load_snapshot(tmp_path, model="m", model_version="1", dim=DIM, db_watermark=1) is None
    assert "cannot be read" in caplog.text


def test_snapshot_directory_is_per_model_and_safe_for_any_name(tmp_path):
    assert snapshot_dir(tmp_path, "facenet/../x 1") == tmp_path / "index" / "facenet_.._x_1"


# --- the synthetic benchmark data ---------------------------------------------------


@pytest.mark.slow  # generates large synthetic sets
@pytest.mark.parametrize("dim", [128, 512])
def test_synthetic_faces_reproduce_the_target_similarity_distributions(dim):
    target = SimilarityTarget(0.65, 0.11, 0.03, 0.08)
    gen = FaceLikeGenerator(dim, calibrate(dim, target, seed=1), seed=1)
    vectors, labels = gen.faces(3000, 4)
    got = measure(vectors, labels, seed=5)
    assert got.same_mean == pytest.approx(target.same_mean, abs=0.02)
    assert got.same_std == pytest.approx(target.same_std, abs=0.02)
    assert got.diff_mean == pytest.approx(target.diff_mean, abs=0.01)
    assert got.diff_std == pytest.approx(target.diff_std, abs=0.01)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
