"""Face id → person id, for millions of faces, with vectorised lookup.

A Python dict costs ~100 bytes per entry (1 GB at 10M faces); two sorted int64 arrays
cost 16 bytes per entry and look up a whole (n×k) result block with one searchsorted.
Changes since the last compaction sit in a small dict overlay, merged into the arrays
when it grows past a fraction of them, so each change is O(1) amortised.

Lookup answers: the person id, `NO_PERSON` (-1) for a face not assigned to anyone,
or `ABSENT` (-2) for an id that is not (or no longer) a live face — which is how
search results drop tombstoned faces still physically inside an index.
"""

from __future__ import annotations

import numpy as np

from identity.search_results import NO_PERSON as NO_PERSON

ABSENT = -2


class PersonMap:
    def __init__(self, ids: np.ndarray | None = None, persons: np.ndarray | None = None) -> None:
        ids = np.zeros(0, np.int64) if ids is None else np.asarray(ids, np.int64)
        persons = np.zeros(0, np.int64) if persons is None else np.asarray(persons, np.int64)
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        self._persons = persons[order]
        if len(self._ids) > 1 and np.any(self._ids[1:] == self._ids[:-1]):
            raise ValueError("duplicate face ids")
        self._overlay: dict[int, int] = {}  # face id → person id, or ABSENT for a removal
        self._count = len(self._ids)

    def __len__(self) -> int:
        return self._count

    # --- changes ----------------------------------------------------------------------

    def set(self, face_id: int, person_id: int) -> None:
        """Insert a face, or re-assign it to another person."""
        if self.get(face_id) == ABSENT:
            self._count += 1
        self._overlay[int(face_id)] = int(person_id)
        self._maybe_compact()

    def remove(self, face_id: int) -> bool:
        """Remove a face; False when it was not present."""
        if self.get(face_id) == ABSENT:
            return False
        self._overlay[int(face_id)] = ABSENT
        self._count -= 1
        self._maybe_compact()
        return True

    def extend(self, ids: np.ndarray, persons: np.ndarray) -> None:
        """Bulk insert of faces known to be new (the initial build)."""
        ids = np.asarray(ids, np.int64)
        self.compact()
        persons = np.asarray(persons, np.int64)
        if len(ids) and np.all(ids[1:] > ids[:-1]) and (not len(self._ids) or ids[0] > self._ids[-1]):
            # The store streams faces in id order: appending keeps the arrays sorted.
            self._ids = np.concatenate([self._ids, ids])
            self._persons = np.concatenate([self._persons, persons])
            self._count = len(self._ids)
            return
        merged_ids = np.concatenate([self._ids, ids])
        merged_persons = np.concatenate([self._persons, persons])
        order = np.argsort(merged_ids, kind="stable")
        self._ids, self._persons = merged_ids[order], merged_persons[order]
        self._count = len(self._ids)

    # --- lookup -----------------------------------------------------------------------

    def get(self, face_id: int) -> int:
        hit = self._overlay.get(int(face_id))
        if hit is not None:
            return hit
        pos = int(np.searchsorted(self._ids, face_id))
        if pos < len(self._ids) and self._ids[pos] == face_id:
            return int(self._persons[pos])
        return ABSENT

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Person ids for an array of face ids (any shape); ABSENT where not present.
        FAISS's -1 ("no result") maps to ABSENT too."""
        flat = np.asarray(ids, np.int64).ravel()
        out = np.full(flat.shape, ABSENT, np.int64)
        if len(self._ids):
            pos = np.searchsorted(self._ids, flat)
            pos[pos == len(self._ids)] = 0
            found = self._ids[pos] == flat
            out[found] = self._persons[pos[found]]
        if self._overlay:
            # A single query's k ids: dict probes are cheaper than sorting the overlay.
            if len(flat) < 4096:
                get = self._overlay.get
                for i, face_id in enumerate(flat.tolist()):
                    hit = get(face_id)
                    if hit is not None:
                        out[i] = hit
            else:
                keys = np.fromiter(self._overlay.keys(), np.int64, len(self._overlay))
                for i in np.flatnonzero(np.isin(flat, keys)):
                    out[i] = self._overlay[int(flat[i])]
        return out.reshape(np.shape(ids))

    def faces_of(self, person_ids: np.ndarray) -> np.ndarray:
        """All live face ids assigned to any of the given persons."""
        self.compact()
        return self._ids[np.isin(self._persons, np.asarray(person_ids, np.int64))]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(face ids sorted, person ids): the compacted content, e.g. for a snapshot."""
        self.compact()
        return self._ids, self._persons

    # --- maintenance ------------------------------------------------------------------

    def _maybe_compact(self) -> None:
        if len(self._overlay) > max(4096, len(self._ids) // 16):
            self.compact()

    def compact(self) -> None:
        if not self._overlay:
            return
        keys = np.fromiter(self._overlay.keys(), np.int64, len(self._overlay))
        values = np.fromiter(self._overlay.values(), np.int64, len(self._overlay))
        keep = ~np.isin(self._ids, keys)
        live = values != ABSENT
        ids = np.concatenate([self._ids[keep], keys[live]])
        persons = np.concatenate([self._persons[keep], values[live]])
        order = np.argsort(ids, kind="stable")
        self._ids, self._persons = ids[order], persons[order]
        self._overlay.clear()
        self._count = len(self._ids)
