"""identity serve: the HTTP API."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from identity.cli._common import settings


def serve(
    host: Annotated[Optional[str], typer.Option(help="Default: IDENTITY_API_HOST (127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="Default: IDENTITY_API_PORT (8000).")] = None,
) -> None:
    """Run the HTTP API (OpenAPI docs at /docs). Work runs in-process unless
    IDENTITY_BROKER_URL names a Redis broker with Celery workers attached."""
    from identity.api import serve as run_server

    update = {k: v for k, v in (("api_host", host), ("api_port", port)) if v is not None}
    run_server(settings().replace(**update))
