"""The web console: server-rendered pages (Jinja2) made interactive by htmx, served by
the API's own app at `/` (docs/ARCHITECTURE.md, "Web console", says why this way).

It is a second front end on the same `Service`, beside the JSON routes: each route reads
a form, calls one service method and renders a template. Everything it needs ships in
this package (templates/, static/, static/vendor/ with htmx and Swagger UI), so the
console and `/docs` work with no network.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from identity.api.access import RateLimits
from identity.api.console import auth, clusters, docs, enroll, people, search
from identity.api.console.core import HERE
from identity.api.console.gate import ConsoleGate


def install(app: FastAPI) -> None:
    """Serve the console and the offline API docs on `app` (built with docs_url=None)."""
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (auth, people, search, enroll, clusters, docs):
        app.include_router(module.router)
    settings = app.state.service.settings
    app.add_middleware(ConsoleGate, api=app, limits=RateLimits.from_settings(settings))
