"""What every command shares: the consoles, common options, JSON output, the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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

from identity.config import Settings, get_settings
from identity.faces.types import ImageResult

# soft_wrap: long paths and messages stay on one line, so they can be grepped and parsed.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Images = Annotated[list[Path], typer.Argument(help="Image files or directories (searched recursively).")]


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


def warn_skipped(records: list[dict]) -> None:
    for record in records:
        if "error" in record:
            err.print(f"[yellow]skipped[/yellow] {record['source']}: {record['error']['message']}",
                      highlight=False)


def usable(records: list[dict]) -> list[dict]:
    """The records that are not errors, after telling the user about those that are."""
    warn_skipped(records)
    return [record for record in records if "error" not in record]
