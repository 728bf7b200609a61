"""One enrollment batch, written in the caller's transaction (see Store.add_faces).

Decisions are taken before anything is written, so an image that conflicts or is
already present leaves no trace (no person created for it, no image row)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import psycopg

from identity.faces.types import Face
from identity.store import pgcopy
from identity.store.audit import record_created
from identity.store.chips import insert_chips
from identity.store.types import AddOutcome, FacesToAdd, ModelInfo

# Who a face belongs to while deciding: an existing person id, a person still to be
# created (by external id), or nobody.
_Owner = tuple[str, object] | None


@dataclass
class _Plan:
    item: FacesToAdd
    digest: bytes
    owner: _Owner
    new_indexes: list[int] = field(default_factory=list)
    status: str = "already_present"
    detail: str | None = None


def write_batch(conn: psycopg.Connection, items: Sequence[FacesToAdd], model: ModelInfo) -> list[AddOutcome]:
    external_ids = sorted({i.external_id for i in items if i.external_id})
    persons = _resolve_persons(conn, external_ids)
    digests = sorted({bytes.fromhex(i.image.sha256 or "") for i in items})
    images = dict(
        conn.execute("SELECT sha256, id FROM images WHERE sha256 = ANY(%s)", (digests,)).fetchall()
    )
    stored = _stored_faces(conn, list(images.values()), model.name)
    names = _person_names(conn, {pid for _, pid in stored.values() if pid is not None})

    plans = _plan(items, persons, images, stored, names)
    adding = [p for p in plans if p.status == "added"]
    if adding:
        _create_persons(conn, adding, persons)
        _insert_images(conn, adding, images)
        _copy_faces(conn, adding, persons, images, model)
        stored = _stored_faces(conn, sorted({images[p.digest] for p in plans if p.digest in images}), model.name)
        insert_chips(conn, ((stored[(images[p.digest], i)][0], p.item.image.faces[i].chip)
                            for p in adding for i in p.new_indexes if p.item.image.faces[i].chip is not None))
    return [_outcome(p, persons, images, stored) for p in plans]


def _resolve_persons(conn: psycopg.Connection, external_ids: list[str]) -> dict[str, int]:
    """external id -> person id, through aliases too (a merged person keeps receiving)."""
    if not external_ids:
        return {}
    rows = conn.execute(
        "SELECT external_id, id FROM persons WHERE external_id = ANY(%s) "
        "UNION ALL SELECT alias, person_id FROM person_aliases WHERE alias = ANY(%s)",
        (external_ids, external_ids),
    ).fetchall()
    return dict(rows)


def _stored_faces(conn: psycopg.Connection, image_ids: list[int], model: str) -> dict[tuple[int, int], tuple[int, int | None]]:
    """(image id, face index) -> (face id, person id) for `model`."""
    if not image_ids:
        return {}
    # A face "of `model`" is one with a vector of it: its own, or (during a model move,
    # once the target serves) one in face_embeddings, so an image enrolled before the
    # switch is not enrolled a second time after it.
    rows = conn.execute(
        "SELECT image_id, face_index, id, person_id FROM faces f WHERE image_id = ANY(%s) AND (model = %s "
        "OR EXISTS (SELECT 1 FROM face_embeddings e WHERE e.face_id = f.id AND e.model = %s))",
        (image_ids, model, model),
    ).fetchall()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def _person_names(conn: psycopg.Connection, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    return dict(conn.execute("SELECT id, external_id FROM persons WHERE id = ANY(%s)", (sorted(ids),)).fetchall())


def _plan(items, persons, images, stored, names) -> list[_Plan]:
    plans: list[_Plan] = []
    claimed: dict[tuple[bytes, int], _Owner] = {}  # faces added earlier in this batch
    for item in items:
        digest = bytes.fromhex(item.image.sha256 or "")
        ext = item.external_id
        owner: _Owner = None if not ext else (("id", persons[ext]) if ext in persons else ("new", ext))
        plan = _Plan(item, digest, owner)
        plans.append(plan)
        selected = item.selected()
        if not selected:
            plan.status = "no_face"
            continue
        for index in selected:
            image_id = images.get(digest)
            if image_id is not None and (image_id, index) in stored:
                pid = stored[(image_id, index)][1]
                previous: _Owner = None if pid is None else ("id", pid)
                who = "nobody" if pid is None else repr(names.get(pid, pid))
            elif (digest, index) in claimed:
                previous = claimed[(digest, index)]
                who = "nobody" if previous is None else repr(previous[1])
            else:
                plan.new_indexes.append(index)
                continue
            if previous != owner:
                plan.status, plan.detail = "conflict", f"face {index} is already enrolled to {who}"
                break
        if plan.status == "conflict":
            plan.new_indexes = []
        elif plan.new_indexes:
            plan.status = "added"
            for index in plan.new_indexes:
                claimed[(digest, index)] = owner
    return plans


def _create_persons(conn: psycopg.Connection, adding: list[_Plan], persons: dict[str, int]) -> None:
    wanted: dict[str, str | None] = {}
    actors: dict[str, str | None] = {}
    for p in adding:
        ext = p.item.external_id
        if ext and ext not in persons:
            wanted.setdefault(ext, p.item.display_name)
            actors.setdefault(ext, p.item.actor)
    if not wanted:
        return
    rows = conn.execute(
        "INSERT INTO persons (external_id, display_name) SELECT * FROM unnest(%s::text[], %s::text[]) "
        "RETURNING external_id, id",
        (list(wanted), list(wanted.values())),
    ).fetchall()
    persons.update(dict(rows))
    record_created(conn, [(pid, ext, wanted[ext], actors[ext]) for ext, pid in rows])


def _insert_images(conn: psycopg.Connection, adding: list[_Plan], images: dict[bytes, int]) -> None:
    new: dict[bytes, FacesToAdd] = {}
    for p in adding:
        if p.digest not in images:
            new.setdefault(p.digest, p.item)
    if not new:
        return
    rows = conn.execute(
        "INSERT INTO images (sha256, source, width, height) "
        "SELECT * FROM unnest(%s::bytea[], %s::text[], %s::int[], %s::int[]) RETURNING sha256, id",
        (
            list(new),
            [i.image.source for i in new.values()],
            [i.image.width for i in new.values()],
            [i.image.height for i in new.values()],
        ),
    ).fetchall()
    images.update(dict(rows))


def _copy_faces(conn, adding: list[_Plan], persons: dict[str, int], images: dict[bytes, int], model: ModelInfo) -> None:
    with_person: list[tuple[int, int, int, Face]] = []
    without: list[tuple[int, int, int, Face]] = []
    for p in adding:
        pid = persons[p.item.external_id] if p.item.external_id else None
        for index in p.new_indexes:
            row = (images[p.digest], pid, index, p.item.image.faces[index])
            (with_person if pid is not None else without).append(row)
    for rows, has_person in ((with_person, True), (without, False)):
        if rows:
            payload = _encode(rows, has_person, model)
            with conn.cursor().copy(f"COPY faces ({pgcopy.FACE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(payload)


def _encode(rows: list[tuple[int, int, int, Face]], has_person: bool, model: ModelInfo) -> bytes:
    faces = [r[3] for r in rows]
    return pgcopy.encode_face_rows(
        image_ids=np.array([r[0] for r in rows], np.int64),
        person_ids=np.array([r[1] for r in rows], np.int64) if has_person else None,
        face_indexes=np.array([r[2] for r in rows], np.int16),
        boxes=np.array([f.box for f in faces], np.float32),
        landmarks=np.stack([np.asarray(f.landmarks, np.float32).reshape(10) for f in faces]),
        det_probs=np.array([f.probability for f in faces], np.float32),
        qualities=np.array([f.quality for f in faces], np.float32),
        model=model.name,
        model_version=model.version,
        embeddings=np.stack([np.asarray(f.embedding, np.float32) for f in faces]),
    )


def _outcome(p: _Plan, persons, images, stored) -> AddOutcome:
    image = p.item.image
    image_id = images.get(p.digest)
    person_id = persons.get(p.item.external_id) if p.item.external_id else None
    face_ids: tuple[int, ...] = ()
    if p.status in ("added", "already_present") and image_id is not None:
        face_ids = tuple(stored[(image_id, i)][0] for i in p.item.selected())
    return AddOutcome(
        source=image.source,
        sha256=image.sha256,
        status=p.status,  # type: ignore[arg-type]
        image_id=image_id if p.status != "no_face" else None,
        person_id=person_id,
        face_ids=face_ids,
        detail=p.detail,
    )
