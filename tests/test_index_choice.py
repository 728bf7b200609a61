"""Why an index was chosen travels with it (build, snapshot, status), and the compressed
index with re-ranking from a memory-mapped row file (identity/index/rerank.py)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from benchmarks.synthetic import FaceLikeGenerator
from identity.config import Settings
from identity.index.mirror import IndexMirror, build_index
from identity.index.rerank import RerankedIndex, open_rows
from identity.index.snapshot import load_snapshot, snapshot_dir, write_snapshot
from identity.store.types import ModelInfo

MODEL = ModelInfo("facenet-choice-test", "v1", 32)


def _batches(n: int, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    yield np.arange(1, n + 1), np.arange(n) % 7, x


class _Store:
    """What IndexMirror.status asks of the store."""

    def watermark(self, model=None) -> int:
        return 42


def test_the_chosen_index_says_why_through_build_snapshot_and_status(tmp_path):
    settings = Settings(data_dir=tmp_path, index_exact_max=1000, index_use_gpu=False)
    index = build_index(_batches(300), settings.index, 32)
    assert index.spec.kind == "flat" and index.choice.reason.startswith("exact: 300 faces × 32-d")
    directory = snapshot_dir(tmp_path, MODEL.name)
    write_snapshot(directory, index, model=MODEL.name, model_version="v1", watermark=42)
    loaded, _ = load_snapshot(directory, model=MODEL.name, model_version="v1", dim=32, db_watermark=42)
    assert loaded.choice == index.choice

    mirror = IndexMirror.from_settings(_Store(), settings, MODEL)
    mirror._publish(loaded, 42)
    status = mirror.status().to_dict()
    assert status["chosen_because"] == index.choice.reason
    assert status["memory_estimate_mb"] > 0 and status["memory_budget_mb"] > status["memory_estimate_mb"]

    bigger = build_index(_batches(1500), settings.index, 32)
    assert bigger.spec.kind == "hnsw-sq8" and "> index_exact_max 1,000" in bigger.choice.reason


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw-sq8"])
def test_given_the_expected_count_a_build_streams_straight_into_the_chosen_index(kind):
    """No flat staging copy (which at 10M × 512-d would be 20 GB of float32 rows): the kind
    is chosen for the expected count, trained on the first rows, then filled."""
    settings = Settings(index_type=kind, index_nlist=16, index_use_gpu=False)
    gen = FaceLikeGenerator.calibrated(32, seed=4)
    vectors, labels = gen.faces(300, (2, 6))
    ids = np.arange(len(vectors), dtype=np.int64) + 1
    batches = ((ids[i:i + 100], labels[i:i + 100], vectors[i:i + 100]) for i in range(0, len(ids), 100))

    index = build_index(batches, settings.index, 32, expected=len(ids))
    assert index.spec.kind == kind and f"at {len(ids):,} faces" in index.choice.reason
    assert index.count == len(ids) and sorted(index.physical_ids().tolist()) == ids.tolist()
    probes = np.arange(0, labels.max(), 5)
    found = [r.known and r.best.person_id == p for r, p in
             zip(index.search(gen.new_faces(probes), k=10, threshold=0.4), probes)]
    assert np.mean(found) >= 0.9


def test_a_build_whose_counted_faces_are_gone_is_an_empty_exact_index_that_takes_later_faces():
    settings = Settings(index_type="ivfpq", index_nlist=16, index_use_gpu=False)
    index = build_index(iter(()), settings.index, 32, expected=5000)
    assert index.spec.kind == "flat" and index.count == 0
    vectors, labels = FaceLikeGenerator.calibrated(32, seed=5).faces(10, (2, 3))
    assert index.add(np.arange(len(vectors)) + 1, labels, vectors) == len(vectors)


def test_a_compressed_index_reranked_from_a_memory_mapped_file(tmp_path):
    gen = FaceLikeGenerator.calibrated(64, seed=2)
    vectors, labels = gen.faces(2000, (2, 6))
    path = tmp_path / "rows.f32"
    vectors.tofile(path)
    rows = open_rows(path, 64)
    assert isinstance(rows, np.memmap) and rows.shape == vectors.shape
    # 4-bit codes: as coarse as PQ for this purpose and no PQ k-means to train in a test.
    coarse = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(64), 64, 32, faiss.ScalarQuantizer.QT_4bit,
                                           faiss.METRIC_INNER_PRODUCT)
    coarse.train(vectors)
    coarse.add(vectors)
    index = RerankedIndex(coarse, rows, rerank=100, params=faiss.SearchParametersIVF(nprobe=32))
    probes = np.arange(0, 2000, 9)
    queries = gen.new_faces(probes)
    scores, positions = index.search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(p) & set(t)) / 10 for p, t in zip(positions.tolist(), truth.tolist())])
    assert recall >= 0.95  # every list probed: only the codes' order was coarse, re-ranking fixes it
    assert np.all(np.diff(scores, axis=1) <= 0)  # exact scores, best first
    assert np.mean(labels[positions[:, 0]] == probes) >= 0.95
