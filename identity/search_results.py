"""Search results, aggregated per person.

A query's top-k *faces* are grouped by person: a person's score is the best similarity
among their faces, and `faces` counts how many of their faces among the top-k reach
the threshold (several matching photos are stronger evidence than one, and callers may
rank or gate on it). Persons under the threshold are not returned; a query with no
person at or above it is *unknown*.

Both searches produce these: the FAISS mirror (identity.index) and pgvector
(identity.store.vector_search), which answers while the mirror is not ready. The module
sits below both so that neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The store's encoding of a face assigned to nobody (`coalesce(person_id, -1)`), which
# every embedding array read from it carries.
NO_PERSON = -1


@dataclass(frozen=True)
class FaceHit:
    face_id: int
    person_id: int | None  # None: a face not assigned to any person
    similarity: float


@dataclass(frozen=True)
class PersonMatch:
    person_id: int | None  # None only when unassigned faces were asked for (then one per face)
    similarity: float  # best similarity among this person's faces in the top-k
    face_id: int  # the face that gave it
    faces: int  # this person's faces among the top-k at or above the threshold


@dataclass(frozen=True)
class QueryResult:
    matches: tuple[PersonMatch, ...]  # at or above the threshold, best first
    nearest: FaceHit | None  # the most similar live face, even under the threshold
    threshold: float

    @property
    def known(self) -> bool:
        return bool(self.matches)

    @property
    def best(self) -> PersonMatch | None:
        return self.matches[0] if self.matches else None


def aggregate(
    sims: np.ndarray,
    ids: np.ndarray,
    persons: np.ndarray,
    threshold: float,
    *,
    include_unassigned: bool = False,
) -> QueryResult:
    """One query's live top-k faces (best first) → per-person result."""
    best: dict[int, list] = {}  # key → [similarity, face_id, count at/above threshold]
    nearest = None
    for sim, face_id, person in zip(sims.tolist(), ids.tolist(), persons.tolist()):
        if nearest is None:
            nearest = FaceHit(face_id, None if person == NO_PERSON else person, sim)
        if person == NO_PERSON:
            if not include_unassigned:
                continue
            key = -1 - face_id  # each unassigned face is its own candidate
        else:
            key = person
        entry = best.get(key)
        if entry is None:
            entry = best[key] = [sim, face_id, 0]
        if sim >= threshold:
            entry[2] += 1
    matches = [
        PersonMatch(None if key < 0 else key, sim, face_id, count)
        for key, (sim, face_id, count) in best.items()
        if sim >= threshold
    ]
    # Hits arrive best first and dicts keep insertion order, so this sort is stable on ties.
    matches.sort(key=lambda m: -m.similarity)
    return QueryResult(tuple(matches), nearest, threshold)
