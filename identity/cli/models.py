"""identity models list | fetch | migrate | moves."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from identity.cli._common import JsonOption, dump, err, out, progress, service, settings
from identity.vocabulary import FaceDetector

app = typer.Typer(help="List and fetch embedding models (and detector weights); move the store to another one.")


@app.command("list")
def models_list(as_json: JsonOption = False) -> None:
    """Known models, their dimension, whether the weights are present, and thresholds; then
    the detectors whose weights are fetched (SCRFD), with their weights and licence. In
    --json, each row's `kind` is "model" or "detector"."""
    from identity.faces import models

    cfg = settings()
    rows = []
    for spec in models.list_models():
        status = models.verify(spec, cfg)
        rows.append({
            "kind": "model", "name": spec.name, "version": spec.version, "dim": spec.dim,
            "normalization": spec.normalization, "default": spec.name == cfg.pipeline.model,
            "status": status.status, "detail": status.detail, "weights": str(status.path),
            "thresholds": models.load_thresholds(spec, cfg),
            "license": {"summary": spec.license.summary, "commercial_use": spec.license.commercial_use,
                        "url": spec.license.url},
        })
    detectors = []
    for spec in models.list_detectors():
        row = models.describe_detector(spec, cfg)
        detectors.append({
            "kind": "detector", "name": spec.name, "version": spec.version, "dim": None,
            "normalization": None, "default": False, "in_use": row["in_use"],
            "status": row["status"], "detail": row["detail"], "weights": row["weights"], "thresholds": {},
            "license": {"summary": row["license"], "commercial_use": row["commercial_use"],
                        "url": row["license_url"]},
        })
    if as_json:
        dump(rows + detectors)
        return
    table = Table("model", "dim", "version", "licence", "weights", "thresholds (cosine)")
    # The name is what a user types next: never truncated or wrapped.
    table.columns[0].no_wrap = True
    table.columns[0].min_width = max(len(r["name"]) + len(" (default)") * r["default"] for r in rows)
    for row in rows:
        name = f"{row['name']} (default)" if row["default"] else row["name"]
        levels = ", ".join(f"{k}={v:.3f}" for k, v in row["thresholds"].items())
        licence = row["license"]["summary"] + ("" if row["license"]["commercial_use"] else " (non-commercial)")
        table.add_row(name, str(row["dim"]), row["version"], licence, f"{row['status']}: {row['weights']}", levels)
    out.print(table)
    if detectors:
        table = Table("detector", "version", "licence", "weights", "fetch")
        table.columns[0].no_wrap = True
        table.columns[0].min_width = max(len(r["name"]) + len(" (in use)") * r["in_use"] for r in detectors)
        for row in detectors:
            name = f"{row['name']} (in use)" if row["in_use"] else row["name"]
            licence = row["license"]["summary"] + ("" if row["license"]["commercial_use"] else " (non-commercial)")
            table.add_row(name, row["version"], licence, f"{row['status']}: {row['weights']}",
                          models.fetch_command(models.get_detector(row["name"])))
        out.print(table)


@app.command("fetch")
def models_fetch(
    name: Annotated[str | None, typer.Argument(help="Model name (see `identity models list`).")] = None,
    detector: Annotated[FaceDetector | None, typer.Option(
        "--detector", help="Fetch this face detector's weights instead of a model's (the value "
        "of IDENTITY_DETECTOR; scrfd's are InsightFace's, so they need --accept-license).")] = None,
    allow_unpinned: Annotated[
        bool, typer.Option(help="Accept a download whose sha256 the manifest does not pin.")
    ] = False,
    accept_license: Annotated[bool, typer.Option(
        "--accept-license", help="Accept the terms of a model whose licence restricts its use "
        "(shown by `identity models list`); such a model is not fetched without it.")] = False,
) -> None:
    """Download a model's weights (or, with --detector, a detector's) into IDENTITY_MODELS_DIR
    and verify their sha256."""
    from identity.faces import models

    if (name is None) == (detector is None):
        raise typer.BadParameter("give a model NAME or --detector NAME, one of the two")
    spec = name if detector is None else models.get_detector(detector)
    if spec is None:
        out.print(f"{detector}: its weights ship with facenet-pytorch; nothing to fetch", highlight=False)
        return
    path = models.fetch(spec, settings(), allow_unpinned=allow_unpinned, accept_license=accept_license)
    out.print(f"{name or detector}: {path}", highlight=False)


