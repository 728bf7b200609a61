"""Signing in with an API key, and out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from identity.api.console.core import (
    COOKIE,
    Console,
    ConsoleRoute,
    SignInRequired,
    local_path,
    redirect,
    render,
    root,
    same_origin,
    signed_in,
)
from identity.errors import AuthenticationError

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False, dependencies=[Depends(same_origin)])


@router.get("/")
def home(request: Request) -> Response:
    return RedirectResponse(root(request) + "/people", status_code=303)


@router.get("/sign-in")
def sign_in_page(request: Request, next: str = "/") -> Response:
    try:
        signed_in(request)  # already signed in: a key shows its name and scopes here
    except SignInRequired:
        pass
    return render(request, "sign_in.html", next=local_path(next))


@router.post("/sign-in")
def sign_in(request: Request, service: Console, key: str = Form(..., max_length=512),
            next: str = Form("/")) -> Response:
    secret = key.strip()
    try:
        service.authenticate(secret)
    except AuthenticationError:
        raise AuthenticationError("that key is not valid (mistyped, or revoked)") from None
    response = redirect(request, local_path(next, "/people"))
    response.set_cookie(COOKIE, secret, httponly=True, samesite="strict", path=root(request) or "/",
                        secure=request.url.scheme == "https")
    return response


@router.post("/sign-out")
def sign_out(request: Request) -> Response:
    response = redirect(request, "/sign-in")
    response.delete_cookie(COOKIE, path=root(request) or "/")
    return response
