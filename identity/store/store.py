"""The store: the only code that speaks SQL. PostgreSQL + pgvector is the source of truth.

`Store` is the one object callers hold. Its operations live with the tables they touch:

    core.py      the pool, write transactions, opening and closing
    persons.py   persons and their aliases
    faces.py     images, faces, models, and the embeddings read back
    changes.py   the change log the search index follows
    corrections.py  moving, assigning, removing faces; splits; undoing merges; history
    audit.py     the person audit log every person operation appends to
    chips.py     face chips
    moves.py     moving the store to another embedding model (model_moves, face_embeddings)

`Store.open(settings)` reaches the database, checks or applies migrations and opens the
pool; `Store(url)` alone only remembers where the database is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from identity.store.changes import ChangesMixin
from identity.store.chips import ChipsMixin
from identity.store.corrections import CorrectionsMixin
from identity.store.faces import FacesMixin
from identity.store.moves import MovesMixin
from identity.store.persons import PersonsMixin
from identity.store.types import ExportResult


class Store(PersonsMixin, FacesMixin, ChangesMixin, CorrectionsMixin, ChipsMixin, MovesMixin):
    """A connection pool on the configured database, and the operations on it."""

    def counts(self) -> dict[str, Any]:
        """Totals for status displays: persons, images, faces per model."""
        with self.connection() as conn:
            persons = conn.execute("SELECT count(*) FROM persons").fetchone()[0]
            images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
            # Per model, its faces' vectors: a face's own (faces) and, during a model
            # move, the target's (face_embeddings): face_vectors shows both.
            models = conn.execute(
                "SELECT m.name, m.dim, (SELECT count(*) FROM face_vectors v WHERE v.model = m.name) "
                "FROM models m ORDER BY m.name"
            ).fetchall()
        return {
            "persons": persons,
            "images": images,
            "faces": {name: {"dim": dim, "faces": n} for name, dim, n in models},
        }

    def export(self, out_dir: str | Path) -> ExportResult:
        """Persons, faces and embeddings as Parquet + manifest.json (see identity.store.export)."""
        from identity.store.export import export  # pyarrow: only when exporting

        return export(self, Path(out_dir))
