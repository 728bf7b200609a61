"""identity enroll."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from identity.cli._common import JsonOption, dump, err, out, progress, service, settings
from identity.errors import InputError

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")


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
    from identity import enroll as enrollment

    if source.is_dir():
        items = list(enrollment.items_from_directory(source))
    elif source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        items = list(enrollment.items_from_manifest(source))
    elif source.is_file():
        raise InputError("no image to enroll: give a folder with one sub-folder per person, "
                         f"or a manifest ({', '.join(MANIFEST_SUFFIXES)})", path=str(source))
    else:
        raise InputError("no such file or directory", path=str(source))
    if not any(isinstance(item, enrollment.EnrollItem) for item in items):
        raise InputError("no image to enroll: expected DIR/<person>/<photo> (folders starting "
                         "with _ or . are not people)", path=str(source))
    # Unique per run: two runs in the same second must not write one report.
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    report = report or settings().data_dir / "reports" / f"enroll-{stamp}.csv"
    if settings().workers.broker_url:
        err.print(f"enroll: {len(items)} files; batches go to the Celery workers "
                  f"(exit 4 if none is alive for {settings().workers.worker_wait_seconds:g} s)", highlight=False)
    with service() as svc, progress() as bar:
        task = bar.add_task("enrolling", total=len(items), rate="")
        started = time.perf_counter()
        printed = [started]

        def advance(outcomes) -> None:
            bar.advance(task, len(outcomes))
            done = bar.tasks[0].completed
            rate = f"{done / max(time.perf_counter() - started, 1e-9):.1f} img/s"
            bar.update(task, rate=rate)
            # Without a terminal the bar is hidden: a line every few seconds instead (logs).
            if not err.is_terminal and (time.perf_counter() - printed[0] >= 2 or done == len(items)):
                printed[0] = time.perf_counter()
                err.print(f"enroll: {done:.0f}/{len(items)} files ({rate})", highlight=False)

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
        out.print(f"{summary.skipped} file(s) skipped; reasons in {summary.report}", highlight=False)
