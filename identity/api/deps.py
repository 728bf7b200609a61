"""Dependencies shared by the routers, as `Annotated` aliases: a route names what it
needs (`service: ServiceDep`, `key: EnrollKey`) and FastAPI supplies it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Path, Request

from identity.api.security import require
from identity.service import Service
from identity.store.keys import ApiKey


async def get_service(request: Request) -> Service:
    # async: a plain def dependency costs a trip through the thread pool on every request.
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
ReadKey = Annotated[ApiKey, Depends(require("read"))]
EnrollKey = Annotated[ApiKey, Depends(require("enroll"))]
AdminKey = Annotated[ApiKey, Depends(require("admin"))]
# The one reference rule (identity/names.py), stated where clients read it: the schema.
PersonRef = Annotated[str, Path(
    max_length=256,
    description="A person: digits only (0-9) are the person's id; anything else is an external "
    "id or an alias. External ids are never made only of digits, so the two cannot collide.")]


@contextmanager
def model_call(request: Request):
    """Serialise calls into the networks (see `Service.model_lock`)."""
    with request.app.state.service.model_lock:
        yield


def actor(key: ApiKey) -> str:
    """How the audit log names what a key did: `key:<key id> (<key name>)`."""
    from identity.store.audit import key_actor

    return key_actor(key.key_id, key.name)


def count_faces(request: Request, n: int) -> None:
    request.app.state.metrics.faces_embedded.inc(n)
