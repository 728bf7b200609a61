"""identity doctor: what this installation has, and whether each part works."""

from __future__ import annotations

import typer

from identity.cli._common import JsonOption, dump, out, settings


def doctor(as_json: JsonOption = False) -> None:
    """Versions, the torch device, the weights (sha256 re-checked), the database and the
    broker. Exit 0 when all is well, else the code of the first problem (3: model or
    configuration, 4: a backing service)."""
    from identity.doctor import diagnose, exit_code

    checks = diagnose(settings())
    if as_json:
        dump({"ok": all(c.ok for c in checks), "checks": [c.to_dict() for c in checks]})
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
            out.print(f"{mark} {c.name:<{width}}  {c.detail}", highlight=False)
    raise typer.Exit(exit_code(checks))
