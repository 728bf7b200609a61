"""The store: the only code that speaks SQL. PostgreSQL + pgvector is the source of truth.

Every transaction that writes faces or persons first takes the change-log advisory
lock (`identity_lock_changes()`, see migrations/0001). Writers are therefore
serialised; a batch transaction lasts milliseconds, and in exchange change_log.seq is
in commit order and two writers can never deadlock on person rows and the lock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from identity.config import Settings, get_settings
from identity.errors import (
    ConflictError,
    InputError,
    ModelMismatchError,
    NotFoundError,
    StoreError,
)
from identity.store import pgcopy
from identity.store.embedded import embedded_url, redact
from identity.store.migrate import pending_url, upgrade_url
from identity.store.types import (
    AddOutcome,
    Change,
    DeleteResult,
    FacesToAdd,
    KnownFace,
    KnownImage,
    MergeResult,
    ModelInfo,
    Person,
    PersonPage,
)

_log = logging.getLogger(__name__)

CHANNEL = "identity_changes"
EmbeddingArrays = tuple[np.ndarray, np.ndarray, np.ndarray]

_PERSON_SELECT = """
SELECT p.id, p.external_id, p.display_name, p.metadata, p.created_at, p.updated_at,
       coalesce((SELECT array_agg(a.alias ORDER BY a.alias) FROM person_aliases a
                 WHERE a.person_id = p.id), '{}'),
       (SELECT count(*) FROM faces f WHERE f.person_id = p.id)
