"""Who is enrolled: the `persons` and `person_aliases` tables.

An alias is an external id a person no longer carries (renamed, or merged into another
person); it keeps resolving to its person, so callers holding an old id never break.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from identity import names
from identity.errors import ConflictError, InputError, NotFoundError
from identity.store.audit import record, record_merge, refuse_taken
from identity.store.core import StoreCore
from identity.store.types import DeleteResult, MergeResult, Person, PersonPage

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


def resolve_person(conn: psycopg.Connection, ref: int | str, *, lock: bool = False) -> int:
    """A person id from a reference, read by the one rule of `identity.names.person_ref`:
    digits are an id and only an id; anything else is an external id or an alias, never
    an id (so no external id can shadow a person id). NotFoundError if none."""
    parsed = names.person_ref(ref)
    person_id: int | None = parsed if isinstance(parsed, int) else None
    if person_id is None:
        row = conn.execute(
            "SELECT id FROM persons WHERE external_id = %s "
            "UNION ALL SELECT person_id FROM person_aliases WHERE alias = %s LIMIT 1",
            (parsed, parsed),
        ).fetchone()
        person_id = row[0] if row is not None else None
    if person_id is not None:
        suffix = " FOR UPDATE" if lock else ""
        row = conn.execute(f"SELECT id FROM persons WHERE id = %s{suffix}", (person_id,)).fetchone()
        if row is not None:
            return row[0]
    what = f"id {parsed}" if isinstance(parsed, int) else f"with external id {parsed!r}"
    raise NotFoundError(f"no person {what}")


def metadata_json(metadata: Mapping[str, Any]) -> str:
    """Metadata as JSON that PostgreSQL's jsonb accepts: jsonb refuses NUL in any string
    and JSON has no NaN or infinity, so either is the client's error (422), not a 500."""

    def check(value: Any) -> None:
        if isinstance(value, str):
            if "\x00" in value:
                raise InputError("metadata may not contain the NUL character")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                check(str(key))
                check(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                check(item)

    check(metadata)
    try:
        return json.dumps(dict(metadata), allow_nan=False)
    except (ValueError, TypeError) as exc:
        raise InputError(f"metadata is not storable as JSON: {exc}") from None


def _like_pattern(text: str) -> str:
    """A substring pattern in which the client's % and _ (and the escape itself) are literal."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_persons_query(*, limit: int, after: int | None = None, query: str | None = None) -> tuple[str, tuple]:
    """The statement and parameters of a page of persons (by id), those whose external id or
    display name contains `query` only when given. The substring match is an ILIKE, which
    the trigram indexes of migration 0007 serve (a bitmap scan instead of reading every
    person) where the server has pg_trgm."""
    where, params = ["p.id > %s"], [after or 0]
    if query:
        where.append("(p.external_id ILIKE %s ESCAPE '\\' OR p.display_name ILIKE %s ESCAPE '\\')")
        params += [_like_pattern(names.search_text(query))] * 2
    return _PERSON_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY p.id LIMIT %s", (*params, limit)


def _get(conn: psycopg.Connection, person_id: int) -> Person:
    row = conn.execute(_PERSON_SELECT + " WHERE p.id = %s", (person_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no person {person_id}")
    return _person(row)


class PersonsMixin(StoreCore):
    def create_person(
        self, external_id: str, display_name: str | None = None, metadata: Mapping[str, Any] | None = None,
        *, actor: str | None = None,
    ) -> Person:
        external_id = names.external_id(external_id)
        display_name = names.display_name(display_name)
        payload = metadata_json(metadata or {})
        with self._write() as conn:
            refuse_taken(conn, external_id)
            (person_id,) = conn.execute(
                "INSERT INTO persons (external_id, display_name, metadata) VALUES (%s, %s, %s) RETURNING id",
                (external_id, display_name, payload),
            ).fetchone()
            record(conn, "create", person_id=person_id, external_id=external_id, actor=actor,
                   details={"display_name": display_name})
            return _get(conn, person_id)

    def get_person(self, ref: int | str) -> Person:
        """By id (an int, or a str of the digits 0-9), else by external id or alias (the
        rule of `identity.names`). NotFoundError if none."""
        with self.connection() as conn:
            return _get(conn, resolve_person(conn, ref))

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
        with self.connection() as conn:
            # Never a prepared statement: a generic plan, made without the pattern, reads
            # every person in id order (70 ms at 100k) where the pattern's own plan reads
            # the few rows the trigram indexes name (BENCHMARKS.md, "Store").
            rows = conn.execute(*list_persons_query(limit=limit + 1, after=after, query=query),
                                prepare=False).fetchall()
        items = tuple(_person(r) for r in rows[:limit])
        return PersonPage(items=items, next_after=items[-1].id if len(rows) > limit else None)

    def rename_person(self, ref: int | str, display_name: str | None, *, actor: str | None = None) -> Person:
        display_name = names.display_name(display_name)
        with self._write() as conn:
            person_id = resolve_person(conn, ref, lock=True)
            (ext, old) = conn.execute(
                "SELECT external_id, display_name FROM persons WHERE id = %s", (person_id,)).fetchone()
            conn.execute("UPDATE persons SET display_name = %s WHERE id = %s", (display_name, person_id))
            record(conn, "rename", person_id=person_id, external_id=ext, actor=actor,
                   details={"display_name": [old, display_name]})
            return _get(conn, person_id)

    def set_external_id(self, ref: int | str, external_id: str, *, actor: str | None = None) -> Person:
        """Change a person's external id; the old one stays as an alias."""
        external_id = names.external_id(external_id)
        with self._write() as conn:
            person_id = resolve_person(conn, ref, lock=True)
            (old,) = conn.execute("SELECT external_id FROM persons WHERE id = %s", (person_id,)).fetchone()
            if old == external_id:
                return _get(conn, person_id)
            owner = conn.execute("SELECT person_id FROM person_aliases WHERE alias = %s", (external_id,)).fetchone()
            if (owner is not None and owner[0] != person_id) or conn.execute(
                "SELECT 1 FROM persons WHERE external_id = %s", (external_id,)
            ).fetchone():
                raise ConflictError(f"external id {external_id!r} belongs to another person")
            conn.execute("DELETE FROM person_aliases WHERE alias = %s", (external_id,))
            conn.execute("UPDATE persons SET external_id = %s WHERE id = %s", (external_id, person_id))
            conn.execute("INSERT INTO person_aliases (alias, person_id) VALUES (%s, %s)", (old, person_id))
            record(conn, "rename", person_id=person_id, external_id=external_id, actor=actor,
                   details={"external_id": [old, external_id]})
            return _get(conn, person_id)

    def update_metadata(self, ref: int | str, patch: Mapping[str, Any], *, replace: bool = False,
                        actor: str | None = None) -> Person:
        """Merge `patch` into the metadata (a None value removes the key), or replace it."""
        removed = [k for k, v in patch.items() if v is None]
        kept = {k: v for k, v in patch.items() if v is not None}
        payload = metadata_json(kept)
        metadata_json({str(k): None for k in removed})  # removed keys are text too: no NUL
        with self._write() as conn:
            person_id = resolve_person(conn, ref, lock=True)
            base = "'{}'::jsonb" if replace else "p.metadata"
            (ext, before, after) = conn.execute(
                f"UPDATE persons p SET metadata = ({base} || %s::jsonb) - %s::text[] "
                "FROM persons o WHERE p.id = %s AND o.id = p.id RETURNING p.external_id, o.metadata, p.metadata",
                (payload, removed, person_id),
            ).fetchone()
            record(conn, "update", person_id=person_id, external_id=ext, actor=actor,
                   details={"metadata": [before, after]})
            return _get(conn, person_id)

    def delete_person(self, ref: int | str, *, actor: str | None = None) -> DeleteResult:
        """Delete a person, their faces (and so embeddings) and the images no other face
        uses, in one transaction. The faces' deletions reach the change log by trigger."""
        with self._write() as conn:
            person_id = resolve_person(conn, ref, lock=True)
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
            record(conn, "delete", person_id=person_id, external_id=external_id, actor=actor,
                   details={"faces_deleted": len(image_ids), "images_deleted": images_deleted})
        return DeleteResult(person_id, external_id, len(image_ids), images_deleted)

    def merge_persons(self, keep: int | str, other: int | str, *, actor: str | None = None) -> MergeResult:
        """Move `other`'s faces and aliases to `keep`; `other`'s external id becomes an
        alias of `keep`; metadata is merged (keep's values win); `other` is deleted. The
        audit entry keeps what an undo needs (identity/store/corrections.py: undo_merge)."""
        with self._write() as conn:
            keep_id = resolve_person(conn, keep)
            other_id = resolve_person(conn, other)
            if keep_id == other_id:
                raise ConflictError(f"cannot merge person {keep!r} with itself")
            # lock both rows in id order: the same order in every merge
            for pid in sorted((keep_id, other_id)):
                conn.execute("SELECT 1 FROM persons WHERE id = %s FOR UPDATE", (pid,))
            (other_ext, other_name, other_meta) = conn.execute(
                "SELECT external_id, display_name, metadata FROM persons WHERE id = %s", (other_id,)
            ).fetchone()
            entry = record_merge(conn, keep_id, other_id, actor=actor)
            moved = conn.execute("UPDATE faces SET person_id = %s WHERE person_id = %s", (keep_id, other_id)).rowcount
            conn.execute("UPDATE person_aliases SET person_id = %s WHERE person_id = %s", (keep_id, other_id))
            conn.execute("DELETE FROM persons WHERE id = %s", (other_id,))
            conn.execute("INSERT INTO person_aliases (alias, person_id) VALUES (%s, %s)", (other_ext, keep_id))
            conn.execute(
                "UPDATE persons SET metadata = %s::jsonb || metadata, "
                "display_name = coalesce(display_name, %s) WHERE id = %s",
                (json.dumps(other_meta or {}), other_name, keep_id),
            )
            return MergeResult(_get(conn, keep_id), other_ext, moved, other_id, entry)
