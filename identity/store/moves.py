"""Moving the store from one embedding model to another (`model_moves`, `face_embeddings`,
migrations/0005): the record of each move, the faces still lacking a vector of the target
model, the target vectors written beside the source's, the switch and the finalization.

Face ids never change. While a move runs, each face keeps its own vector (`faces`) and
gains one of the target model in `face_embeddings`; the `face_vectors` view shows both, one
row per (face, model), and everything that reads vectors of a model (the FAISS mirror,
the SQL fallback, export) reads that view. Search answers with the model the store
*serves* (`serving_model`): a move's source until the move is switched, its target after.
See docs/ARCHITECTURE.md, "Moving to another model".
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
import psycopg

from identity.errors import ModelMismatchError, ModelMoveError
from identity.store.core import StoreCore
from identity.store.types import ModelInfo

OPEN_STATES = ("running", "switched")
_MOVE_COLUMNS = ("id, source, target, target_version, state, faces_total, from_chips, from_photos, failed, "
                 "runs, started_at, updated_at, switched_at, finalized_at")


@dataclass(frozen=True)
class ModelMove:
    id: int
    source: str
    target: str
    target_version: str
    state: str  # running | switched | finalized | abandoned
    faces_total: int  # faces of the source when last counted
    from_chips: int  # target vectors computed from a face chip
    from_photos: int  # ... from the source photo (no chip)
    failed: int  # faces of the last run with neither a chip nor a readable photo
    runs: int  # how many times `migrate` started on this move (1 + resumes)
    started_at: datetime
    updated_at: datetime
    switched_at: datetime | None
    finalized_at: datetime | None

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("started_at", "updated_at", "switched_at", "finalized_at"):
            out[key] = None if out[key] is None else out[key].isoformat()
        return out


@dataclass(frozen=True)
class FaceSource:
    """What a face's target vector is computed from: its chip, else its photo."""

    face_id: int
    box: tuple[float, ...]  # full-resolution photo pixels
    landmarks: tuple[float, ...]  # 10 values, full-resolution photo pixels
    chip_size: int | None
    chip_landmarks: tuple[float, ...] | None  # 10 values, chip pixels
    chip_region: tuple[float, ...] | None  # (x, y, side) of the chip in photo pixels
    chip_jpeg: bytes | None
    image_source: str | None
    image_sha256: str


def _move(row) -> ModelMove:
    return ModelMove(*row)


def _move_by_id(conn: psycopg.Connection, move_id: int, *, lock: bool = False) -> ModelMove:
    row = conn.execute(f"SELECT {_MOVE_COLUMNS} FROM model_moves WHERE id = %s"
                       + (" FOR UPDATE" if lock else ""), (move_id,)).fetchone()
    if row is None:
        raise ModelMoveError(f"no model move {move_id}")
    return _move(row)


def serving(conn: psycopg.Connection, model: str,
            *, adoptable: Collection[str] = ()) -> tuple[str, ModelMove | None]:
    """The model that serves in place of `model`: `model` itself unless a move from it was
    switched (or finalized), then that move's target, followed move after move.

    `adoptable` (given when `model` is only the default: nobody chose it): a store that
    holds no face of `model` and faces of exactly one other model, one of these, serves that
    one (moves followed from there). A new default applies to new stores, and `identity
    models migrate` moves an existing one; otherwise its faces would silently drop out of
    every search."""
    if adoptable and not _holds(conn, model):
        own = conn.execute("SELECT name FROM models m WHERE EXISTS "
                           "(SELECT 1 FROM faces f WHERE f.model = m.name) LIMIT 2").fetchall()
        if len(own) == 1 and own[0][0] in adoptable:
            model = own[0][0]
    seen = {model}
    last = None
    while True:
        row = conn.execute(
            f"SELECT {_MOVE_COLUMNS} FROM model_moves WHERE source = %s AND state IN ('switched', 'finalized') "
            "ORDER BY id DESC LIMIT 1", (model,)).fetchone()
        if row is None:
            return model, last
        last = _move(row)
        if last.target in seen:  # a move back (A -> B -> A): the latest one decides
            return last.target, last
        model = last.target
        seen.add(model)