FROM persons p
"""


def _person(row: TupleRow) -> Person:
    return Person(
        id=row[0],
        external_id=row[1],
        display_name=row[2],
        metadata=dict(row[3] or {}),
        created_at=row[4],
        updated_at=row[5],
        aliases=tuple(row[6]),
        face_count=int(row[7]),
    )


def _configure(conn: psycopg.Connection) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


@dataclass(frozen=True)
class FaceRow:
    """A stored face, without its embedding (for listings)."""

    id: int
    image_id: int
    image_sha256: str
    source: str | None
    face_index: int
    box: tuple[float, float, float, float]
    det_prob: float
    quality: float
    model: str
    model_version: str
    person_id: int | None


class Store:
    """A connection pool on the configured database, and the operations on it.

    With `settings.database_url` unset, the embedded server is started (or attached
    to) and migrated on first use. With a URL, the schema must be up to date
    (`identity db upgrade`) unless `migrate=True`.
    """

    def __init__(self, settings: Settings | None = None, *, migrate: bool | None = None) -> None:
        self.settings = settings or get_settings()
        embedded = self.settings.database_url is None
        self.url = embedded_url(self.settings) if embedded else str(self.settings.database_url)
        self._probe()
        if migrate is None:
            migrate = embedded  # a server we own is ours to migrate; another is the operator's
        if migrate:
            upgrade_url(self.url)
        else:
            pending = pending_url(self.url)
            if pending:
                raise StoreError(
                    f"the database at {redact(self.url)} lacks migrations {', '.join(pending)}; "
                    "run `identity db upgrade`"
                )
        self._pool = ConnectionPool(
            self.url,
            min_size=self.settings.db_pool_min,
            max_size=max(self.settings.db_pool_max, self.settings.db_pool_min),
            kwargs={"autocommit": True},
            configure=_configure,
            open=False,
            name="identity-store",
        )
        try:
            self._pool.open(wait=True, timeout=15)
        except PoolTimeout as exc:
            raise StoreError(f"cannot open connections to PostgreSQL at {redact(self.url)}") from exc

    # --- lifecycle -------------------------------------------------------------------

    def _probe(self) -> None:
        """Connect once outside the pool: the pool would hide the reason behind a timeout."""
        try:
            psycopg.connect(self.url, connect_timeout=10).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"cannot connect to PostgreSQL at {redact(self.url)}: {reason}") from exc

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Store:  # noqa: PYI034 (Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection; unavailability becomes StoreError."""
        try:
            with self._pool.connection(timeout=30) as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreError(f"no database connection available ({redact(self.url)})") from exc
        except psycopg.OperationalError as exc:
            raise StoreError(f"database connection failed ({redact(self.url)}): {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection]:
        """A write transaction holding the change-log lock (see the module docstring)."""
        with self.connection() as conn, conn.transaction():
            conn.execute("SELECT identity_lock_changes()")
            try:
                yield conn
            except pg_errors.CheckViolation as exc:
                if "embedding dimension" in str(exc):
                    raise ModelMismatchError(str(exc).splitlines()[0]) from exc
                raise

    # --- persons ----------------------------------------------------------------------

    @staticmethod
    def _resolve(conn: psycopg.Connection, ref: int | str, *, lock: bool = False) -> int:
        """A person id from an id, an external id or an alias (in that order for strings:
        external id, alias, then digits as an id)."""
        person_id: int | None = None
        if isinstance(ref, int):
            person_id = ref
        else:
            row = conn.execute(
                "SELECT id FROM persons WHERE external_id = %s "
                "UNION ALL SELECT person_id FROM person_aliases WHERE alias = %s LIMIT 1",
                (ref, ref),
            ).fetchone()
            if row is not None:
                person_id = row[0]
            elif ref.isdigit():
                person_id = int(ref)
        if person_id is not None:
            suffix = " FOR UPDATE" if lock else ""
            row = conn.execute(f"SELECT id FROM persons WHERE id = %s{suffix}", (person_id,)).fetchone()
            if row is not None:
                return row[0]
        raise NotFoundError(f"no person {ref!r}")

    @staticmethod
    def _get(conn: psycopg.Connection, person_id: int) -> Person:
        row = conn.execute(_PERSON_SELECT + " WHERE p.id = %s", (person_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no person {person_id}")
        return _person(row)

    @staticmethod
    def _name_taken(conn: psycopg.Connection, name: str) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM persons WHERE external_id = %s "
                "UNION ALL SELECT 1 FROM person_aliases WHERE alias = %s",
                (name, name),
            ).fetchone()
            is not None
        )

    def create_person(
        self, external_id: str, display_name: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Person:
        if not external_id:
            raise InputError("a person needs a non-empty external id")
        with self._write() as conn:
            if self._name_taken(conn, external_id):
                raise ConflictError(f"person {external_id!r} already exists")
            (person_id,) = conn.execute(
                "INSERT INTO persons (external_id, display_name, metadata) VALUES (%s, %s, %s) RETURNING id",
                (external_id, display_name, json.dumps(dict(metadata or {}))),
            ).fetchone()
            return self._get(conn, person_id)

    def get_person(self, ref: int | str) -> Person:
        """By id (int), or by external id, alias, or id in digits (str). NotFoundError if none."""
        with self.connection() as conn:
            return self._get(conn, self._resolve(conn, ref))

    def persons_by_ids(self, ids: Sequence[int]) -> dict[int, Person]:
        """Several persons in one query (search results name their persons)."""
        if not ids:
            return {}
        with self.connection() as conn:
            rows = conn.execute(_PERSON_SELECT + " WHERE p.id = ANY(%s)", (list(ids),)).fetchall()
        return {row[0]: _person(row) for row in rows}

    def list_persons(self, *, limit: int = 50, after: int | None = None, query: str | None = None) -> PersonPage:
        """Persons ordered by id, `limit` at a time (keyset pagination: pass `next_after`)."""
        limit = max(1, min(limit, 10_000))
        where, params = ["p.id > %s"], [after or 0]
        if query:
            where.append("(p.external_id ILIKE %s OR p.display_name ILIKE %s)")
            params += [f"%{query}%"] * 2
        with self.connection() as conn:
            rows = conn.execute(
                _PERSON_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY p.id LIMIT %s",
                (*params, limit + 1),
            ).fetchall()
        items = tuple(_person(r) for r in rows[:limit])
        return PersonPage(items=items, next_after=items[-1].id if len(rows) > limit else None)

    def rename_person(self, ref: int | str, display_name: str | None) -> Person:
        with self._write() as conn:
            person_id = self._resolve(conn, ref, lock=True)
            conn.execute("UPDATE persons SET display_name = %s WHERE id = %s", (display_name, person_id))
            return self._get(conn, person_id)

    def set_external_id(self, ref: int | str, external_id: str) -> Person:
        """Change a person's external id; the old one stays as an alias."""
        if not external_id:
            raise InputError("a person needs a non-empty external id")
        with self._write() as conn:
            person_id = self._resolve(conn, ref, lock=True)
            (old,) = conn.execute("SELECT external_id FROM persons WHERE id = %s", (person_id,)).fetchone()
            if old == external_id:
                return self._get(conn, person_id)
            owner = conn.execute("SELECT person_id FROM person_aliases WHERE alias = %s", (external_id,)).fetchone()
            if (owner is not None and owner[0] != person_id) or conn.execute(
                "SELECT 1 FROM persons WHERE external_id = %s", (external_id,)
            ).fetchone():
                raise ConflictError(f"external id {external_id!r} belongs to another person")
            conn.execute("DELETE FROM person_aliases WHERE alias = %s", (external_id,))
            conn.execute("UPDATE persons SET external_id = %s WHERE id = %s", (external_id, person_id))
            conn.execute("INSERT INTO person_aliases (alias, person_id) VALUES (%s, %s)", (old, person_id))
            return self._get(conn, person_id)

    def update_metadata(self, ref: int | str, patch: Mapping[str, Any], *, replace: bool = False) -> Person:
        """Merge `patch` into the metadata (a None value removes the key), or replace it."""
        removed = [k for k, v in patch.items() if v is None]
        kept = {k: v for k, v in patch.items() if v is not None}
        with self._write() as conn:
            person_id = self._resolve(conn, ref, lock=True)
            base = "'{}'::jsonb" if replace else "metadata"
            conn.execute(
                f"UPDATE persons SET metadata = ({base} || %s::jsonb) - %s::text[] WHERE id = %s",
                (json.dumps(kept), removed, person_id),
            )
            return self._get(conn, person_id)

    def delete_person(self, ref: int | str) -> DeleteResult:
        """Delete a person, their faces (and so embeddings) and the images no other face
        uses, in one transaction. The faces' deletions reach the change log by trigger."""
        with self._write() as conn:
            person_id = self._resolve(conn, ref, lock=True)
            (external_id,) = conn.execute("SELECT external_id FROM persons WHERE id = %s", (person_id,)).fetchone()
            image_ids = [
                r[0] for r in conn.execute("DELETE FROM faces WHERE person_id = %s RETURNING image_id", (person_id,))
            ]
            images_deleted = 0
            if image_ids:
                images_deleted = conn.execute(
                    "DELETE FROM images i WHERE i.id = ANY(%s) "
                    "AND NOT EXISTS (SELECT 1 FROM faces f WHERE f.image_id = i.id)",
                    (sorted(set(image_ids)),),
                ).rowcount
            conn.execute("DELETE FROM persons WHERE id = %s", (person_id,))
        return DeleteResult(person_id, external_id, len(image_ids), images_deleted)

    def merge_persons(self, keep: int | str, other: int | str) -> MergeResult:
        """Move `other`'s faces and aliases to `keep`; `other`'s external id becomes an
        alias of `keep`; metadata is merged (keep's values win); `other` is deleted."""
        with self._write() as conn:
            keep_id = self._resolve(conn, keep)
            other_id = self._resolve(conn, other)
            if keep_id == other_id:
                raise ConflictError(f"cannot merge person {keep!r} with itself")
            # lock both rows in id order: the same order in every merge
            for pid in sorted((keep_id, other_id)):
                conn.execute("SELECT 1 FROM persons WHERE id = %s FOR UPDATE", (pid,))
            (other_ext, other_name, other_meta) = conn.execute(
                "SELECT external_id, display_name, metadata FROM persons WHERE id = %s", (other_id,)
            ).fetchone()
            moved = conn.execute("UPDATE faces SET person_id = %s WHERE person_id = %s", (keep_id, other_id)).rowcount
            conn.execute("UPDATE person_aliases SET person_id = %s WHERE person_id = %s", (keep_id, other_id))
            conn.execute("DELETE FROM persons WHERE id = %s", (other_id,))
            conn.execute("INSERT INTO person_aliases (alias, person_id) VALUES (%s, %s)", (other_ext, keep_id))
            conn.execute(
                "UPDATE persons SET metadata = %s::jsonb || metadata, "
                "display_name = coalesce(display_name, %s) WHERE id = %s",
                (json.dumps(other_meta or {}), other_name, keep_id),
            )
            return MergeResult(self._get(conn, keep_id), other_ext, moved)

    def person_faces(self, ref: int | str) -> list[FaceRow]:
        with self.connection() as conn:
            person_id = self._resolve(conn, ref)
            rows = conn.execute(
                "SELECT f.id, f.image_id, encode(i.sha256, 'hex'), i.source, f.face_index, f.box, "
                "f.det_prob, f.quality, f.model, f.model_version, f.person_id "
                "FROM faces f JOIN images i ON i.id = f.image_id WHERE f.person_id = %s ORDER BY f.id",
                (person_id,),
            ).fetchall()
        return [FaceRow(r[0], r[1], r[2], r[3], r[4], tuple(r[5]), r[6], r[7], r[8], r[9], r[10]) for r in rows]

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

    # --- images and faces ------------------------------------------------------------------

    def known_images(self, sha256s: Sequence[str], *, model: str | None = None) -> dict[str, KnownImage]:
        """The images already stored among `sha256s` (hex), with their faces (of `model`
        only, when given) and who they are enrolled to. Lets enrollment skip work."""
        digests = sorted({_digest(s) for s in sha256s})
        if not digests:
            return {}
        with self.connection() as conn:
            images = conn.execute(
                "SELECT id, encode(sha256, 'hex'), source, width, height FROM images WHERE sha256 = ANY(%s)",
                (digests,),
            ).fetchall()
            faces: dict[int, list[KnownFace]] = {}
            if images:
                model_filter = " AND f.model = %s" if model else ""
                params: list[Any] = [[r[0] for r in images]] + ([model] if model else [])
                for fid, image_id, index, fmodel, pid, ext in conn.execute(
                    "SELECT f.id, f.image_id, f.face_index, f.model, f.person_id, p.external_id "
                    "FROM faces f LEFT JOIN persons p ON p.id = f.person_id "
                    f"WHERE f.image_id = ANY(%s){model_filter} ORDER BY f.image_id, f.model, f.face_index",
                    params,
                ):
                    faces.setdefault(image_id, []).append(KnownFace(fid, index, fmodel, pid, ext))
        return {
            sha: KnownImage(iid, sha, source, w, h, tuple(faces.get(iid, ())))
            for iid, sha, source, w, h in images
        }

    def add_faces(self, items: Sequence[FacesToAdd], *, model: ModelInfo) -> list[AddOutcome]:
        """Write a batch of processed images and their selected faces in ONE transaction
        (persons upserted, images inserted, faces by binary COPY). Idempotent: a face
        already stored with the same (image sha256, model, face index) and person adds
        nothing; with a different person it is a conflict and nothing is written for
        that image. Returns one outcome per item, in input order."""
        _validate(items, model)
        from identity.store.batch import write_batch

        with self._write() as conn:
            self._register_model(conn, model)
            return write_batch(conn, items, model)

    @staticmethod
    def _register_model(conn: psycopg.Connection, model: ModelInfo) -> None:
        conn.execute(
            "INSERT INTO models (name, dim) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
            (model.name, model.dim),
        )
        (dim,) = conn.execute("SELECT dim FROM models WHERE name = %s", (model.name,)).fetchone()
        if dim != model.dim:
            raise ModelMismatchError(
                f"model {model.name!r} is registered with dimension {dim}, not {model.dim}"
            )

    def model_dim(self, model: str) -> int | None:
        with self.connection() as conn:
            row = conn.execute("SELECT dim FROM models WHERE name = %s", (model,)).fetchone()
        return None if row is None else row[0]

    # --- what the search index uses (docs/ARCHITECTURE.md) ------------------------------

    def watermark(self, model: str | None = None) -> int:
        """The largest committed change_log.seq (0 when empty)."""
        with self.connection() as conn:
            return _watermark(conn, model)

    def changes_since(self, seq: int, model: str, *, limit: int = 10_000) -> list[Change]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT seq, op, face_id, person_id FROM change_log WHERE model = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (model, seq, limit),
            ).fetchall()
        return [Change(*r) for r in rows]

    def iter_embeddings(self, model: str, *, batch_rows: int = 65536) -> Iterator[EmbeddingArrays]:
        """All faces of `model` as (ids int64, person_ids int64 with -1 = none, vectors
        float32 n×dim) batches, streamed by binary COPY."""
        dim = self.model_dim(model)
        if dim is None:
            return
        with self.connection() as conn:
            yield from _copy_embeddings(conn, model, dim, batch_rows)

    def snapshot_embeddings(
        self, model: str, *, batch_rows: int = 65536
    ) -> tuple[int, Iterator[EmbeddingArrays]]:
        """(watermark, batches) read from one REPEATABLE READ snapshot: replaying
        changes_since(watermark) on top gives exactly the current state."""
        batches = self._snapshot(model, batch_rows)
        watermark = next(batches)
        assert isinstance(watermark, int)
        return watermark, batches  # type: ignore[return-value]

    def _snapshot(self, model: str, batch_rows: int) -> Iterator[Any]:
        with self.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT dim FROM models WHERE name = %s", (model,)).fetchone()
            yield _watermark(conn, model)
            if row is not None:
                yield from _copy_embeddings(conn, model, row[0], batch_rows)

    def fetch_embeddings(self, face_ids: Sequence[int], model: str) -> EmbeddingArrays:
        """The faces among `face_ids` that still exist (in id order)."""
        dim = self.model_dim(model)
        ids = sorted({int(i) for i in face_ids})
        if dim is None or not ids:
            return _empty(dim or 0)
        with self.connection() as conn:
            parts = list(_copy_embeddings(conn, model, dim, 1 << 30, ids))
        if not parts:
            return _empty(dim)
        return tuple(np.concatenate(x) for x in zip(*parts))  # type: ignore[return-value]

    def listen(self, channel: str = CHANNEL) -> psycopg.Connection:
        """A dedicated connection LISTENing on `channel` (the caller closes it). Read with
        `conn.notifies(timeout=...)`; each payload is the last seq of a committed statement."""
        try:
            conn = psycopg.connect(self.url, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {redact(self.url)}: {exc}") from exc
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return conn

    # --- export --------------------------------------------------------------------------

    def export(self, out_dir: str | Path):
        """Persons, faces and embeddings as Parquet + manifest.json (see identity.store.export)."""
        from identity.store.export import export

        return export(self, Path(out_dir))


def _digest(sha256_hex: str) -> bytes:
    try:
        digest = bytes.fromhex(sha256_hex)
    except (ValueError, TypeError) as exc:
        raise InputError(f"not a hex sha256: {sha256_hex!r}") from exc
    if len(digest) != 32:
        raise InputError(f"not a sha256 (32 bytes): {sha256_hex!r}")
    return digest


def _validate(items: Sequence[FacesToAdd], model: ModelInfo) -> None:
    for item in items:
        image = item.image
        if not image.ok or image.sha256 is None:
            raise InputError("cannot store an unreadable image", path=image.source)
        _digest(image.sha256)
        for index in item.selected():
            if not 0 <= index < len(image.faces):
                raise InputError(f"face index {index} out of range ({len(image.faces)} faces)", path=image.source)
            got = np.asarray(image.faces[index].embedding).shape
            if got != (model.dim,):
                raise ModelMismatchError(
                    f"embedding shape {got} does not match model {model.name!r} (dimension {model.dim})",
                    path=image.source,
                )


def _watermark(conn: psycopg.Connection, model: str | None) -> int:
    if model is None:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM change_log").fetchone()
    else:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM change_log WHERE model = %s", (model,)).fetchone()
    return int(row[0])


def _empty(dim: int) -> EmbeddingArrays:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim), np.float32)


def _copy_embeddings(
    conn: psycopg.Connection, model: str, dim: int, batch_rows: int, ids: list[int] | None = None
) -> Iterator[EmbeddingArrays]:
    query = "SELECT id, coalesce(person_id, -1), embedding FROM faces WHERE model = {model}"
    params: dict[str, Any] = {"model": model}
    if ids is not None:
        query += " AND id = ANY({ids})"
        params["ids"] = ids
    if ids is not None:  # small: the caller wants id order; a full scan stays unsorted
        query += " ORDER BY id"
    statement = sql.SQL("COPY (" + query + ") TO STDOUT (FORMAT BINARY)").format(
        **{k: sql.Literal(v) for k, v in params.items()}
    )
    with conn.cursor().copy(statement) as copy:
        yield from pgcopy.decode_embedding_stream(copy, dim, batch_rows)
