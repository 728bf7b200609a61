"""Index snapshots mapped from their file (index.mmap_snapshot): searched in place, shared
by the processes that map them, and never written into: changes go to a tail beside the
mapped base (tests/test_index_tail.py). FAISS aborts the process on a write into a mapped
index, so the changes run in a child process: a regression fails this test instead of
killing the session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from identity.index.face_index import FaceIndex
from identity.index.snapshot import load_snapshot, write_snapshot
from identity.index.spec import IndexSpec

HERE = Path(__file__).resolve().parent


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _index(kind: str) -> FaceIndex:
    # Graph kinds at a breadth beyond the data: after a re-embedding the private index
    # rebuilds its graph and the mapped one keeps its base graph, so only exhaustive
    # searches can be compared for equality.
    spec = (IndexSpec(kind, 64, hnsw_m=16, ef_search=4096, rerank_factor=64) if kind.startswith("hnsw")
            else IndexSpec(kind, 64))
    index = FaceIndex(spec)
    index.train(_vectors(3000, 0))
    ids = np.arange(1, 3001, dtype=np.int64)
    index.add(ids, ids % 97, _vectors(3000, 0))
    return index


def _load(directory: Path, mmap: bool) -> FaceIndex:
    loaded = load_snapshot(directory, model="m", model_version="v", dim=64, db_watermark=10, mmap=mmap)
    assert loaded is not None
    return loaded[0]


def _mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def _answers(index: FaceIndex, queries: np.ndarray) -> list:
    return [[(int(i), int(p)) for _, i, p in zip(*hit)] for hit in
            (index.search_faces(q[None, :], 10)[0] for q in queries)]


def scenario(directory: str, kind: str) -> None:
    """In a child process: a mapped index takes changes, keeps mapping its file, and
    answers as an unmapped one that took the same changes."""
    mapped, plain = _load(Path(directory), True), _load(Path(directory), False)
    assert mapped.mapped and not plain.mapped
    queries = _vectors(20, 5)
    assert _answers(mapped, queries) == _answers(plain, queries)
    new_ids = np.arange(5001, 5101, dtype=np.int64)
    for index in (mapped, plain):
        index.upsert(new_ids, np.full(100, 7), _vectors(100, 6))
        index.remove(np.arange(1, 400, dtype=np.int64))
        index.upsert(np.array([500], np.int64), np.array([3]), _vectors(1, 7))  # a changed vector
    assert mapped.mapped and mapped.shared and mapped.tail_rows == 101  # 100 new, 1 changed
    assert str(mapped.source) in _mapped_files()
    assert _answers(mapped, queries) == _answers(plain, queries)
    assert _answers(mapped, _vectors(100, 6)[:5])[0][0][0] == 5001
    print("ok")


@pytest.mark.parametrize("kind", ["hnsw", "hnsw-sq8", "flat"])
def test_a_mapped_snapshot_is_searched_from_the_file_and_changes_go_beside_it(tmp_path, kind):
    write_snapshot(tmp_path, _index(kind), model="m", model_version="v", watermark=10)
    faiss_file = next(tmp_path.glob("faces-*.faiss"))

    mapped, plain = _load(tmp_path, True), _load(tmp_path, False)
    assert mapped.mapped and not plain.mapped
    assert str(faiss_file) in _mapped_files()  # the file itself, not a copy in this process
    queries = _vectors(20, 5)
    assert _answers(mapped, queries) == _answers(plain, queries)
    del mapped

    child = subprocess.run([sys.executable, "-c", f"import test_index_mmap as t; t.scenario({str(tmp_path)!r}, {kind!r})"],
                           cwd=HERE, check=False, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0 and child.stdout.strip().endswith("ok"), child.stdout[-2000:] + child.stderr[-3000:]


def test_mmap_false_reads_a_private_copy(tmp_path):
    write_snapshot(tmp_path, _index("hnsw"), model="m", model_version="v", watermark=10)
    index = _load(tmp_path, False)
    assert not index.mapped and not index.shared
    assert str(next(tmp_path.glob("faces-*.faiss"))) not in _mapped_files()
