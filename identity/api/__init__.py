"""HTTP API (FastAPI) under /v1. `create_app(settings)` builds it; `serve(settings)` runs it."""

from identity.api.app import create_app, serve

__all__ = ["create_app", "serve"]
