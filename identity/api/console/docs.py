"""`/docs`: Swagger UI from the vendored files (FastAPI's default page loads it from a CDN)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from identity.api.console.core import root

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    base = root(request)
    vendor = f"{base}/static/vendor/swagger-ui"
    return get_swagger_ui_html(
        openapi_url=base + request.app.openapi_url,
        title=f"{request.app.title} API",
        swagger_js_url=f"{vendor}/swagger-ui-bundle.js",
        swagger_css_url=f"{vendor}/swagger-ui.css",
        swagger_favicon_url=f"{vendor}/favicon-32x32.png",
        swagger_ui_parameters={"persistAuthorization": False},
    )
