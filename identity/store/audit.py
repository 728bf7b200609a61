"""The person audit log (`person_audit`): one row per person operation, written in the
operation's own transaction, so the log can never disagree with the data.

Lower than persons.py (which records into it) and corrections.py (which reads it and
undoes merges): this module knows no person resolution.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from identity.errors import ConflictError
from identity.store.types import AuditEntry, AuditPage

_SELECT = ("SELECT id, action, person_id, external_id, persons, actor, details, undone_by, created_at "
           "FROM person_audit")


def default_actor() -> str:
    """Who acts when no caller said: the OS user running this process (the CLI's user)."""
    try:
        return f"user:{getpass.getuser()}"
    except (OSError, KeyError):  # a container user without a passwd entry or $USER
        return f"user:uid{os.getuid()}"


def key_actor(key_id: str, name: str) -> str:
    return f"key:{key_id} ({name})"


def record(
    conn: psycopg.Connection,
    action: str,
    *,
    person_id: int | None,
    external_id: str | None,
    persons: Iterable[int | None] = (),
    actor: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> int:
    """Append one entry in the caller's transaction; returns its id."""
    touched = sorted({int(p) for p in (person_id, *persons) if p is not None})
    (entry_id,) = conn.execute(
        "INSERT INTO person_audit (action, person_id, external_id, persons, actor, details) "
        "VALUES (%s, %s, %s, %s, %s, %s::jsonb) RETURNING id",
        (action, person_id, external_id, touched, actor or default_actor(),
         json.dumps(dict(details or {}), default=str)),
    ).fetchone()
    return entry_id


def entry(row: TupleRow) -> AuditEntry:
    return AuditEntry(id=row[0], action=row[1], person_id=row[2], external_id=row[3],
                      persons=tuple(row[4]), actor=row[5], details=dict(row[6] or {}),
                      undone_by=row[7], created_at=row[8])


def read_page(conn: psycopg.Connection, where: list[str], params: list[Any], *, limit: int,
              before: int | None) -> AuditPage:
    """Entries matching `where`, newest first, `limit` at a time (keyset on id)."""
    limit = max(1, min(limit, 10_000))
    if before is not None:
        where = [*where, "id < %s"]
        params = [*params, before]
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    rows = conn.execute(f"{_SELECT}{clause} ORDER BY id DESC LIMIT %s", (*params, limit + 1)).fetchall()
    items = tuple(entry(r) for r in rows[:limit])
    return AuditPage(items, items[-1].id if len(rows) > limit else None)


def read_entry(conn: psycopg.Connection, entry_id: int, *, lock: bool = False) -> AuditEntry | None:
    row = conn.execute(f"{_SELECT} WHERE id = %s" + (" FOR UPDATE" if lock else ""), (entry_id,)).fetchone()
    return None if row is None else entry(row)


def refuse_taken(conn: psycopg.Connection, external_id: str) -> None:
    """ConflictError when `external_id` names a person already, directly or as an alias. A
    merged-away id resolves to its survivor, so the error names the survivor: creating a
    new person under it would silently split what the merge joined."""
    row = conn.execute(
        "SELECT p.id, p.external_id, p.external_id = %s FROM persons p WHERE p.external_id = %s "
        "UNION ALL SELECT p.id, p.external_id, false FROM person_aliases a "
        "JOIN persons p ON p.id = a.person_id WHERE a.alias = %s LIMIT 1",
        (external_id, external_id, external_id),
    ).fetchone()
    if row is None:
        return
    person_id, owner, own = row
    if own:
        raise ConflictError(f"person {external_id!r} already exists (id {person_id})")
    merged = conn.execute(
        "SELECT 1 FROM person_audit WHERE action = 'merge' AND undone_by IS NULL "
        "AND details->>'other_external_id' = %s LIMIT 1",
        (external_id,),
    ).fetchone()
    how = "was merged into" if merged else "is a former external id of"
    raise ConflictError(f"external id {external_id!r} {how} person {owner!r} (id {person_id}) "
                        "and resolves to that person")


def record_merge(conn: psycopg.Connection, keep_id: int, other_id: int, *, actor: str | None) -> int:
    """The merge entry, written before `other` is merged away (both rows locked): all an
    undo needs to bring `other` back as it was (identity/store/corrections.py)."""
    (other_ext, other_name, other_meta, other_created) = conn.execute(
        "SELECT external_id, display_name, metadata, created_at FROM persons WHERE id = %s", (other_id,)
    ).fetchone()
    (keep_ext, keep_name, keep_meta) = conn.execute(
        "SELECT external_id, display_name, metadata FROM persons WHERE id = %s", (keep_id,)
    ).fetchone()
    aliases = [r[0] for r in conn.execute(
        "SELECT alias FROM person_aliases WHERE person_id = %s ORDER BY alias", (other_id,))]
    faces = [r[0] for r in conn.execute(
        "SELECT id FROM faces WHERE person_id = %s ORDER BY id", (other_id,))]
    return record(conn, "merge", person_id=keep_id, external_id=keep_ext, persons=[other_id], actor=actor,
                  details={
                      "other_id": other_id, "other_external_id": other_ext,
                      "other_display_name": other_name, "other_metadata": other_meta or {},
                      "other_created_at": other_created.isoformat(), "other_aliases": aliases,
                      "face_ids": faces, "faces_moved": len(faces),
                      "keep_display_name": keep_name, "keep_metadata": keep_meta or {},
                  })


def record_created(conn: psycopg.Connection, created: list[tuple[int, str, str | None, str | None]]) -> None:
    """'create' entries for persons an enrollment made on demand, (id, external id, display
    name, actor) each, in one statement: a bulk enrollment creates persons by the thousand."""
    if not created:
        return
    fallback = default_actor()
    conn.execute(
        "INSERT INTO person_audit (action, person_id, external_id, persons, actor, details) "
        "SELECT 'create', id, ext, ARRAY[id], actor, jsonb_build_object('display_name', name, 'by', 'enrollment') "
        "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS t(id, ext, name, actor)",
        ([c[0] for c in created], [c[1] for c in created], [c[2] for c in created],
         [c[3] or fallback for c in created]),
    )
