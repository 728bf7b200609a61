"""detect, embed, verify and search: commands that look at photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from identity.cli._common import (
    Images,
    JsonOption,
    dump,
    err,
    error_dict,
    face_dict,
    out,
    progress,
    service,
    usable,
    warn_skipped,
)
from identity.errors import IdentityError, InputError, NoFaceError
from identity.files import expand_images
from identity.vocabulary import Level, Selection

Draw = Annotated[Optional[Path], typer.Option(
    help="Write an annotated copy: a file for one image, a folder (one PNG each) for several.")]
LevelOption = Annotated[Optional[Level], typer.Option(help="Threshold level (see `identity models list`).")]


def _draw_targets(paths: list[Path], draw: Path | None) -> dict[str, Path]:
    if draw is None:
        return {}
    if len(paths) == 1 and not draw.is_dir():
        return {str(paths[0]): draw}
    if draw.exists() and not draw.is_dir():
        raise InputError("--draw must name a folder when there are several images", path=str(draw))
    draw.mkdir(parents=True, exist_ok=True)
    return {str(p): draw / f"{i:04d}-{p.stem}.png" for i, p in enumerate(paths)}


def _draw(source: str, boxes: list[tuple[list[float], list, str, tuple[int, int, int]]], target: Path) -> None:
    """Each face's box, its landmarks (when given) and a label above the box."""
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(source) as raw:
        image = ImageOps.exif_transpose(raw).convert("RGB")
    pen = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 400))
    for box, landmarks, label, colour in boxes:
        pen.rectangle(box, outline=colour, width=width)
        for x, y in landmarks:
            pen.ellipse((x - width, y - width, x + width, y + width), fill=(255, 0, 0))
        pen.text((box[0], max(0, box[1] - 12)), label, fill=colour)
    image.save(target)
    err.print(f"wrote {target}", highlight=False)


def _exit_if_nothing_used(records: list[dict]) -> None:
    if records and all("error" in r for r in records):
        raise typer.Exit(2)


def detect(images: Images, draw: Draw = None, as_json: JsonOption = False) -> None:
    """Find faces: boxes, 5 landmarks and detection probabilities (no embedding model needed)."""
    from identity.service import Detection

    paths = expand_images(images)
    targets = _draw_targets(paths, draw)
    records = []
    for item in service().detect(paths):
        if isinstance(item, Detection):
            records.append({"source": item.source, "width": item.width, "height": item.height,
                            "faces": [face_dict(f) for f in item.faces]})
            if item.source in targets:
                _draw(item.source, [(f.box, f.landmarks, f"#{i} {f.probability:.3f}", (0, 255, 0))
                                    for i, f in enumerate(item.faces)], targets[item.source])
        else:
            records.append(error_dict(item))
    if as_json:
        dump(records)
    else:
        for record in usable(records):
            out.print(f"[bold]{record['source']}[/bold] ({record['width']}×{record['height']}): "
                      f"{len(record['faces'])} face(s)", highlight=False)
            for i, face in enumerate(record["faces"]):
                out.print(f"  #{i} box={face['box']} p={face['probability']}", highlight=False)
    _exit_if_nothing_used(records)


def embed(
    images: Images,
    out_file: Annotated[Path, typer.Option("--out", help="Embeddings as an N×dim float32 .npy file.")],
    select: Annotated[Selection, typer.Option(
        help="Faces per image: all, largest, or central (facenet's LFW rule).")] = Selection.all,
    as_json: JsonOption = False,
) -> None:
    """Embed every face (or one per image) into FILE.npy, with FILE.json describing each row."""
    paths = expand_images(images)
    svc = service()
    vectors, rows, skipped = [], [], []
    with progress() as bar:
        task = bar.add_task("embedding", total=len(paths), rate="")
        for result in svc.embed(paths, select=select.value):  # type: ignore[arg-type]
            bar.advance(task)
            if result.error is not None:
                skipped.append(error_dict(result))
                continue
            for index, face in enumerate(result.faces):
                vectors.append(face.embedding)
                rows.append({"source": result.source, "face": index, **face_dict(face)})
    warn_skipped(skipped)
    if not vectors:
        raise NoFaceError(f"no face found in any of the {len(paths)} image(s); {out_file} not written")
    matrix = np.stack(vectors).astype(np.float32)
    np.save(out_file, matrix)
    sidecar = out_file.with_suffix(".json")
    meta = {"model": svc.pipeline.model_name, "version": svc.pipeline.model_version,
            "dim": svc.pipeline.dim, "rows": rows, "skipped": skipped}
    sidecar.write_text(json.dumps(meta, indent=1))
    summary = {"embeddings": len(rows), "images": len(paths), "skipped": len(skipped),
               "out": str(out_file), "rows": str(sidecar)}
    if as_json:
        dump(summary)
    else:
        out.print(f"{len(rows)} face embedding(s) from {len(paths) - len(skipped)} image(s) → "
                  f"{out_file} ({matrix.shape[0]}×{matrix.shape[1]}), rows in {sidecar}", highlight=False)