@app.command("migrate")
def models_migrate(
    to: Annotated[str | None, typer.Option("--to", help="The model to move the store to (see `identity models "
                                            "list`); its weights must be present.")] = None,
    finalize: Annotated[bool, typer.Option(
        "--finalize", help="After the switch: drop the old model's vectors (faces keep their ids).")] = False,
    abandon: Annotated[bool, typer.Option(
        "--abandon", help="Give up a move that has not switched yet: its new vectors are deleted.")] = False,
    no_switch: Annotated[bool, typer.Option(
        "--no-switch", help="Re-embed only; search keeps the old model until a run without this flag.")] = False,
    batch: Annotated[int, typer.Option(
        "--batch", min=1, max=4096, help="Faces re-embedded and written per transaction "
        "(a kill loses at most one batch of work).")] = 64,
    as_json: JsonOption = False,
) -> None:
    """Move the store to another embedding model while search keeps answering.

    Every face gets a vector of the new model, from its face chip (or its photo when it
    has no chip), stored beside the old one; the new model's index is built; then search
    switches to it, in every process, at once. Interrupted (even by kill -9), the same
    command resumes where it stopped. `--finalize` afterwards drops the old vectors."""
    if sum((bool(to), finalize, abandon)) != 1:
        raise typer.BadParameter("give exactly one of --to NAME, --finalize, --abandon")
    with service() as svc:
        if finalize or abandon:
            move = svc.finalize_model_move() if finalize else svc.abandon_model_move()
            if as_json:
                return dump(move.to_dict())
            out.print(f"model move {move.id} {move.source} -> {move.target}: {move.state}", highlight=False)
            return
        with progress() as bar:
            task = bar.add_task(f"re-embedding with {to}", total=None, rate="")
            started = [None]

            def on_progress(done: int, total: int) -> None:
                import time

                now = time.monotonic()
                if started[0] is None:
                    started[0] = (now, done)
                t0, d0 = started[0]
                rate = f"{(done - d0) / (now - t0):.1f} faces/s" if now > t0 and done > d0 else ""
                bar.update(task, completed=done, total=total, rate=rate)

            report = svc.migrate_model(to, switch=not no_switch, page=batch, on_progress=on_progress)
    record = report.to_dict()
    if as_json:
        return dump(record)
    verb = "resumed" if report.resumed else "started"
    out.print(f"model move {report.move_id} {report.source} -> {report.target} ({verb}): "
              f"{report.embedded} face(s) re-embedded in {report.seconds:.1f}s "
              f"({report.faces_per_second:.1f} faces/s; {report.from_chips} from chips, "
              f"{report.from_photos} from photos), {report.done_before} done before this run, "
              f"{report.faces} in all", highlight=False)
    if report.index_faces is not None:
        out.print(f"index of {report.target}: {report.index_faces} face(s), built in {report.index_seconds:.1f}s",
                  highlight=False)
    out.print(f"state: {report.state}" + (f"; search now answers with {report.target}; "
                                          "`identity models migrate --finalize` drops the old vectors"
                                          if report.switched else ""), highlight=False)
    for problem in report.problems[:20]:
        err.print(f"[yellow]not re-embedded[/yellow] face {problem['face_id']}: {problem['reason']}",
                  highlight=False)


@app.command("moves")
def models_moves(as_json: JsonOption = False) -> None:
    """Model moves: source, target, state, progress, timestamps."""
    with service() as svc:
        rows = svc.model_moves()
    if as_json:
        return dump(rows)
    if not rows:
        out.print("no model move", highlight=False)
    for row in rows:
        progress_ = row.get("progress")
        done = f", {progress_['done']}/{progress_['faces']} faces re-embedded" if progress_ else ""
        out.print(f"{row['id']}: {row['source']} -> {row['target']} {row['state']}{done} "
                  f"(started {row['started_at']}, runs {row['runs']})", highlight=False)
