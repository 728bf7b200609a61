"""identity faces list | show | chip | move | assign | unassign | remove | backfill-chips."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from identity.cli._common import JsonOption, dump, err, out, progress, service
from identity.views import FacePageOut, MoveOut, RemoveOut, StoredFaceOut

app = typer.Typer(help="Stored faces: list them, see their chips, and correct who they belong to "
                  "(every correction is recorded in the person's history).")

FaceIds = Annotated[list[int], typer.Argument(help="Face ids (as `identity faces list` shows them).")]
To = Annotated[str, typer.Option("--to", help="The person: id (digits only), or external id or alias.")]


@app.command("list")
def faces_list(
    person: Annotated[Optional[str], typer.Option(help="Only this person's faces.")] = None,
    unassigned: Annotated[bool, typer.Option("--unassigned", help="Only faces that belong to nobody.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    after: Annotated[Optional[int], typer.Option(help="Continue after this face id.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Faces in id order, a page at a time."""
    with service() as svc:
        page = svc.faces(person=person, unassigned=unassigned, limit=limit, after=after)
    if as_json:
        return dump(FacePageOut.model_validate(page).model_dump(mode="json"))
    table = Table("face", "person", "source", "box", "quality", "chip")
    for f in page.items:
        table.add_row(str(f.id), f.external_id or "-", f.source or "", str([round(v) for v in f.box]),
                      f"{f.quality:.3f}", f"{f.chip.size}px" if f.chip else "-")
    out.print(table)
    if page.next_after is not None:
        out.print(f"more: --after {page.next_after}")


@app.command("show")
def faces_show(face: Annotated[int, typer.Argument(min=1)], as_json: JsonOption = False) -> None:
    """One face: owner, photo, box, landmarks, chip."""
    with service() as svc:
        record = StoredFaceOut.model_validate(svc.face(face)).model_dump(mode="json")
    if as_json:
        return dump(record)
    for key, value in record.items():
        out.print(f"{key}: {value}", highlight=False)


@app.command("chip")
def faces_chip(
    face: Annotated[int, typer.Argument(min=1)],
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the JPEG.")],
) -> None:
    """Write a face's chip (a square JPEG around the face) to a file."""
    with service() as svc:
        chip = svc.chip(face)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(chip.jpeg)
    out.print(f"{out_path}: {chip.info.size}x{chip.info.size}, {len(chip.jpeg)} bytes", highlight=False)


def _moved(result, verb: str, as_json: bool) -> None:
    if as_json:
        return dump(MoveOut.model_validate(result).model_dump(mode="json"))
    if not result.moved:
        out.print("nothing to change: the faces are there already", highlight=False)
        return
    where = "" if result.person is None else f" to {result.person.external_id} (id {result.person.id})"
    out.print(f"{verb} {len(result.moved)} face(s){where}", highlight=False)


@app.command("move")
def faces_move(faces: FaceIds, to: To, as_json: JsonOption = False) -> None:
    """Give faces to another person, whoever has them now."""
    with service() as svc:
        result = svc.move_faces(faces, to)
    _moved(result, "moved", as_json)


@app.command("assign")
def faces_assign(faces: FaceIds, to: To, as_json: JsonOption = False) -> None:
    """Give unassigned faces to a person; a face someone else has is refused (use move)."""
    with service() as svc:
        result = svc.assign_faces(faces, to)
    _moved(result, "assigned", as_json)


@app.command("unassign")
def faces_unassign(faces: FaceIds, as_json: JsonOption = False) -> None:
    """Take faces away from their person; they stay stored, belonging to nobody."""
    with service() as svc:
        result = svc.unassign_faces(faces)
    _moved(result, "unassigned", as_json)


@app.command("remove")
def faces_remove(
    faces: FaceIds,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete faces (embedding and chip) and the photos no other face uses."""
    if not yes and not typer.confirm(f"delete {len(set(faces))} face(s)?"):
        raise typer.Abort()
    with service() as svc:
        result = svc.remove_faces(faces)
    if as_json:
        return dump(RemoveOut.model_validate(result).model_dump(mode="json"))
    out.print(f"removed {len(result.face_ids)} face(s), {result.images_deleted} photo(s)", highlight=False)


@app.command("backfill-chips")
def faces_backfill_chips(as_json: JsonOption = False) -> None:
    """Cut chips for stored faces that have none, from their photos where those are still
    readable at their recorded path and unchanged (same sha256). No model runs. Safe to
    run again: only faces still without a chip are visited."""
    with service() as svc, progress() as bar:
        task = bar.add_task("chips", total=None, rate="")
        summary = svc.backfill_chips(on_progress=lambda s: bar.update(task, completed=s.chips))
    record = summary.to_dict()
    if as_json:
        return dump(record)
    out.print(f"{summary.chips} chip(s) from {summary.images} photo(s) in {summary.seconds:.1f}s; "
              f"{summary.unreadable} face(s) with an unreadable photo, {summary.changed} with a changed one",
              highlight=False)
    for problem in summary.problems[:20]:
        err.print(f"[yellow]skipped[/yellow] {problem['source']}: {problem['reason']}", highlight=False)
