"""Corrections to who is who: move, assign, unassign and remove faces, split a person,
undo a merge; and the faces and audit history a curator reads to decide them.

Every correction is one write transaction (holding the change-log lock, see core.py)
that also appends its audit entry (audit.py). Faces change person by UPDATE, so the
change-log trigger logs each as an `update` and the FAISS mirror follows; removed faces
are deleted, logged as `delete`, and their chips go with them (ON DELETE CASCADE).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from identity import names
from identity.errors import ConflictError, InputError, NotFoundError
from identity.store.audit import read_entry, read_page, record, refuse_taken
from identity.store.core import StoreCore
from identity.store.persons import resolve_person
from identity.store.types import (
    AuditEntry,
    AuditPage,
    ChipInfo,
    FaceInfo,
    FacePage,
    MoveResult,
    RemoveResult,
    SplitResult,
    UnmergeResult,
)

# One correction touches at most this many faces: a curator's selection, not a migration.
MAX_FACES = 100_000

_FACE_SELECT = """
SELECT f.id, f.person_id, p.external_id, f.image_id, encode(i.sha256, 'hex'), i.source, f.face_index,
       f.box, f.landmarks, f.det_prob, f.quality, f.model, f.created_at,
       c.size, c.landmarks, c.region, octet_length(c.jpeg)
