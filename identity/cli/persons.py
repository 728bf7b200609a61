"""identity persons list | show | rename | merge | delete | split | history | undo, and identity export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from identity.cli._common import JsonOption, dump, out, service
from identity.views import AuditPageOut, DeleteOut, MergeOut, PersonOut, SplitOut, UnmergeOut

app = typer.Typer(help="Enrolled persons: list, show, rename, merge, delete, split, history, undo. A PERSON made only of "
                  "digits is a person id; anything else is an external id or an alias.")
# The help of every PERSON argument: the one reference rule of identity/names.py, as the API states it.
REF_HELP = "Person id (digits only), or external id or alias (anything else)."


def person_dict(person) -> dict:
    """The API's shape for a person (identity/views.py)."""
    return PersonOut.model_validate(person).model_dump(mode="json")


@app.command("list")
def persons_list(
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    after: Annotated[Optional[int], typer.Option(help="Continue after this person id.")] = None,
    query: Annotated[Optional[str], typer.Option(help="Filter by external id or name.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Persons, in id order, a page at a time."""
    with service() as svc:
        page = svc.persons(limit=limit, after=after, query=query)
    if as_json:
        dump({"items": [person_dict(p) for p in page.items], "next_after": page.next_after})
        return
    table = Table("id", "external id", "name", "faces")
    for p in page.items:
        table.add_row(str(p.id), p.external_id, p.display_name or "", str(p.face_count))
    out.print(table)
    if page.next_after is not None:
        out.print(f"more: --after {page.next_after}")


@app.command("show")
def persons_show(ref: Annotated[str, typer.Argument(help=REF_HELP)],
                 as_json: JsonOption = False) -> None:
    """One person with their faces."""
    with service() as svc:
        person = svc.person(ref)
        faces = svc.person_faces(person.id)
    record = person_dict(person)
    record["face_rows"] = [
        {"id": f.id, "source": f.source, "face_index": f.face_index,
         "box": [round(v, 1) for v in f.box], "probability": round(f.det_prob, 4),
         "quality": round(f.quality, 3), "model": f.model}
        for f in faces
    ]
    if as_json:
        dump(record)
        return
    out.print(f"[bold]{person.external_id}[/bold] (id {person.id}) {person.display_name or ''}", highlight=False)
    if person.aliases:
        out.print(f"aliases: {', '.join(person.aliases)}", highlight=False)
    table = Table("face", "source", "box", "p", "quality", "model")
    for f in record["face_rows"]:
        table.add_row(str(f["id"]), f["source"] or "", str(f["box"]), str(f["probability"]),
                      str(f["quality"]), f["model"])
    out.print(table)


@app.command("rename")
def persons_rename(ref: Annotated[str, typer.Argument(help=REF_HELP)], name: Annotated[str, typer.Argument()],
                   as_json: JsonOption = False) -> None:
    """Set a person's display name."""
    with service() as svc:
        person = svc.rename_person(ref, name)
    if as_json:
        return dump(person_dict(person))
    out.print(f"{person.external_id} (id {person.id}): {person.display_name}", highlight=False)


@app.command("merge")
def persons_merge(
    keep: Annotated[str, typer.Argument(help="The person that stays. " + REF_HELP)],
    other: Annotated[str, typer.Argument(help="Merged into KEEP; its external id becomes an alias. " + REF_HELP)],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Move every face of OTHER to KEEP. `identity persons undo ENTRY` undoes it (the entry
    is printed, and listed by `identity persons history`)."""
    with service() as svc:
        if not yes:  # name both persons the references reached before anything moves
            kept, merged = svc.person(keep), svc.person(other)
            if not typer.confirm(f"merge {merged.external_id} (id {merged.id}, {merged.face_count} face(s)) "
                                 f"into {kept.external_id} (id {kept.id}, {kept.face_count} face(s))?"):
                raise typer.Abort()
        result = svc.merge_persons(keep, other)
    if as_json:
        return dump(MergeOut.model_validate(result).model_dump(mode="json"))
    out.print(f"merged {result.merged_external_id} (id {result.merged_person_id}) into "
              f"{result.person.external_id} (id {result.person.id}): "
              f"{result.faces_moved} face(s) moved; undo with: identity persons undo {result.audit_id}",
              highlight=False)


@app.command("delete")
def persons_delete(
    ref: Annotated[str, typer.Argument(help=REF_HELP)],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete a person, their faces and embeddings, and images no other face uses."""
    with service() as svc:
        if not yes:  # name the person the reference reached before anything is deleted
            person = svc.person(ref)
            if not typer.confirm(f"delete {person.external_id} (id {person.id}) and their "
                                 f"{person.face_count} face(s)?"):
                raise typer.Abort()
        result = svc.delete_person(ref)
    if as_json:
        return dump(DeleteOut.model_validate(result).model_dump(mode="json"))
    out.print(f"deleted {result.external_id} (id {result.person_id}): {result.faces_deleted} face(s), "
              f"{result.images_deleted} image(s)", highlight=False)


@app.command("split")
def persons_split(
    ref: Annotated[str, typer.Argument(help="The person to split. " + REF_HELP)],
    faces: Annotated[list[int], typer.Argument(help="Face ids of REF (`identity faces list --person REF`).")],
    into: Annotated[str, typer.Option("--into", help="External id of the new person the faces become.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Display name of the new person.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The chosen faces of a person become a new person."""
    with service() as svc:
        result = svc.split_person(ref, faces, into, display_name=name)
    if as_json:
        return dump(SplitOut.model_validate(result).model_dump(mode="json"))
    out.print(f"split {result.faces_moved} face(s) of {result.person.external_id} (id {result.person.id}) "
              f"into {result.new_person.external_id} (id {result.new_person.id})", highlight=False)


def summary(entry) -> str:
    """One line for one audit entry."""
    d = entry.details
    faces = f"{len(d.get('face_ids', []))} face(s)"
    match entry.action:
        case "create":
            return f"created {entry.external_id}" + (" by an enrollment" if d.get("by") == "enrollment" else "")
        case "rename" if "external_id" in d:
            return f"external id {d['external_id'][0]} -> {d['external_id'][1]}"
        case "rename":
            return f"display name {d['display_name'][0]!r} -> {d['display_name'][1]!r}"
        case "update":
            return "metadata changed"
        case "merge":
            state = (f" (undone by entry {entry.undone_by})" if entry.undone_by
                     else f" (undo: identity persons undo {entry.id})")
            return (f"merged {d['other_external_id']} (id {d['other_id']}) into {entry.external_id}: "
                    f"{d['faces_moved']} face(s){state}")
        case "unmerge":
            return f"merge {d['undoes']} undone: {entry.external_id} restored with {faces}"
        case "split":
            return f"{faces} of {entry.external_id} split off into {d['new_external_id']} (id {d['new_person_id']})"
        case "move" | "assign":
            return f"{faces} {entry.action}ed to {entry.external_id}"
        case "unassign":
            return f"{faces} unassigned"
        case "remove":
            return f"{faces} removed"
        case "delete":
            return f"deleted {entry.external_id} with {d.get('faces_deleted', 0)} face(s)"
    return entry.action


@app.command("history")
def persons_history(
    ref: Annotated[str, typer.Argument(help=REF_HELP + " A deleted person is found by their last external id.")],
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    before: Annotated[Optional[int], typer.Option(help="Continue with entries older than this one.")] = None,
    as_json: JsonOption = False,
) -> None:
    """What happened to a person (and to persons merged into them), newest first: what,
    when and who (an API key, or the OS user of a CLI)."""
    with service() as svc:
        page = svc.person_history(ref, limit=limit, before=before)
    if as_json:
        return dump(AuditPageOut.model_validate(page).model_dump(mode="json"))
    for entry in page.items:  # one line each, never wrapped: history is read with grep too
        out.print(f"{entry.id:>6}  {entry.created_at:%Y-%m-%d %H:%M:%S}  {entry.actor}  {summary(entry)}",
                  highlight=False, markup=False)
    if page.next_before is not None:
        out.print(f"more: --before {page.next_before}")


@app.command("undo")
def persons_undo(
    entry: Annotated[int, typer.Argument(min=1, help="The merge's entry (printed by merge, listed by history).")],
    as_json: JsonOption = False,
) -> None:
    """Undo a merge: the merged-away person comes back with its id, external id, aliases,
    name, metadata and faces, while every one of those faces still exists."""
    with service() as svc:
        result = svc.undo_merge(entry)
    if as_json:
        return dump(UnmergeOut.model_validate(result).model_dump(mode="json"))
    out.print(f"restored {result.person.external_id} (id {result.person.id}) with {result.faces_moved} "
              f"face(s) from {result.survivor.external_id} (id {result.survivor.id})", highlight=False)
    if result.kept_survivor_changes:
        out.print(f"{result.survivor.external_id}'s name and metadata changed after the merge: left as they are",
                  highlight=False)


def export(out_dir: Annotated[Path, typer.Option("--out", help="Target directory.")],
           as_json: JsonOption = False) -> None:
    """Persons, faces and embeddings as Parquet + JSON, readable without this project."""
    with service() as svc:
        result = svc.export(out_dir)
    if as_json:
        return dump({"persons": result.persons, "faces": result.faces, "out_dir": str(result.out_dir)})
    out.print(f"exported {result.persons} person(s), {result.faces} face(s) to {result.out_dir}",
              highlight=False)
