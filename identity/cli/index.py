"""identity index status | rebuild, and identity db upgrade."""

from __future__ import annotations

from datetime import datetime, timezone

import typer

from identity.cli._common import JsonOption, dump, err, out, service, settings

app = typer.Typer(help="The FAISS search index mirrored from PostgreSQL.")
db_app = typer.Typer(help="The PostgreSQL database.")


def human_age(seconds: float) -> str:
    """'42 s', '7 min', '3.5 h', '2.1 days': enough precision to judge staleness at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def readable_status(status: dict) -> dict[str, str]:
    """The status for a person: times as ISO dates with their age, nothing as 'never'."""
    now = datetime.now(timezone.utc)
    shown = {}
    status = dict(status)
    estimate, budget = status.pop("memory_estimate_mb", None), status.pop("memory_budget_mb", None)
    for key, value in status.items():
        if key == "last_sync_at":
            shown["last sync"] = "never" if value is None else (
                f"{datetime.fromtimestamp(value, timezone.utc).isoformat(timespec='seconds')} "
                f"({human_age(max(0.0, now.timestamp() - value))} ago)")
        elif key == "snapshot_age_s":
            shown["snapshot written"] = "never" if value is None else (
                f"{datetime.fromtimestamp(now.timestamp() - value, timezone.utc).isoformat(timespec='seconds')}"
                f" ({human_age(value)} ago)")
        else:
            shown[key.replace("_", " ")] = "unknown" if value is None else str(value)
    if estimate is not None:
        shown["memory"] = f"about {estimate:,.0f} MiB" + (f" of a {budget:,.0f} MiB budget" if budget else "")
    return shown


@app.command("status")
def index_status(as_json: JsonOption = False) -> None:
    """Size, watermark, lag behind the database, index type and device; during a model
    move (`identity models migrate`), the other model's too."""
    with service() as svc:
        status = svc.index.status().to_dict()
        moving = svc.move_index_status()
        configured = svc.configured_model
    if configured != status["model"]:
        err.print(f"[yellow]note[/yellow]: the configured model is {configured}, but this store serves "
                  f"{status['model']} (it moved there, `identity models moves`, or holds faces of no other); "
                  f"set IDENTITY_MODEL={status['model']}, or `identity models migrate --to {configured}`",
                  highlight=False)
    if as_json:
        dump(status if moving is None else {**status, "moving": moving})
        return
    shown = readable_status(status)
    if moving is not None:
        shown = {"served model": status["model"], **shown}
        shown.update({f"{moving['model']}": moving["role"], "move": f"{moving['move']} ({moving['move_state']})",
                      "re-embedded": f"{moving['faces_reembedded']} of {moving['faces_to_reembed']} face(s)",
                      f"{moving['model']} vectors": str(moving["vectors"]),
                      f"{moving['model']} db watermark": str(moving["db_watermark"]),
                      f"{moving['model']} snapshot": "none" if moving["snapshot_watermark"] is None else
                      f"{moving['snapshot_faces']} face(s) at watermark {moving['snapshot_watermark']}"})
    width = max(map(len, shown))
    for key, value in shown.items():
        out.print(f"{key:>{width}}: {value}", highlight=False)


@app.command("rebuild")
def index_rebuild() -> None:
    """Rebuild the index from PostgreSQL and write a fresh snapshot."""
    with service() as svc:
        status = svc.index.rebuild().to_dict()
    out.print(f"rebuilt: {status['count']} face(s), watermark {status['watermark']}, {status['index_type']}",
              highlight=False)
    if status.get("chosen_because"):
        out.print(f"chosen because {status['chosen_because']}", highlight=False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (automatic for the embedded database)."""
    from identity.store.migrate import upgrade

    applied = upgrade(settings())
    out.print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
