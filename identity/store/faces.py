"""What was seen: the `images`, `faces` and `models` tables, and the embeddings read back
from them (by the search index, clustering and export).

Embeddings are read by binary `COPY (SELECT id, coalesce(person_id, -1), embedding …)`
and parsed with one `np.frombuffer` per batch: no Python object per row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from identity.errors import InputError, ModelMismatchError
from identity.store import pgcopy
from identity.store.batch import write_batch
from identity.store.changes import read_watermark
from identity.store.core import StoreCore
from identity.store.jobs import lock_active
from identity.store.moves import refuse_retired
from identity.store.persons import resolve_person
from identity.store.types import AddOutcome, FaceRow, FacesToAdd, KnownFace, KnownImage, ModelInfo

# (face ids int64, person ids int64 with -1 = none, vectors float32 n×dim)
EmbeddingArrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def copy_embeddings(
    conn: psycopg.Connection,
    model: str,
    dim: int,
    *,
    batch_rows: int = 65536,
    face_ids: list[int] | None = None,
) -> Iterator[EmbeddingArrays]:
    """`model`'s faces (only `face_ids`, when given) as batches of at most `batch_rows`,
    read on the caller's connection, so within the caller's transaction and snapshot."""
    # face_vectors: a face's own vector (faces) and, during a model move, the target
    # model's (face_embeddings); `model = ...` is pushed into both arms (migrations/0005).
    query = "SELECT face_id, coalesce(person_id, -1), embedding FROM face_vectors WHERE model = {model}"
    params: dict[str, Any] = {"model": model}
    if face_ids is not None:
        # Small: the caller wants id order. A full scan stays unsorted (a sort of a
        # million 512-byte rows would spill to disk).
        query += " AND face_id = ANY({ids}) ORDER BY face_id"
        params["ids"] = face_ids
    statement = sql.SQL("COPY (" + query + ") TO STDOUT (FORMAT BINARY)").format(
        **{k: sql.Literal(v) for k, v in params.items()}
    )
    with conn.cursor().copy(statement) as copy:
        yield from pgcopy.decode_embedding_stream(copy, dim, batch_rows)


def _empty(dim: int) -> EmbeddingArrays:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim), np.float32)


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


def _register_model(conn: psycopg.Connection, model: ModelInfo) -> None:
    conn.execute(
        "INSERT INTO models (name, dim) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (model.name, model.dim),
    )
    (dim,) = conn.execute("SELECT dim FROM models WHERE name = %s", (model.name,)).fetchone()
    if dim != model.dim:
        raise ModelMismatchError(f"model {model.name!r} is registered with dimension {dim}, not {model.dim}")


class FacesMixin(StoreCore):
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
                # Of `model`: its own vector, or one a model move gave it (face_embeddings).
                model_filter = (" AND (f.model = %s OR EXISTS (SELECT 1 FROM face_embeddings e "
                                "WHERE e.face_id = f.id AND e.model = %s))") if model else ""
                params: list[Any] = [[r[0] for r in images]] + ([model, model] if model else [])
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

    def add_faces(self, items: Sequence[FacesToAdd], *, model: ModelInfo,
                  job_id: str | None = None) -> list[AddOutcome]:
        """Write a batch of processed images and their selected faces in ONE transaction
        (persons upserted, images inserted, faces by binary COPY). Idempotent: a face
        already stored with the same (image sha256, model, face index) and person adds
        nothing; with a different person it is a conflict and nothing is written for
        that image. Returns one outcome per item, in input order. With `job_id`, nothing
        is written unless that job is still queued or running (`JobEndedError`)."""
        _validate(items, model)
        with self._write() as conn:
            if job_id is not None:
                lock_active(conn, job_id)
            refuse_retired(conn, model.name)
            _register_model(conn, model)
            return write_batch(conn, items, model)

    def person_faces(self, ref: int | str) -> list[FaceRow]:
        with self.connection() as conn:
            person_id = resolve_person(conn, ref)
            rows = conn.execute(
                "SELECT f.id, f.image_id, encode(i.sha256, 'hex'), i.source, f.face_index, f.box, "
                "f.det_prob, f.quality, f.model, f.model_version, f.person_id "
                "FROM faces f JOIN images i ON i.id = f.image_id WHERE f.person_id = %s ORDER BY f.id",
                (person_id,),
            ).fetchall()
        return [FaceRow(r[0], r[1], r[2], r[3], r[4], tuple(r[5]), r[6], r[7], r[8], r[9], r[10]) for r in rows]

    def model_dim(self, model: str) -> int | None:
        with self.connection() as conn:
            row = conn.execute("SELECT dim FROM models WHERE name = %s", (model,)).fetchone()
        return None if row is None else row[0]

    def iter_embeddings(self, model: str, *, batch_rows: int = 65536) -> Iterator[EmbeddingArrays]:
        """All faces of `model` as (ids int64, person_ids int64 with -1 = none, vectors
        float32 n×dim) batches, streamed by binary COPY."""
        dim = self.model_dim(model)
        if dim is None:
            return
        with self.connection() as conn:
            yield from copy_embeddings(conn, model, dim, batch_rows=batch_rows)

    def embedding_count(self, model: str) -> int:
        """How many faces have a vector of `model` (its own, or a move's target vector)."""
        with self.connection() as conn:
            return int(conn.execute("SELECT count(*) FROM face_vectors WHERE model = %s", (model,)).fetchone()[0])

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
        # One generator, so the watermark and the batches share the transaction: the
        # first item is the watermark, the rest are the batches.
        with self.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT dim FROM models WHERE name = %s", (model,)).fetchone()
            yield read_watermark(conn, model)
            if row is not None:
                yield from copy_embeddings(conn, model, row[0], batch_rows=batch_rows)

    def fetch_embeddings(self, face_ids: Sequence[int], model: str) -> EmbeddingArrays:
        """The faces among `face_ids` that still exist (in id order)."""
        dim = self.model_dim(model)
        ids = sorted({int(i) for i in face_ids})
        if dim is None or not ids:
            return _empty(dim or 0)
        with self.connection() as conn:
            parts = list(copy_embeddings(conn, model, dim, batch_rows=1 << 30, face_ids=ids))
        if not parts:
            return _empty(dim)
        return tuple(np.concatenate(x) for x in zip(*parts))  # type: ignore[return-value]
