"""The `identity` command line. Thin: parse, call `identity.service`, format.

Exit codes come from the error types (identity/errors.py): 0 success, 1 a negative
answer (verify: different people), 2 bad input, 3 model or configuration problem,
4 a backing service unavailable, 5 not found or conflict.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from identity.config import Settings, get_settings
from identity.errors import IdentityError, InputError
from identity.faces.types import ImageResult

app = typer.Typer(
    name="identity",
    help="Who is this face? Enroll photos, search, verify, cluster and evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="List and fetch embedding models.", no_args_is_help=True)
persons_app = typer.Typer(help="Enrolled persons: list, show, rename, merge, delete.", no_args_is_help=True)
index_app = typer.Typer(help="The FAISS search index mirrored from PostgreSQL.", no_args_is_help=True)
db_app = typer.Typer(help="The PostgreSQL database.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Measure accuracy: LFW protocol, identification, clustering.",
                           no_args_is_help=True)
keys_app = typer.Typer(help="API keys for the HTTP API: create, list, revoke.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(persons_app, name="persons")
app.add_typer(index_app, name="index")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(evaluate_app, name="evaluate")

# soft_wrap: long paths and messages stay on one line, so they can be grepped and parsed.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Images = Annotated[list[Path], typer.Argument(help="Image files or directories (searched recursively).")]


def main() -> None:
    """Console-script entry point: every `IdentityError` becomes its message and exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # pgserver asks platformdirs for a runtime dir; harmless where XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    try:
        # Without standalone mode Click *returns* the code of a `typer.Exit` (verify's 1).
        code = app(standalone_mode=False)
    except IdentityError as exc:
        err.print(f"[red]error[/red] ({exc.code}): {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click's own usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def settings() -> Settings:
    return get_settings()


def service():
    from identity.service import Service

    return Service(settings())


def progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    )


def dump(data: Any) -> None:
    out.print_json(json.dumps(data)) if out.is_terminal else print(json.dumps(data))


def face_dict(face) -> dict:
    return {
        "box": [round(float(v), 1) for v in face.box],
        "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.landmarks],
        "probability": round(float(face.probability), 4),
    }


def error_dict(result: ImageResult) -> dict:
    return {"source": result.source, "error": result.error.to_dict()}  # type: ignore[union-attr]


# --- detect -----------------------------------------------------------------------------