def verify(
    a: Annotated[Path, typer.Argument(help="First photo.")],
    b: Annotated[Path, typer.Argument(help="Second photo.")],
    level: LevelOption = None,
    as_json: JsonOption = False,
) -> None:
    """Are the faces in A and B the same person? Exit 0: same, 1: different, 2: bad input.

    A photo with several faces is compared by its largest face (reported)."""
    expand_images([a, b])  # a missing file is named before any model loads
    result = service().verify(a, b, level=level and level.value)
    if as_json:
        dump({
            "same": result.same, "similarity": round(result.similarity, 5),
            "distance": round(result.distance, 5), "threshold": round(result.threshold, 5),
            "level": str(result.level), "model": result.model,
            "a": {"source": str(a), "faces": result.faces_in_a, **face_dict(result.face_a)},
            "b": {"source": str(b), "faces": result.faces_in_b, **face_dict(result.face_b)},
        })
    else:
        for path, count in ((a, result.faces_in_a), (b, result.faces_in_b)):
            if count > 1:
                err.print(f"[yellow]note[/yellow]: {path} has {count} faces; compared the largest",
                          highlight=False)
        verdict, relation = ("[green]SAME[/green]", "≥") if result.same else ("[red]DIFFERENT[/red]", "<")
        out.print(f"{verdict} person: similarity {result.similarity:.4f} {relation} threshold "
                  f"{result.threshold:.4f} ({result.level}, {result.model})", highlight=False)
    raise typer.Exit(0 if result.same else 1)


def search(
    images: Images,
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="Faces considered per query.")] = 5,
    level: LevelOption = None,
    draw: Draw = None,
    as_json: JsonOption = False,
) -> None:
    """Who is in these photos? Every face is searched among the enrolled persons."""
    paths = expand_images(images)
    targets = _draw_targets(paths, draw)
    records = []
    with service() as svc:
        for path in paths:
            try:
                found = svc.search_image(path, k=k, level=level and level.value)
            except IdentityError as exc:
                if not isinstance(exc, InputError):
                    raise
                records.append({"source": str(path), "error": exc.to_dict()})
                continue
            records.append({"source": str(path), "faces": [
                {**face_dict(hit.face), "known": hit.known,
                 "nearest_similarity": None if hit.nearest_similarity is None else round(hit.nearest_similarity, 4),
                 "matches": [{"person_id": m.person_id, "external_id": m.external_id,
                              "display_name": m.display_name, "similarity": round(m.similarity, 4),
                              "faces": m.faces} for m in hit.matches]}
                for hit in found]})
    for record in records:
        if "error" not in record and record["source"] in targets:
            _draw(record["source"], [
                (f["box"], f["landmarks"],
                 f"#{i} {f['matches'][0]['display_name'] or f['matches'][0]['external_id']} "
                 f"{f['matches'][0]['similarity']:.2f}", (0, 255, 0)) if f["known"] else
                (f["box"], f["landmarks"], f"#{i} unknown ({f['nearest_similarity']})", (255, 64, 64))
                for i, f in enumerate(record["faces"])], targets[record["source"]])
    if as_json:
        dump(records)
    else:
        for record in usable(records):
            out.print(f"[bold]{record['source']}[/bold]: {len(record['faces'])} face(s)", highlight=False)
            for i, face in enumerate(record["faces"]):
                if face["known"]:
                    best = face["matches"][0]
                    out.print(f"  #{i} box={face['box']} → [green]{best['external_id']}[/green] "
                              f"similarity={best['similarity']} ({best['faces']} matching face(s))",
                              highlight=False)
                else:
                    out.print(f"  #{i} box={face['box']} → [red]unknown[/red] "
                              f"(nearest similarity {face['nearest_similarity']})", highlight=False)
    _exit_if_nothing_used(records)
