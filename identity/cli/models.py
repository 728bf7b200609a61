"""identity models list | fetch."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from identity.cli._common import JsonOption, dump, out, settings

app = typer.Typer(help="List and fetch embedding models.")


@app.command("list")
def models_list(as_json: JsonOption = False) -> None:
    """Known models, their dimension, whether the weights are present, and thresholds."""
    from identity.faces import models

    cfg = settings()
    rows = []
    for spec in models.list_models():
        status = models.verify(spec, cfg)
        rows.append({
            "name": spec.name, "version": spec.version, "dim": spec.dim,
            "normalization": spec.normalization, "default": spec.name == cfg.pipeline.model,
            "status": status.status, "detail": status.detail, "weights": str(status.path),
            "thresholds": models.load_thresholds(spec, cfg),
            "license": {"summary": spec.license.summary, "commercial_use": spec.license.commercial_use,
                        "url": spec.license.url},
        })
    if as_json:
        dump(rows)
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


@app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="Model name (see `identity models list`).")],
    allow_unpinned: Annotated[
        bool, typer.Option(help="Accept a download whose sha256 the manifest does not pin.")
    ] = False,
    accept_license: Annotated[bool, typer.Option(
        "--accept-license", help="Accept the terms of a model whose licence restricts its use "
        "(shown by `identity models list`); such a model is not fetched without it.")] = False,
) -> None:
    """Download a model's weights into IDENTITY_MODELS_DIR and verify their sha256."""
    from identity.faces import models

    path = models.fetch(name, settings(), allow_unpinned=allow_unpinned, accept_license=accept_license)
    out.print(f"{name}: {path}", highlight=False)
