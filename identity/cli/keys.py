"""identity keys create | list | revoke: API keys, stored hashed."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from identity.cli._common import JsonOption, dump, out, service
from identity.vocabulary import Scope

app = typer.Typer(help="API keys for the HTTP API: create, list, revoke.")


@app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
    scope: Annotated[Optional[list[Scope]], typer.Option(
        "--scope", help="read (default), enroll or admin; repeatable; admin includes enroll includes read.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key. The secret is printed once and stored only as a hash."""
    scope = [s.value for s in scope or [Scope.read]]
    with service() as svc:
        key_id, secret = svc.create_key(name, scope)
    if as_json:
        dump({"key_id": key_id, "key": secret, "scopes": scope})
    else:
        out.print(f"key id {key_id} ({', '.join(scope)}); the key, shown only now:\n{secret}", highlight=False)


@app.command("list")
def keys_list(as_json: JsonOption = False) -> None:
    """Keys with their scopes, last use and revocation (never the secrets)."""
    with service() as svc:
        keys = svc.keys()
    rows = [{"key_id": k.key_id, "name": k.name, "scopes": list(k.scopes),
             "created_at": k.created_at.isoformat(),
             "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
             "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in keys]
    if as_json:
        dump(rows)
        return
    table = Table("key id", "name", "scopes", "last used", "revoked")
    for r in rows:
        table.add_row(r["key_id"], r["name"], ",".join(r["scopes"]), r["last_used_at"] or "",
                      r["revoked_at"] or "")
    out.print(table)


@app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument()]) -> None:
    """Revoke a key; requests with it fail from the next one on."""
    with service() as svc:
        key = svc.revoke_key(key_id)
    out.print(f"revoked {key.key_id} ({key.name})", highlight=False)
