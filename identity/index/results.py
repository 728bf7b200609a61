"""The live hits of a raw FAISS result block. The per-person result types they are
aggregated into live in identity.search_results, shared with the store's pgvector search.
"""

from __future__ import annotations

import numpy as np

from identity.index.persons import ABSENT


def live_top_k(
    sims: np.ndarray, ids: np.ndarray, persons: np.ndarray, k: int, keep: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per query row, the first k hits whose face is live (and in `keep` where given):
    (similarities, face ids, person ids), best first."""
    valid = (ids >= 0) & (persons != ABSENT)
    if keep is not None:
        valid &= keep
    rows = []
    for i in range(len(ids)):
        sel = np.flatnonzero(valid[i])[:k]
        rows.append((sims[i, sel], ids[i, sel], persons[i, sel]))
    return rows
