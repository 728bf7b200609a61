"""HTTP API (FastAPI) under /v1. `create_app(settings)` builds it; `serve(settings)` runs it.

Both are imported on first use: `identity serve` with several workers must not import the
app (and torch) into the process that only supervises them (api/server.py)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from identity.api.app import create_app

        return create_app
    if name == "serve":
        from identity.api.server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