FROM faces f JOIN images i ON i.id = f.image_id
LEFT JOIN persons p ON p.id = f.person_id
LEFT JOIN face_chips c ON c.face_id = f.id
"""


def _points(values) -> tuple[tuple[float, float], ...]:
    flat = [float(v) for v in values]
    return tuple(zip(flat[0::2], flat[1::2]))


def chip_info(size, landmarks, region, nbytes) -> ChipInfo | None:
    if size is None:
        return None
    return ChipInfo(size=int(size), landmarks=_points(landmarks),
                    region=tuple(float(v) for v in region), bytes=int(nbytes))  # type: ignore[arg-type]


def _face(row: TupleRow) -> FaceInfo:
    return FaceInfo(
        id=row[0], person_id=row[1], external_id=row[2], image_id=row[3], image_sha256=row[4],
        source=row[5], face_index=row[6], box=tuple(float(v) for v in row[7]), landmarks=_points(row[8]),
        det_prob=float(row[9]), quality=float(row[10]), model=row[11], created_at=row[12],
        chip=chip_info(*row[13:17]),
    )


def face_ids_of(values: Iterable[int]) -> list[int]:
    ids = sorted({int(v) for v in values})
    if not ids:
        raise InputError("name at least one face id")
    if len(ids) > MAX_FACES:
        raise InputError(f"at most {MAX_FACES:,} faces per correction (got {len(ids):,})")
    if ids[0] < 1 or ids[-1] >= 2**63:
        raise NotFoundError(f"no face {ids[0] if ids[0] < 1 else ids[-1]}")
    return ids


def _lock_faces(conn: psycopg.Connection, ids: list[int]) -> dict[int, int | None]:
    """face id -> person id, rows locked (in id order, as every correction locks them);
    NotFoundError naming the faces that do not exist."""
    rows = conn.execute(
        "SELECT id, person_id FROM faces WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,)
    ).fetchall()
    found = dict(rows)
    missing = [i for i in ids if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise NotFoundError(f"no face {shown}" if len(missing) == 1 else f"no faces {shown}")
    return found


def _external_id(conn: psycopg.Connection, person_id: int) -> str:
    return conn.execute("SELECT external_id FROM persons WHERE id = %s", (person_id,)).fetchone()[0]


class CorrectionsMixin(StoreCore):
    # --- reading ----------------------------------------------------------------------------

    def face(self, face_id: int) -> FaceInfo:
        if not 0 < int(face_id) < 2**63:
            raise NotFoundError(f"no face {face_id}")
        with self.connection() as conn:
            row = conn.execute(_FACE_SELECT + " WHERE f.id = %s", (int(face_id),)).fetchone()
        if row is None:
            raise NotFoundError(f"no face {face_id}")
        return _face(row)

    def list_faces(self, *, person: int | str | None = None, unassigned: bool = False,
                   limit: int = 100, after: int | None = None) -> FacePage:
        """Faces in id order, `limit` at a time (keyset: pass `next_after`): a person's, the
        unassigned ones, or all."""
        if person is not None and unassigned:
            raise InputError("ask for a person's faces or for the unassigned ones, not both")
        limit = max(1, min(limit, 10_000))
        where, params = ["f.id > %s"], [after or 0]
        with self.connection() as conn:
            if person is not None:
                where.append("f.person_id = %s")
                params.append(resolve_person(conn, person))
            elif unassigned:
                where.append("f.person_id IS NULL")
            rows = conn.execute(_FACE_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY f.id LIMIT %s",
                                (*params, limit + 1)).fetchall()
        items = tuple(_face(r) for r in rows[:limit])
        return FacePage(items, items[-1].id if len(rows) > limit else None)

    def audit_entry(self, entry_id: int) -> AuditEntry:
        if not 0 < int(entry_id) < 2**63:
            raise NotFoundError(f"no audit entry {entry_id}")
        with self.connection() as conn:
            found = read_entry(conn, int(entry_id))
        if found is None:
            raise NotFoundError(f"no audit entry {entry_id}")
        return found

    def audit_log(self, *, limit: int = 50, before: int | None = None, action: str | None = None) -> AuditPage:
        """Every person operation, newest first."""
        where, params = ([], []) if action is None else (["action = %s"], [action])
        with self.connection() as conn:
            return read_page(conn, where, params, limit=limit, before=before)

    def person_history(self, ref: int | str, *, limit: int = 50, before: int | None = None) -> AuditPage:
        """What happened to a person, newest first: their own entries and those of every
        person merged into them (a merge not undone). A deleted person's history is found
        by their last external id (or id) too."""
        with self.connection() as conn:
            try:
                person_id = resolve_person(conn, ref)
            except NotFoundError:
                person_id = self._gone(conn, ref)
            ids = [r[0] for r in conn.execute(
                "WITH RECURSIVE ids(id) AS (SELECT %s::bigint UNION "
                "  SELECT (a.details->>'other_id')::bigint FROM person_audit a JOIN ids ON a.person_id = ids.id "
                "  WHERE a.action = 'merge' AND a.undone_by IS NULL) SELECT id FROM ids",
                (person_id,),
            )]
            return read_page(conn, ["persons && %s::bigint[]"], [ids], limit=limit, before=before)

    @staticmethod
    def _gone(conn: psycopg.Connection, ref: int | str) -> int:
        row = conn.execute(
            "SELECT person_id FROM person_audit WHERE external_id = %s AND person_id IS NOT NULL "
            "ORDER BY id DESC LIMIT 1", (str(ref),)).fetchone()
        if row is None and (isinstance(ref, int) or str(ref).isdigit()) and int(ref) < 2**63:
            row = conn.execute("SELECT %s::bigint FROM person_audit WHERE persons @> ARRAY[%s::bigint] LIMIT 1",
                               (int(ref), int(ref))).fetchone()
        if row is None:
            raise NotFoundError(f"no person {ref!r}, and no history under that name")
        return row[0]

    # --- corrections ---------------------------------------------------------------------------

    def move_faces(self, face_ids: Iterable[int], to: int | str, *, actor: str | None = None,
                   only_unassigned: bool = False) -> MoveResult:
        """Give the faces to person `to`. With `only_unassigned` (assign), a face that
        already belongs to someone else is a conflict and nothing moves."""
        ids = face_ids_of(face_ids)
        with self._write() as conn:
            owners = _lock_faces(conn, ids)
            target = resolve_person(conn, to, lock=True)
            if only_unassigned:
                taken = [f for f, p in owners.items() if p is not None and p != target]
                if taken:
                    raise ConflictError(
                        f"face {taken[0]} already belongs to person {owners[taken[0]]}"
                        + (f" (and {len(taken) - 1} more)" if len(taken) > 1 else "")
                        + "; move it instead of assigning it")
            moving = [f for f, p in owners.items() if p != target]
            previous = {f: owners[f] for f in moving}
            entry = None
            if moving:
                conn.execute("UPDATE faces SET person_id = %s WHERE id = ANY(%s)", (target, moving))
                action = "assign" if all(p is None for p in previous.values()) else "move"
                entry = record(conn, action, person_id=target, external_id=_external_id(conn, target),
                               persons=previous.values(), actor=actor,
                               details={"face_ids": moving, "from": {str(f): p for f, p in previous.items()}})
        return MoveResult(self.get_person(target), tuple(moving), previous, entry)

    def unassign_faces(self, face_ids: Iterable[int], *, actor: str | None = None) -> MoveResult:
        """The faces belong to nobody afterwards (they stay stored and searchable as
        unknown, and unassigned-face clustering sees them again)."""
        ids = face_ids_of(face_ids)
        with self._write() as conn:
            owners = _lock_faces(conn, ids)
            previous = {f: p for f, p in owners.items() if p is not None}
            entry = None
            if previous:
                conn.execute("UPDATE faces SET person_id = NULL WHERE id = ANY(%s)", (list(previous),))
                who = set(previous.values())
                subject = next(iter(who)) if len(who) == 1 else None
                entry = record(conn, "unassign", person_id=subject,
                               external_id=None if subject is None else _external_id(conn, subject),
                               persons=who, actor=actor,
                               details={"face_ids": list(previous),
                                        "from": {str(f): p for f, p in previous.items()}})
        return MoveResult(None, tuple(previous), previous, entry)

    def remove_faces(self, face_ids: Iterable[int], *, actor: str | None = None) -> RemoveResult:
        """Delete the faces (embedding and chip with them) and the images no other face
        uses. Persons stay, even with no face left."""
        ids = face_ids_of(face_ids)
        with self._write() as conn:
            owners = _lock_faces(conn, ids)
            image_ids = [r[0] for r in conn.execute(
                "DELETE FROM faces WHERE id = ANY(%s) RETURNING image_id", (ids,))]
            images_deleted = conn.execute(
                "DELETE FROM images i WHERE i.id = ANY(%s) "
                "AND NOT EXISTS (SELECT 1 FROM faces f WHERE f.image_id = i.id)",
                (sorted(set(image_ids)),),
            ).rowcount
            who = {p for p in owners.values() if p is not None}
            subject = next(iter(who)) if len(who) == 1 else None
            entry = record(conn, "remove", person_id=subject,
                           external_id=None if subject is None else _external_id(conn, subject),
                           persons=who, actor=actor,
                           details={"face_ids": ids, "from": {str(f): p for f, p in owners.items()},
                                    "images_deleted": images_deleted})
        return RemoveResult(tuple(ids), tuple(sorted(who)), images_deleted, entry)

    def split_person(self, ref: int | str, face_ids: Iterable[int], external_id: str, *,
                     display_name: str | None = None, metadata: Mapping[str, Any] | None = None,
                     actor: str | None = None) -> SplitResult:
        """The chosen faces of `ref` become a new person `external_id`."""
        ids = face_ids_of(face_ids)
        # The one rule for names (identity/names.py): no digit-only id that would shadow a person id.
        external_id = names.external_id(external_id)
        display_name = names.display_name(display_name)
        with self._write() as conn:
            source = resolve_person(conn, ref, lock=True)
            owners = _lock_faces(conn, ids)
            foreign = [f for f, p in owners.items() if p != source]
            if foreign:
                raise ConflictError(f"face {foreign[0]} does not belong to {ref!r}"
                                    + (f" (nor {len(foreign) - 1} more)" if len(foreign) > 1 else ""))
            refuse_taken(conn, external_id)
            (new_id,) = conn.execute(
                "INSERT INTO persons (external_id, display_name, metadata) VALUES (%s, %s, %s) RETURNING id",
                (external_id, display_name, json.dumps(dict(metadata or {}))),
            ).fetchone()
            conn.execute("UPDATE faces SET person_id = %s WHERE id = ANY(%s)", (new_id, ids))
            entry = record(conn, "split", person_id=source, external_id=_external_id(conn, source),
                           persons=[new_id], actor=actor,
                           details={"new_person_id": new_id, "new_external_id": external_id,
                                    "display_name": display_name, "face_ids": ids})
        people = self.persons_by_ids([source, new_id])
        return SplitResult(people[source], people[new_id], len(ids), entry)

    def undo_merge(self, entry_id: int, *, actor: str | None = None) -> UnmergeResult:
        """Bring a merged-away person back as it was: same id, external id, name, metadata
        and aliases, and the faces the merge moved. Possible while every one of those faces
        still exists and still belongs to the survivor; otherwise a conflict says why and
        nothing changes. The survivor's name and metadata are restored too, unless they
        changed after the merge (then they are left as they are)."""
        with self._write() as conn:
            merge = read_entry(conn, int(entry_id), lock=True) if 0 < int(entry_id) < 2**63 else None
            if merge is None:
                raise NotFoundError(f"no audit entry {entry_id}")
            if merge.action != "merge":
                raise ConflictError(f"entry {entry_id} is a {merge.action}; only merges can be undone")
            if merge.undone_by is not None:
                raise ConflictError(f"merge {entry_id} was already undone (entry {merge.undone_by})")
            d, keep = merge.details, merge.person_id
            other, other_ext = int(d["other_id"]), d["other_external_id"]
            survivor = conn.execute(
                "SELECT display_name, metadata FROM persons WHERE id = %s FOR UPDATE", (keep,)).fetchone()
            if survivor is None:
                raise ConflictError(f"the surviving person {merge.external_id!r} (id {keep}) was deleted since")
            faces = [int(f) for f in d["face_ids"]]
            owners = dict(conn.execute(
                "SELECT id, person_id FROM faces WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (faces,)).fetchall())
            gone = [f for f in faces if f not in owners]
            if gone:
                raise ConflictError(f"{len(gone)} of the {len(faces)} merged faces no longer exist "
                                    f"(face {gone[0]}): merge {entry_id} cannot be undone")
            moved = [f for f in faces if owners[f] != keep]
            if moved:
                raise ConflictError(f"{len(moved)} of the {len(faces)} merged faces moved to another person "
                                    f"since (face {moved[0]}): move them back first")
            alias = conn.execute("SELECT person_id FROM person_aliases WHERE alias = %s FOR UPDATE",
                                 (other_ext,)).fetchone()
            if alias is None or alias[0] != keep:
                raise ConflictError(f"external id {other_ext!r} is no longer an alias of {merge.external_id!r}")
            conn.execute(
                "INSERT INTO persons (id, external_id, display_name, metadata, created_at) "
                "OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s::jsonb, %s)",
                (other, other_ext, d["other_display_name"], json.dumps(d["other_metadata"]), d["other_created_at"]),
            )
            conn.execute("DELETE FROM person_aliases WHERE alias = %s", (other_ext,))
            conn.execute("UPDATE person_aliases SET person_id = %s WHERE alias = ANY(%s) AND person_id = %s",
                         (other, list(d["other_aliases"]), keep))
            if faces:
                conn.execute("UPDATE faces SET person_id = %s WHERE id = ANY(%s)", (other, faces))
            # What the merge made of the survivor (persons.py: merge_persons); anything else
            # means someone edited the survivor since, and their edit wins.
            merged_name = d["keep_display_name"] if d["keep_display_name"] is not None else d["other_display_name"]
            merged_meta = {**d["other_metadata"], **d["keep_metadata"]}
            untouched = survivor[0] == merged_name and dict(survivor[1] or {}) == merged_meta
            if untouched:
                conn.execute("UPDATE persons SET display_name = %s, metadata = %s::jsonb WHERE id = %s",
                             (d["keep_display_name"], json.dumps(d["keep_metadata"]), keep))
            entry = record(conn, "unmerge", person_id=other, external_id=other_ext, persons=[keep], actor=actor,
                           details={"undoes": merge.id, "survivor_id": keep, "face_ids": faces,
                                    "survivor_restored": untouched})
            conn.execute("UPDATE person_audit SET undone_by = %s WHERE id = %s", (entry, merge.id))
        people = self.persons_by_ids([other, keep])
        return UnmergeResult(people[other], people[keep], len(faces), entry, not untouched)
