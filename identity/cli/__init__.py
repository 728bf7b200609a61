"""The `identity` command line. Thin: parse, call the service, format.

One module per command group; this one assembles the app and maps errors to exit codes
once, in `main`.
"""

from __future__ import annotations

import logging
import sys
import warnings

import typer

from identity.cli import (
    cluster,
    doctor,
    enroll,
    evaluate,
    faces,
    index,
    keys,
    models,
    persons,
    serve,
    vision,
)
from identity.cli._common import err
from identity.errors import IdentityError

HELP = """Who is this face? Enroll photos, search, verify, cluster and evaluate.

Exit codes: 0 success, 1 a negative answer (verify: different people), 2 bad input or
usage, 3 model or configuration problem, 4 a backing service unavailable, 5 not found or
conflict.

Bad input, one rule for every command: a path that does not exist, or a folder without a
single image, stops the command with exit 2 naming it, before any work. Within a batch,
an image that cannot be read or shows no face is reported as skipped, with its reason,
and the rest go on; the command exits 2 only when nothing at all could be used.
"""


def _group(sub: typer.Typer) -> typer.Typer:
    """A group run without a subcommand prints its help and exits 0, like bare `identity`."""

    @sub.callback(invoke_without_command=True)
    def show_help(ctx: typer.Context) -> None:
        if ctx.invoked_subcommand is None:
            typer.echo(ctx.get_help())
            raise typer.Exit(0)

    return sub


app = _group(typer.Typer(name="identity", help=HELP, pretty_exceptions_enable=False,
                         add_completion=False, rich_markup_mode=None))
for command in (vision.detect, vision.embed, vision.verify, enroll.enroll, vision.search,
                persons.export, cluster.cluster, evaluate.calibrate, serve.serve, doctor.doctor):
    app.command()(command)
app.add_typer(_group(models.app), name="models")
app.add_typer(_group(persons.app), name="persons")
app.add_typer(_group(faces.app), name="faces")
app.add_typer(_group(index.app), name="index")
app.add_typer(_group(index.db_app), name="db")
app.add_typer(_group(keys.app), name="keys")
app.add_typer(_group(evaluate.app), name="evaluate")

# Optional packages whose absence is a configuration problem, not a crash.
OPTIONAL = {"faiss": "FAISS is not installed: pip install 'identity[cpu]' (or 'identity[gpu]' on a CUDA machine)",
            "fastapi": "the HTTP API is not installed: pip install 'identity[api]'",
            "uvicorn": "the HTTP API is not installed: pip install 'identity[api]'",
            "celery": "the workers are not installed: pip install 'identity[workers]'",
            "hdbscan": "HDBSCAN is not installed: pip install 'identity[cluster]'"}


def _usage_error(exc: typer.TyperException) -> int:
    """Click's usage errors as one line: the problem and where to look for help."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "identity"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    err.print(f"error (usage): {message} (see '{path} --help')", highlight=False, markup=False)
    return getattr(exc, "exit_code", 2)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every error becomes one line on stderr and its exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # pgserver asks platformdirs for a runtime dir; harmless where XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    try:
        # Without standalone mode Click *returns* the code of a `typer.Exit` (verify's 1).
        code = app(args=argv, prog_name="identity", standalone_mode=False)
    except IdentityError as exc:
        err.print(f"error ({exc.code}): {exc}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except (KeyboardInterrupt, EOFError):
        err.print("interrupted")
        sys.exit(130)
    except typer.TyperException as exc:  # typer's bundled click raises these for bad usage
        sys.exit(_usage_error(exc))
    except ModuleNotFoundError as exc:
        if exc.name not in OPTIONAL:
            raise
        err.print(f"error (configuration): {OPTIONAL[exc.name]}", highlight=False, markup=False)
        sys.exit(3)
    sys.exit(code if isinstance(code, int) else 0)
