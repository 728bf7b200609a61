"""The routers. Everything but the health endpoints lives under `/v1`, written once here:
each area's router is made by `versioned`, so its routes carry their full path (which the
latency metric labels them by)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

API_PREFIX = "/v1"


def versioned(prefix: str = "", **options: Any) -> APIRouter:
    return APIRouter(prefix=API_PREFIX + prefix, **options)
