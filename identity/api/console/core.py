"""What every console route shares: who is signed in, what their key may do, rendering,
and errors shown as the console shows them (a page, or a message for an htmx request).

The key travels in a cookie, not a header: the console's pages are plain navigations
and `<img>` requests, which cannot carry a header. The cookie is HttpOnly (no script
reads it) and SameSite=Strict; on top of that every state-changing request must come
from htmx (`HX-Request`, a header a cross-site form cannot send) with an Origin, when
present, naming this host. The /v1 API never reads the cookie, so it stays free of
cross-site request concerns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from identity.api.deps import actor  # noqa: F401 - the audit log names a console action as an API call
from identity.api.security import scope_check
from identity.errors import AuthenticationError, IdentityError, PermissionDeniedError
from identity.service import Service
from identity.store.keys import ApiKey

HERE = Path(__file__).parent
COOKIE = "identity_key"
ADMITTED = "identity.console_key"  # the request scope's key admitted by gate.py (a form post)
TEMPLATES = Jinja2Templates(directory=HERE / "templates")

# Scripts and styles only from our own files (htmx runs with allowEval off), pictures
# also as data: URLs (a searched photo is shown back inline, never stored).
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def describe(entry, person_id: int) -> str:
    """One line of a person's history, told from that person's side."""
    d, here = entry.details, entry.person_id == person_id
    faces = _plural(len(d.get("face_ids", ())), "face")
    match entry.action:
        case "create":
            return "created"
        case "rename":
            field, (old, new) = next(iter(d.items()), ("name", (None, None)))
            what = "external id" if field == "external_id" else "name"
            return f"{what} changed from “{old or '—'}” to “{new or '—'}”"
        case "update":
            return "metadata changed"
        case "merge":
            if here:
                return f"merged {d.get('other_external_id')} in ({_plural(d.get('faces_moved', 0), 'face')})"
            return f"merged into {entry.external_id}"
        case "unmerge":
            return f"merge undone: {entry.external_id} restored with {faces}"
        case "split":
            if here:
                return f"{faces} split off into {d.get('new_external_id')}"
            return f"split off from {entry.external_id} with {faces}"
        case "move":
            return f"{faces} moved here" if here else f"{faces} moved to {entry.external_id}"
        case "assign":
            return f"{faces} assigned" + ("" if here else f" to {entry.external_id}")
        case "unassign":
            return f"{faces} unassigned"
        case "remove":
            return f"{faces} deleted"
        case "delete":
            return "deleted"
    return entry.action


TEMPLATES.env.filters["describe"] = describe
TEMPLATES.env.filters["basename"] = lambda path: Path(str(path)).name


class SignInRequired(Exception):
    """No key, or one that no longer authenticates (revoked): back to the sign-in page."""


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def local_path(target: str | None, default: str = "/") -> str:
    """`target` if it is a path on this site, else `default` (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def signed_in(request: Request) -> ApiKey:
    key = request.scope.get(ADMITTED)
    if key is None:
        secret = request.cookies.get(COOKIE)
        if not secret:
            raise SignInRequired
        try:
            key = service_of(request).authenticate(secret)
        except AuthenticationError:
            raise SignInRequired from None
    request.state.key = key
    return key


def allowed(scope: str):
    """The console's scope check, on the key from the sign-in cookie."""
    return scope_check(scope, signed_in, name=f"console_{scope}", whose="your")


def service_of(request: Request) -> Service:
    return request.app.state.service


def same_origin(request: Request) -> None:
    """State changes only from the console's own pages (see the module's docstring)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if not is_htmx(request):
        raise PermissionDeniedError("console actions are sent by the console's own pages")
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise PermissionDeniedError("cross-site request refused")


Console = Annotated[Service, Depends(service_of)]
Reader = Annotated[ApiKey, Depends(signed_in)]
Enroller = Annotated[ApiKey, Depends(allowed("enroll"))]
Admin = Annotated[ApiKey, Depends(allowed("admin"))]


def render(request: Request, template: str, *, status: int = 200, headers: dict[str, str] | None = None,
           **context: Any) -> HTMLResponse:
    key: ApiKey | None = getattr(request.state, "key", None)
    granted = key.granted if key is not None else frozenset()
    context.update(key=key, can={s: s in granted for s in ("read", "enroll", "admin")}, root=root(request))
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status, headers=headers)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


def redirect(request: Request, path: str) -> Response:
    """Go to `path`: a full navigation, also when the request came from htmx."""
    target = root(request) + path
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def error(request: Request, status: int, message: str) -> Response:
    if is_htmx(request):
        # console.js shows it in the page's message bar (as text, never as markup).
        return PlainTextResponse(message, status_code=status, headers={"Cache-Control": "no-store"})
    return render(request, "error.html", status=status, message=message)


def _sign_in(request: Request) -> Response:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if is_htmx(request):  # the page that sent it is the one to come back to
        here = urlsplit(request.headers.get("hx-current-url", "")).path or "/"
    return redirect(request, "/sign-in?next=" + quote(local_path(here), safe="/"))


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form"))
        problems.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"


class ConsoleRoute(APIRoute):
    """Errors as the console shows them, not as the API's JSON."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                return _sign_in(request)
            except IdentityError as exc:
                return error(request, exc.http_status, exc.message)
            except RequestValidationError as exc:
                return error(request, 422, _validation_message(exc))

        return route
