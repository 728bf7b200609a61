"""FAISS mirror of the store's embeddings: build, sync from the change log, snapshot, search.

Public entry points: `IndexMirror` (mirror.py) for the service; `FaceIndex` (face_index.py)
for an in-memory index fed directly; `choose_spec` / `IndexSpec` (spec.py) for the
index parameters; result types in identity.search_results.
"""

from identity.index.face_index import FaceIndex
from identity.index.mirror import IndexMirror, IndexStatus, build_index, search_any
from identity.index.spec import IndexSpec, choose_spec
from identity.search_results import FaceHit, PersonMatch, QueryResult

__all__ = [
    "FaceHit",
    "FaceIndex",
    "IndexMirror",
    "IndexSpec",
    "IndexStatus",
    "PersonMatch",
    "QueryResult",
    "build_index",
    "choose_spec",
    "search_any",
]
