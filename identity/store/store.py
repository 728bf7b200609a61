"""The store: the only code that speaks SQL. PostgreSQL + pgvector is the source of truth.

`Store` is the one object callers hold. Its operations live with the tables they touch:

    core.py      the pool, write transactions, opening and closing
    persons.py   persons and their aliases
    faces.py     images, faces, models, and the embeddings read back
    changes.py   the change log the search index follows
    corrections.py  moving, assigning, removing faces; splits; undoing merges; history
    audit.py     the person audit log every person operation appends to
    chips.py     face chips

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
from identity.store.persons import PersonsMixin
from identity.store.types import ExportResult


class Store(PersonsMixin, FacesMixin, ChangesMixin, CorrectionsMixin, ChipsMixin):
    """A connection pool on the configured database, and the operations on it."""

    def counts(self) -> dict[str, Any]:
        """Totals for status displays: persons, images, faces per model."""
        with self.connection() as conn:
            persons = conn.execute("SELECT count(*) FROM persons").fetchone()[0]
            images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
            models = conn.execute(
                "SELECT m.name, m.dim, count(f.id) FROM models m LEFT JOIN faces f ON f.model = m.name "
                "GROUP BY m.name, m.dim ORDER BY m.name"
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