@app.command()
def detect(
    images: Images,
    draw: Annotated[
        Optional[Path], typer.Option(help="Write an annotated copy of the (single) image here.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Find faces: boxes, 5 landmarks and detection probabilities (no embedding model needed)."""
    from identity.files import expand_images
    from identity.service import Detection

    paths = list(expand_images(images))
    if draw is not None and len(paths) != 1:
        raise typer.BadParameter("--draw takes exactly one image", param_hint="--draw")
    records, failed = [], 0
    for item in service().detect(paths):
        if isinstance(item, Detection):
            records.append(
                {"source": item.source, "width": item.width, "height": item.height,
                 "faces": [face_dict(f) for f in item.faces]}
            )
            if draw is not None:
                _draw(item, draw)
        else:
            failed += 1
            records.append(error_dict(item))
    if as_json:
        dump(records)
    else:
        for record in records:
            if "error" in record:
                err.print(f"[yellow]skipped[/yellow] {record['source']}: {record['error']['message']}")
                continue
            out.print(f"[bold]{record['source']}[/bold] ({record['width']}×{record['height']}): "
                      f"{len(record['faces'])} face(s)")
            for i, face in enumerate(record["faces"]):
                out.print(f"  #{i} box={face['box']} p={face['probability']}")
    if failed == len(records) and records:
        raise typer.Exit(2)


def _draw(detection, target: Path) -> None:
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(detection.source) as raw:
        image = ImageOps.exif_transpose(raw).convert("RGB")
    pen = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 400))
    for face in detection.faces:
        pen.rectangle(face.box, outline=(0, 255, 0), width=width)
        for x, y in face.landmarks:
            pen.ellipse((x - width, y - width, x + width, y + width), fill=(255, 0, 0))
        pen.text((face.box[0], max(0, face.box[1] - 12)), f"{face.probability:.3f}", fill=(0, 255, 0))
    image.save(target)
    err.print(f"wrote {target}")


# --- embed ------------------------------------------------------------------------------


@app.command()
def embed(
    images: Images,
    out_file: Annotated[Path, typer.Option("--out", help="Embeddings as an N×dim float32 .npy file.")],
    select: Annotated[
        str, typer.Option(help="Faces per image: all, largest, or central (facenet's LFW rule).")
    ] = "all",
    as_json: JsonOption = False,
) -> None:
    """Embed every face (or one per image) into FILE.npy, with FILE.json describing each row."""
    from identity.files import expand_images

    if select not in ("all", "largest", "central"):
        raise typer.BadParameter("choose all, largest or central", param_hint="--select")
    paths = list(expand_images(images))
    svc = service()
    vectors, rows, skipped = [], [], []
    with progress() as bar:
        task = bar.add_task("embedding", total=len(paths), rate="")
        for result in svc.embed(paths, select=select):  # type: ignore[arg-type]
            bar.advance(task)
            if result.error is not None:
                skipped.append(error_dict(result))
                continue
            for index, face in enumerate(result.faces):
                vectors.append(face.embedding)
                rows.append({"source": result.source, "face": index, **face_dict(face)})
    matrix = np.stack(vectors) if vectors else np.zeros((0, svc.pipeline.dim), np.float32)
    np.save(out_file, matrix.astype(np.float32))
    sidecar = out_file.with_suffix(".json")
    meta = {"model": svc.pipeline.model_name, "version": svc.pipeline.model_version,
            "dim": svc.pipeline.dim, "rows": rows, "skipped": skipped}
    sidecar.write_text(json.dumps(meta, indent=1))
    summary = {"embeddings": len(rows), "images": len(paths), "skipped": len(skipped),
               "out": str(out_file), "rows": str(sidecar)}
    if as_json:
        dump(summary)
    else:
        for item in skipped:
            err.print(f"[yellow]skipped[/yellow] {item['source']}: {item['error']['message']}")
        out.print(f"{len(rows)} face embedding(s) from {len(paths) - len(skipped)} image(s) → "
                  f"{out_file} ({matrix.shape[0]}×{matrix.shape[1]}), rows in {sidecar}")


# --- verify -----------------------------------------------------------------------------


@app.command()
def verify(
    a: Annotated[Path, typer.Argument(help="First photo.")],
    b: Annotated[Path, typer.Argument(help="Second photo.")],
    level: Annotated[
        Optional[str], typer.Option(help="Threshold level: loose, normal or strict (see `models list`).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Are the faces in A and B the same person? Exit 0: same, 1: different, 2: bad input.

    A photo with several faces is compared by its largest face (reported)."""
    if level is not None and level not in ("loose", "normal", "strict"):
        raise typer.BadParameter("choose loose, normal or strict", param_hint="--level")
    result = service().verify(a, b, level=level)
    if as_json:
        dump({
            "same": result.same, "similarity": round(result.similarity, 5),
            "distance": round(result.distance, 5), "threshold": round(result.threshold, 5),
            "level": result.level, "model": result.model,
            "a": {"source": str(a), "faces": result.faces_in_a, **face_dict(result.face_a)},
            "b": {"source": str(b), "faces": result.faces_in_b, **face_dict(result.face_b)},
        })
    else:
        for path, count in ((a, result.faces_in_a), (b, result.faces_in_b)):
            if count > 1:
                err.print(f"[yellow]note[/yellow]: {path} has {count} faces; compared the largest")
        verdict = "[green]SAME[/green]" if result.same else "[red]DIFFERENT[/red]"
        out.print(f"{verdict} person  similarity={result.similarity:.4f}  distance={result.distance:.4f}"
                  f"  threshold={result.threshold:.4f} ({result.level}, {result.model})")
    raise typer.Exit(0 if result.same else 1)


# --- models -----------------------------------------------------------------------------


@models_app.command("list")
def models_list(as_json: JsonOption = False) -> None:
    """Known models, their dimension, whether the weights are present, and thresholds."""
    from identity.faces import registry

    cfg = settings()
    rows = []
    for spec in registry.list_models():
        rows.append({
            "name": spec.name, "version": spec.version, "dim": spec.dim,
            "normalization": spec.normalization, "default": spec.name == cfg.model,
            "status": (status := registry.verify(spec, cfg)).status,
            "detail": status.detail,
            "weights": str(status.path),
            "thresholds": registry.load_thresholds(spec, cfg),
        })
    if as_json:
        dump(rows)
        return
    table = Table("model", "dim", "version", "weights", "thresholds (cosine)")
    for row in rows:
        name = f"{row['name']} (default)" if row["default"] else row["name"]
        levels = ", ".join(f"{k}={v:.3f}" for k, v in row["thresholds"].items())
        table.add_row(name, str(row["dim"]), row["version"], f"{row['status']}: {row['weights']}", levels)
    out.print(table)


@models_app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="Model name (see `identity models list`).")],
    allow_unpinned: Annotated[
        bool, typer.Option(help="Accept a download whose sha256 the manifest does not pin.")
    ] = False,
) -> None:
    """Download a model's weights into IDENTITY_MODELS_DIR and verify their sha256."""
    from identity.faces import registry

    path = registry.fetch(name, settings(), allow_unpinned=allow_unpinned)
    out.print(f"{name}: {path}")


# --- enroll -----------------------------------------------------------------------------


@app.command()
def enroll(
    source: Annotated[Path, typer.Argument(
        help="A folder with one sub-folder per person (DIR/<person>/*.jpg), or a CSV/JSONL "
        "manifest with columns path, person[, display_name].")],
    largest_face: Annotated[bool, typer.Option(
        "--largest-face", help="Enroll the largest face of a photo with several (default: skip it).")] = False,
    report: Annotated[Optional[Path], typer.Option(
        help="CSV of every file not enrolled, with the reason (default: under the data dir).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Detect, embed and store every face of a photo collection, idempotently: run it again
    after an interruption and it finishes the job without duplicates."""
    import time

    from identity import enroll as enrollment

    if source.is_dir():
        items = list(enrollment.items_from_directory(source))
    elif source.is_file():
        items = list(enrollment.items_from_manifest(source))
    else:
        raise IdentityError("no such file or directory", path=str(source))
    cfg = settings()
    report = report or cfg.data_dir / "reports" / f"enroll-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with service() as svc, progress() as bar:
        task = bar.add_task("enrolling", total=len(items), rate="")
        started = time.perf_counter()

        def advance(outcomes) -> None:
            bar.advance(task, len(outcomes))
            done = bar.tasks[0].completed
            bar.update(task, rate=f"{done / max(time.perf_counter() - started, 1e-9):.1f} img/s")

        summary = svc.enroll(items, largest_face=largest_face, report=report, on_progress=advance)
    if as_json:
        dump(summary.to_dict())
        return
    table = Table("outcome", "images", title=f"enrolled from {source}")
    for status, count in summary.to_dict().items():
        if status in ("total", "seconds", "images_per_s", "report"):
            continue
        table.add_row(status.replace("_", " "), str(count))
    table.add_row("[bold]total[/bold]", str(summary.total))
    out.print(table)
    rate = summary.to_dict()["images_per_s"]
    out.print(f"{summary.seconds:.1f} s ({rate} images/s)")
    if summary.skipped:
        out.print(f"{summary.skipped} file(s) skipped; reasons in {summary.report}")


# --- persons ------------------------------------------------------------------------------


def person_dict(person) -> dict:
    return {"id": person.id, "external_id": person.external_id, "display_name": person.display_name,
            "faces": person.face_count, "aliases": list(person.aliases), "metadata": person.metadata,
            "created_at": person.created_at.isoformat(), "updated_at": person.updated_at.isoformat()}


def store():
    from identity.store import Store

    return Store(settings())


@persons_app.command("list")
def persons_list(
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    after: Annotated[Optional[int], typer.Option(help="Continue after this person id.")] = None,
    query: Annotated[Optional[str], typer.Option(help="Filter by external id or name.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Persons, in id order, a page at a time."""
    with store() as db:
        page = db.list_persons(limit=limit, after=after, query=query)
    if as_json:
        dump({"items": [person_dict(p) for p in page.items], "next_after": page.next_after})
        return
    table = Table("id", "external id", "name", "faces")
    for p in page.items:
        table.add_row(str(p.id), p.external_id, p.display_name or "", str(p.face_count))
    out.print(table)
    if page.next_after is not None:
        out.print(f"more: --after {page.next_after}")


@persons_app.command("show")
def persons_show(ref: Annotated[str, typer.Argument(help="Id, external id or alias.")],
                 as_json: JsonOption = False) -> None:
    """One person with their faces."""
    with store() as db:
        person = db.get_person(ref)
        faces = db.person_faces(person.id)
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
    out.print(f"[bold]{person.external_id}[/bold] (id {person.id}) {person.display_name or ''}")
    if person.aliases:
        out.print(f"aliases: {', '.join(person.aliases)}")
    table = Table("face", "source", "box", "p", "quality", "model")
    for f in record["face_rows"]:
        table.add_row(str(f["id"]), f["source"] or "", str(f["box"]), str(f["probability"]),
                      str(f["quality"]), f["model"])
    out.print(table)


@persons_app.command("rename")
def persons_rename(ref: Annotated[str, typer.Argument()], name: Annotated[str, typer.Argument()]) -> None:
    """Set a person's display name."""
    with store() as db:
        person = db.rename_person(ref, name)
    out.print(f"{person.external_id}: {person.display_name}")


@persons_app.command("merge")
def persons_merge(
    keep: Annotated[str, typer.Argument(help="The person that stays.")],
    other: Annotated[str, typer.Argument(help="Merged into KEEP; its external id becomes an alias.")],
) -> None:
    """Move every face of OTHER to KEEP."""
    with store() as db:
        result = db.merge_persons(keep, other)
    out.print(f"merged {result.merged_external_id} into {result.person.external_id}: "
              f"{result.faces_moved} face(s) moved")


@persons_app.command("delete")
def persons_delete(
    ref: Annotated[str, typer.Argument()],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a person, their faces and embeddings, and images no other face uses."""
    if not yes and not typer.confirm(f"delete {ref} and all their faces?"):
        raise typer.Abort()
    with store() as db:
        result = db.delete_person(ref)
    out.print(f"deleted {result.external_id}: {result.faces_deleted} face(s), "
              f"{result.images_deleted} image(s)")


@app.command("export")
def export_cmd(out_dir: Annotated[Path, typer.Option("--out", help="Target directory.")]) -> None:
    """Persons, faces and embeddings as Parquet + JSON, readable without this project."""
    with store() as db:
        result = db.export(out_dir)
    out.print(f"exported {result.persons} person(s), {result.faces} face(s) to {result.out_dir}")


# --- search and the index --------------------------------------------------------------------


@app.command()
def search(
    images: Images,
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="Faces considered per query.")] = 5,
    level: Annotated[Optional[str], typer.Option(help="loose, normal or strict.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Who is in these photos? Every face is searched among the enrolled persons."""
    from identity.files import expand_images

    records = []
    with service() as svc:
        for path in expand_images(images):
            try:
                found = svc.search_image(path, k=k, level=level)
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
    if as_json:
        dump(records)
        return
    for record in records:
        if "error" in record:
            err.print(f"[yellow]skipped[/yellow] {record['source']}: {record['error']['message']}")
            continue
        out.print(f"[bold]{record['source']}[/bold]: {len(record['faces'])} face(s)")
        for i, face in enumerate(record["faces"]):
            if face["known"]:
                best = face["matches"][0]
                out.print(f"  #{i} box={face['box']} → [green]{best['external_id']}[/green] "
                          f"similarity={best['similarity']} ({best['faces']} matching face(s))")
            else:
                out.print(f"  #{i} box={face['box']} → [red]unknown[/red] "
                          f"(nearest similarity {face['nearest_similarity']})")


@index_app.command("status")
def index_status(as_json: JsonOption = False) -> None:
    """Size, watermark, lag behind the database, index type and device."""
    with service() as svc:
        status = svc.index.status().to_dict()
    if as_json:
        dump(status)
    else:
        for key, value in status.items():
            out.print(f"{key:>20}: {value}")


@index_app.command("rebuild")
def index_rebuild() -> None:
    """Rebuild the index from PostgreSQL and write a fresh snapshot."""
    with service() as svc:
        status = svc.index.rebuild().to_dict()
    out.print(f"rebuilt: {status['count']} face(s), watermark {status['watermark']}, {status['index_type']}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (automatic for the embedded database)."""
    from identity.store.migrate import upgrade

    applied = upgrade(settings())
    out.print(f"applied: {', '.join(applied)}" if applied else "database is up to date")


# --- clustering -----------------------------------------------------------------------------

Algorithm = Annotated[Optional[str], typer.Option(
    help="hdbscan (default), chinese_whispers, components or dbscan.")]
Threshold = Annotated[Optional[float], typer.Option(
    help="Cosine similarity: edge cut for graph methods, eps for DBSCAN, outlier floor for HDBSCAN.")]


def cluster_params(algorithm: str | None, threshold: float | None):
    from identity.cluster import ALGORITHMS, ClusterParams

    if algorithm is not None and algorithm not in ALGORITHMS:
        raise typer.BadParameter(f"choose one of {', '.join(ALGORITHMS)}", param_hint="--algorithm")
    overrides = {k: v for k, v in (("algorithm", algorithm), ("threshold", threshold)) if v is not None}
    return ClusterParams.from_settings(settings(), **overrides)


def clustered(svc, images: list[Path], params, *, keep_crops: bool = False):
    from identity.files import expand_images

    paths = list(expand_images(images))
    with progress() as bar:
        task = bar.add_task("embedding", total=len(paths), rate="")
        return svc.cluster_images(paths, params=params, keep_crops=keep_crops,
                                  on_image=lambda _: bar.advance(task))


@app.command()
def cluster(
    images: Images,
    out_dir: Annotated[Path, typer.Option("--out", help="Where clusters.json, folders and sheets go.")],
    algorithm: Algorithm = None,
    threshold: Threshold = None,
    folders: Annotated[str, typer.Option(
        help="A folder per cluster with face 'crops', 'links' to the originals, or 'none'.")] = "crops",
    sheets: Annotated[bool, typer.Option(help="A contact-sheet PNG per cluster.")] = True,
    match: Annotated[bool, typer.Option(
        "--match", help="Name clusters after the enrolled person most of their faces find.")] = False,
    save: Annotated[bool, typer.Option(
        "--save", help="Store the clustered faces: to the matched person, else as a new unnamed person.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Group the faces of unlabelled photos into people. Two faces of one photo never share
    a cluster; outliers and low-quality faces stay unclustered, with the reason."""
    from identity.cluster.output import write_cluster_folders, write_contact_sheets, write_json

    if folders not in ("crops", "links", "none"):
        raise typer.BadParameter("choose crops, links or none", param_hint="--folders")
    params = cluster_params(algorithm, threshold)
    with service() as svc:
        clustering = clustered(svc, images, params, keep_crops=folders == "crops" or sheets)
        matches = svc.match_clusters(clustering) if match or save else {}
        saved = svc.save_clusters(clustering, matches=matches) if save else None
    faces, result = clustering.faces, clustering.result
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_json(result, faces, out_dir / "clusters.json")
    if matches:  # the enrolled person each matched cluster is, beside the clusters
        report = json.loads(written.read_text())
        for entry in report["clusters"]:
            found = matches.get(entry["cluster"])
            entry["person"] = None if found is None else {
                "external_id": found.external_id, "display_name": found.display_name,
                "faces_matched": found.faces_matched, "similarity": round(found.similarity, 4)}
        written.write_text(json.dumps(report, indent=1))
    if folders != "none":
        write_cluster_folders(result, faces, out_dir, mode=folders)
    if sheets:
        write_contact_sheets(result, faces, out_dir / "sheets")
    unclustered = int((result.labels < 0).sum())
    summary = {"faces": len(faces), "photos": len(faces.sources), "clusters": result.n_clusters,
               "unclustered": unclustered, "algorithm": params.algorithm, "out": str(written),
               "matched": {str(c): m.external_id for c, m in matches.items()}, "saved": saved}
    if as_json:
        dump(summary)
        return
    out.print(f"{summary['faces']} face(s) in {summary['photos']} photo(s) → "
              f"{result.n_clusters} cluster(s), {unclustered} unclustered; {written}")
    for cluster, found in sorted(matches.items()):
        out.print(f"  cluster {cluster} is {found.external_id} ({found.faces_matched}/{found.faces} faces)")
    if saved:
        out.print(f"saved to {len(saved['persons'])} person(s): {saved['images']}")


# --- evaluation and calibration -------------------------------------------------------------


def image_progress(bar, total: int, label: str):
    task = bar.add_task(label, total=total, rate="")
    return lambda n=1: bar.advance(task, n)


@evaluate_app.command("lfw")
def evaluate_lfw(
    directory: Annotated[Path, typer.Option("--dir", help="LFW images: DIR/<Name>/<Name>_0001.jpg.")],
    pairs: Annotated[Path, typer.Option(help="pairs.txt (10 folds) or a View 1 list (pairsDevTrain.txt).")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Write lfw_report.json and lfw_roc.png here.")] = None,
    as_json: JsonOption = False,
) -> None:
    """facenet's LFW protocol through this pipeline: 10-fold accuracy, VAL@FAR=1e-3, AUC, EER."""
    from identity.evaluate.runner import load_pairs, run_lfw

    count = len(load_pairs(directory, pairs).unique_paths())
    with service() as svc, progress() as bar:
        report = run_lfw(svc.pipeline, directory, pairs, out_dir=out_dir,
                         progress=image_progress(bar, count, "embedding"))
    data = report.to_dict()
    if as_json:
        dump(data)
        return
    m = report.metrics
    out.print(f"{report.model} ({report.alignment}{', flip' if report.flip else ''}) on {pairs.name}: "
              f"accuracy {m.accuracy_mean:.4f} ± {m.accuracy_std:.4f}, "
              f"VAL@FAR={m.far_target:g} {m.val_mean:.4f} ± {m.val_std:.4f}, "
              f"AUC {m.auc:.4f}, EER {m.eer:.4f}")
    out.print(f"{report.n_images} images, {report.n_no_face} without a face ({report.fallback})")
    if out_dir:
        out.print(f"report and ROC curve in {out_dir}")


@evaluate_app.command("identify")
def evaluate_identify(
    directory: Annotated[Path, typer.Option("--dir", help="DIR/<person>/<image>.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Write the JSON report here.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Gallery: first photo of each person with two or more; probes: their other photos, plus
    people seen once as impostors. Rank-1/5 and open-set DIR at FAR 1e-2."""
    from identity.evaluate.runner import run_identify

    count = sum(1 for _ in directory.glob("*/*"))
    with service() as svc, progress() as bar:
        report = run_identify(svc.pipeline, directory, out_dir=out_dir,
                              progress=image_progress(bar, count, "embedding"))
    dump(report.to_dict()) if as_json else out.print(report.to_dict())


@evaluate_app.command("clusters")
def evaluate_clusters(
    directory: Annotated[Path, typer.Argument(help="DIR/<person>/<image>: folder names are the truth.")],
    algorithm: Algorithm = None,
    threshold: Threshold = None,
    as_json: JsonOption = False,
) -> None:
    """Cluster the photos as if unlabelled, then score against the folder names: pairwise and
    BCubed precision/recall/F1, clusters vs identities, fraction unclustered."""
    from identity.cluster.metrics import folder_metrics

    from identity.enroll import items_from_directory

    params = cluster_params(algorithm, threshold)
    # The same layout as enrollment: `_`/`.` folders (probes, hidden) are not people.
    photos = [Path(item.source) for item in items_from_directory(directory)]
    with service() as svc:
        clustering = clustered(svc, photos, params)
    metrics = folder_metrics(clustering.faces, clustering.result).to_dict()
    if as_json:
        dump({"algorithm": params.algorithm, "threshold": params.threshold, **metrics})
        return
    for key, value in metrics.items():
        out.print(f"{key:>28}: {value:.4f}" if isinstance(value, float) else f"{key:>28}: {value}")


@app.command()
def calibrate(
    directory: Annotated[Path, typer.Option("--dir", help="Labelled images (LFW layout).")],
    pairs: Annotated[Path, typer.Option(help="The pairs file naming the images to use.")],
    as_json: JsonOption = False,
) -> None:
    """Similarity thresholds for false-accept rates 1e-2 (loose), 1e-3 (normal) and 1e-4
    (strict), from every cross-identity pair; stored with the model version and used by
    verify and search from then on."""
    from identity.evaluate.runner import load_pairs, run_calibration

    count = len(load_pairs(directory, pairs).unique_paths())
    with service() as svc, progress() as bar:
        report = run_calibration(svc.pipeline, directory, pairs,
                                 progress=image_progress(bar, count, "embedding"))
    if as_json:
        dump(report.to_dict())
        return
    table = Table("level", "target FAR", "similarity ≥", "impostor pairs", "same-person accepted")
    for name, lt in report.levels.items():
        table.add_row(name, f"{lt.far:g}", f"{lt.similarity:.4f}", f"{lt.n_impostor:,}",
                      f"{lt.genuine_accept_rate:.4f}")
    out.print(table)
    out.print(f"stored in {report.path}")


# --- the HTTP API --------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Default: IDENTITY_API_HOST (127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Default: IDENTITY_API_PORT (8000).")] = None,
) -> None:
    """Run the HTTP API (OpenAPI docs at /docs). Work runs in-process unless
    IDENTITY_BROKER_URL names a Redis broker with Celery workers attached."""
    from identity.api import serve as run_server

    update = {k: v for k, v in (("api_host", host), ("api_port", port)) if v is not None}
    run_server(settings().model_copy(update=update))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
    scope: Annotated[Optional[list[str]], typer.Option(
        "--scope", help="read (default), enroll or admin; repeatable; admin includes enroll includes read.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key. The secret is printed once and stored only as a hash."""
    from identity.store.keys import create_key

    scope = scope or ["read"]

    with store() as db:
        key_id, secret = create_key(db, name, scope)
    if as_json:
        dump({"key_id": key_id, "key": secret, "scopes": scope})
    else:
        out.print(f"key id {key_id} ({', '.join(scope)}); the key, shown only now:\n{secret}")


@keys_app.command("list")
def keys_list(as_json: JsonOption = False) -> None:
    """Keys with their scopes, last use and revocation (never the secrets)."""
    from identity.store.keys import list_keys

    with store() as db:
        keys = list_keys(db)
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


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument()]) -> None:
    """Revoke a key; requests with it fail from the next one on."""
    from identity.store.keys import revoke_key

    with store() as db:
        key = revoke_key(db, key_id)
    out.print(f"revoked {key.key_id} ({key.name})")


if __name__ == "__main__":  # pragma: no cover
    main()