def _holds(conn: psycopg.Connection, model: str) -> bool:
    """Whether faces are of `model`, or a move left it (the store served it). A move to
    `model` that has not switched does not count: until it does, its source serves."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM faces WHERE model = %s) "
        "OR EXISTS (SELECT 1 FROM model_moves WHERE source = %s)", (model, model)).fetchone()[0]


def refuse_retired(conn: psycopg.Connection, model: str) -> None:
    """Writing faces of a model a finalized move left is refused: they would never get a
    vector of the model that serves (and search would not see them)."""
    row = conn.execute("SELECT id, target FROM model_moves WHERE source = %s AND state = 'finalized' "
                       "AND NOT EXISTS (SELECT 1 FROM model_moves b WHERE b.target = %s AND b.id > model_moves.id "
                       "AND b.state IN ('switched', 'finalized')) ORDER BY id DESC LIMIT 1",
                       (model, model)).fetchone()
    if row is not None:
        raise ModelMismatchError(
            f"model {model!r} was retired by model move {row[0]} to {row[1]!r}; this process embeds with "
            f"the old model: set IDENTITY_MODEL={row[1]} (or [pipeline] model) and restart it")


class MovesMixin(StoreCore):
    def model_moves(self, *, open_only: bool = False) -> list[ModelMove]:
        where = " WHERE state IN ('running', 'switched')" if open_only else ""
        with self.connection() as conn:
            rows = conn.execute(f"SELECT {_MOVE_COLUMNS} FROM model_moves{where} ORDER BY id").fetchall()
        return [_move(r) for r in rows]

    def model_move(self, move_id: int) -> ModelMove:
        with self.connection() as conn:
            return _move_by_id(conn, move_id)

    def open_move(self) -> ModelMove | None:
        moves = self.model_moves(open_only=True)
        return moves[0] if moves else None

    def serving_model(self, model: str, *, adoptable: Collection[str] = ()) -> tuple[str, ModelMove | None]:
        """(model that serves in place of `model`, the move that made it so or None); with
        `adoptable`, the store's own model when it holds none of `model` (`serving`)."""
        with self.connection() as conn:
            return serving(conn, model, adoptable=adoptable)

    def begin_move(self, source: str, target: ModelInfo) -> tuple[ModelMove, bool]:
        """The open move from `source` to `target`, or a new one. (move, resumed). A move
        to another target, or from another source, that is still open is a conflict."""
        if source == target.name:
            raise ModelMoveError(f"the store already serves {source!r}")
        with self._write() as conn:
            row = conn.execute(f"SELECT {_MOVE_COLUMNS} FROM model_moves WHERE state IN ('running', 'switched') "
                               "FOR UPDATE").fetchone()
            if row is not None:
                move = _move(row)
                if (move.source, move.target) != (source, target.name):
                    raise ModelMoveError(
                        f"model move {move.id} from {move.source!r} to {move.target!r} is {move.state}; "
                        "finalize or abandon it first (`identity models migrate --finalize` / `--abandon`)")
                if move.target_version != target.version:
                    raise ModelMoveError(f"model move {move.id} computes {target.name} version "
                                         f"{move.target_version}, not {target.version}")
                conn.execute("UPDATE model_moves SET runs = runs + 1, updated_at = now() WHERE id = %s", (move.id,))
                return _move_by_id(conn, move.id), True
            known = conn.execute("SELECT dim FROM models WHERE name = %s", (source,)).fetchone()
            if known is None:
                raise ModelMoveError(f"the store has no faces of {source!r} to move")
            conn.execute("INSERT INTO models (name, dim) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                         (target.name, target.dim))
            (dim,) = conn.execute("SELECT dim FROM models WHERE name = %s", (target.name,)).fetchone()
            if dim != target.dim:
                raise ModelMismatchError(f"model {target.name!r} is registered with dimension {dim}, not {target.dim}")
            if conn.execute("SELECT 1 FROM faces WHERE model = %s LIMIT 1", (target.name,)).fetchone():
                raise ModelMoveError(f"the store already holds faces of {target.name!r} of their own; "
                                     "a move needs a target model no face was enrolled with")
            (move_id,) = conn.execute(
                "INSERT INTO model_moves (source, target, target_version, runs, faces_total) "
                "VALUES (%s, %s, %s, 1, (SELECT count(*) FROM faces WHERE model = %s)) RETURNING id",
                (source, target.name, target.version, source)).fetchone()
            return _move_by_id(conn, move_id), False

    def faces_to_move(self, move: ModelMove, *, after: int = 0, limit: int = 64,
                      skip: Sequence[int] = ()) -> list[FaceSource]:
        """The next faces (by id, after `after`) of the move's source that have no vector
        of its target, with their chip (when they have one) and their photo's address."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT f.id, f.box, f.landmarks, c.size, c.landmarks, c.region, c.jpeg, i.source, "
                "       encode(i.sha256, 'hex') "
                "FROM faces f JOIN images i ON i.id = f.image_id LEFT JOIN face_chips c ON c.face_id = f.id "
                "WHERE f.model = %s AND f.id > %s AND NOT (f.id = ANY(%s)) AND NOT EXISTS "
                "  (SELECT 1 FROM face_embeddings e WHERE e.model = %s AND e.face_id = f.id) "
                "ORDER BY f.id LIMIT %s",
                (move.source, after, list(skip), move.target, limit)).fetchall()
        return [FaceSource(r[0], tuple(r[1]), tuple(r[2]), r[3], None if r[4] is None else tuple(r[4]),
                           None if r[5] is None else tuple(r[5]), None if r[6] is None else bytes(r[6]),
                           r[7], r[8]) for r in rows]

    def add_move_embeddings(self, move: ModelMove, face_ids: Sequence[int], vectors: np.ndarray, *,
                            from_chips: int = 0, from_photos: int = 0) -> int:
        """Target vectors for faces, in one transaction with the move's counters. A face
        that has one already (a resumed run redoing its last batch) or was deleted
        meanwhile is passed over. Returns how many were written."""
        if len(face_ids) != len(vectors):
            raise ValueError("one vector per face")
        if not len(face_ids):
            return 0
        with self._write() as conn:
            current = _move_by_id(conn, move.id, lock=True)
            if current.state not in OPEN_STATES:
                raise ModelMoveError(f"model move {move.id} is {current.state}")
            written = conn.execute(
                "INSERT INTO face_embeddings (face_id, model, model_version, embedding) "
                "SELECT t.face_id, %s, %s, t.embedding "
                "FROM unnest(%s::bigint[], %s::vector[]) AS t(face_id, embedding) "
                "WHERE EXISTS (SELECT 1 FROM faces f WHERE f.id = t.face_id AND f.model = %s) "
                "ON CONFLICT (model, face_id) DO NOTHING",
                (move.target, move.target_version, [int(i) for i in face_ids],
                 [np.asarray(v, np.float32) for v in vectors], move.source)).rowcount
            conn.execute("UPDATE model_moves SET from_chips = from_chips + %s, from_photos = from_photos + %s, "
                         "updated_at = now() WHERE id = %s", (from_chips, from_photos, move.id))
        return written

    def record_move_run(self, move: ModelMove, *, failed: int) -> ModelMove:
        """End of a pass: the faces that could not be embedded, and the source's count."""
        with self._write() as conn:
            conn.execute("UPDATE model_moves SET failed = %s, updated_at = now(), "
                         "faces_total = (SELECT count(*) FROM faces WHERE model = %s) WHERE id = %s",
                         (failed, move.source, move.id))
            return _move_by_id(conn, move.id)

    def move_progress(self, move: ModelMove) -> dict[str, int]:
        """{'faces': faces of the source, 'done': those with a target vector,
        'target_faces': target vectors in all (faces enrolled with the target after a switch too)}."""
        with self.connection() as conn:
            faces, done = conn.execute(
                "SELECT count(*), count(e.face_id) FROM faces f LEFT JOIN face_embeddings e "
                "ON e.face_id = f.id AND e.model = %s WHERE f.model = %s", (move.target, move.source)).fetchone()
            (target_faces,) = conn.execute("SELECT count(*) FROM face_vectors WHERE model = %s",
                                           (move.target,)).fetchone()
        return {"faces": faces, "done": done, "missing": faces - done, "target_faces": target_faces}

    def switch_move(self, move: ModelMove) -> ModelMove | list[int]:
        """Make the target the served model, atomically: in one transaction holding the
        change-log lock (no face can be written meanwhile), check that every face of the
        source has a target vector and mark the move switched. Returns the switched move,
        or the ids of faces still missing one (enrolled since the last pass): embed them
        and call again."""
        with self._write() as conn:
            current = _move_by_id(conn, move.id, lock=True)
            if current.state == "switched":
                return current
            if current.state != "running":
                raise ModelMoveError(f"model move {move.id} is {current.state}")
            missing = [r[0] for r in conn.execute(
                "SELECT f.id FROM faces f WHERE f.model = %s AND NOT EXISTS "
                "(SELECT 1 FROM face_embeddings e WHERE e.model = %s AND e.face_id = f.id) ORDER BY f.id LIMIT 1000",
                (move.source, move.target)).fetchall()]
            if missing:
                return missing
            conn.execute("UPDATE model_moves SET state = 'switched', switched_at = now(), updated_at = now(), "
                         "failed = 0 WHERE id = %s", (move.id,))
            return _move_by_id(conn, move.id)

    def finalize_move(self, move: ModelMove, *, batch: int = 5000) -> ModelMove | list[int]:
        """Drop the source vectors of a switched move: each face's target vector is
        promoted into `faces` (same face id; model, version and embedding replaced) in
        batches of `batch` faces, each batch one transaction (the face is in the target's
        view before and after, so a mirror of the target sees only 'update's). Returns the
        finalized move, or the ids of faces of the source still without a target vector
        (written after the switch by a process that had not switched yet)."""
        with self.connection() as conn:
            current = _move_by_id(conn, move.id)
        if current.state == "finalized":
            return current
        if current.state != "switched":
            raise ModelMoveError(f"model move {move.id} is {current.state}: only a switched move can be finalized")
        while True:
            with self._write() as conn:
                ids = [r[0] for r in conn.execute(
                    "SELECT f.id FROM faces f JOIN face_embeddings e ON e.face_id = f.id AND e.model = %s "
                    "WHERE f.model = %s ORDER BY f.id LIMIT %s", (move.target, move.source, batch)).fetchall()]
                if not ids:
                    break
                conn.execute(
                    "UPDATE faces f SET model = e.model, model_version = e.model_version, embedding = e.embedding "
                    "FROM face_embeddings e WHERE e.face_id = f.id AND e.model = %s AND f.id = ANY(%s)",
                    (move.target, ids))
                conn.execute("DELETE FROM face_embeddings WHERE model = %s AND face_id = ANY(%s)", (move.target, ids))
        with self._write() as conn:
            _move_by_id(conn, move.id, lock=True)
            missing = [r[0] for r in conn.execute(
                "SELECT id FROM faces WHERE model = %s ORDER BY id LIMIT 1000", (move.source,)).fetchall()]
            if missing:
                return missing
            # Vectors of the source a face no longer has (a move that went A -> B -> A).
            conn.execute("DELETE FROM face_embeddings WHERE model = %s", (move.source,))
            conn.execute("UPDATE model_moves SET state = 'finalized', finalized_at = now(), updated_at = now() "
                         "WHERE id = %s", (move.id,))
            return _move_by_id(conn, move.id)

    def abandon_move(self, move: ModelMove) -> ModelMove:
        """Give up a running move: its target vectors are deleted (search never used them)."""
        with self._write() as conn:
            current = _move_by_id(conn, move.id, lock=True)
            if current.state != "running":
                raise ModelMoveError(f"model move {move.id} is {current.state}: only a running move can be "
                                     "abandoned (a switched one is already served)")
            conn.execute("DELETE FROM face_embeddings WHERE model = %s", (move.target,))
            conn.execute("UPDATE model_moves SET state = 'abandoned', updated_at = now() WHERE id = %s", (move.id,))
            return _move_by_id(conn, move.id)
