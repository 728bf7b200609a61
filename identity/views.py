"""How the domain's objects look on the outside: one pydantic model per object, used by
the API's responses and the CLI's `--json` alike, so both emit the same shape."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

__all__ = ["DeleteOut", "MergeOut", "PersonOut", "PersonPageOut", "PersonRefOut"]


class PersonRefOut(BaseModel):
    """Which person a response acted on: both of its names, so a client that sent either
    one can see which person it reached."""

    id: int
    external_id: str


class PersonOut(BaseModel):
    id: int
    external_id: str
    display_name: str | None
    metadata: dict[str, Any]
    aliases: list[str]
    face_count: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, person) -> PersonOut:
        return cls.model_validate(person, from_attributes=True)


class PersonPageOut(BaseModel):
    items: list[PersonOut]
    next_after: int | None


class MergeOut(BaseModel):
    person: PersonOut
    merged_person_id: int | None = None
    merged_external_id: str
    faces_moved: int


class DeleteOut(BaseModel):
    person_id: int
    external_id: str
    faces_deleted: int
    images_deleted: int
