"""Dependencies shared by the routers."""

from __future__ import annotations

from contextlib import contextmanager

from fastapi import Request

from identity.api.jobs import service_lock
from identity.service import Service


def get_service(request: Request) -> Service:
    return request.app.state.service


@contextmanager
def model_call(request: Request):
    """Serialise calls into the networks (see `service_lock`)."""
    with service_lock(request.app.state.service):
        yield


def count_faces(request: Request, n: int) -> None:
    request.app.state.metrics.faces_embedded.inc(n)
