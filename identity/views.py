"""How the domain's objects look on the outside: one pydantic model per object, used by
the API's responses and the CLI's `--json` alike, so both emit the same shape.

Every model reads its domain object's attributes (`from_attributes`): `XOut.model_validate(obj)`
is the one conversion, whoever calls it. Where the outside differs from the inside (ids as
JSON object keys, tuples as lists), a validator of the model says so."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AuditEntryOut", "AuditPageOut", "ChipOut", "DeleteOut", "FacePageOut", "MergeOut", "MoveOut", "Out",
           "PersonOut", "PersonPageOut", "PersonRefOut", "RemoveOut", "SplitOut", "StoredFaceOut", "UnmergeOut"]


class Out(BaseModel):
    """A response body built from a domain object: `Model.model_validate(obj)`."""

    model_config = ConfigDict(from_attributes=True)


class PersonRefOut(Out):
    """Which person a response acted on: both of its names, so a client that sent either
    one can see which person it reached."""

    id: int
    external_id: str


class PersonOut(Out):
    id: int
    external_id: str
    display_name: str | None
    metadata: dict[str, Any]
    aliases: list[str]
    face_count: int
    created_at: datetime
    updated_at: datetime


class PersonPageOut(Out):
    items: list[PersonOut]
    next_after: int | None


class MergeOut(Out):
    person: PersonOut
    merged_person_id: int | None = None
    merged_external_id: str
    faces_moved: int
    audit_id: int | None = Field(None, description="The merge's audit entry: `POST /v1/audit/{id}/undo` undoes it.")


class DeleteOut(Out):
    person_id: int
    external_id: str
    faces_deleted: int
    images_deleted: int


# --- faces, corrections and the audit log ----------------------------------------------------


class ChipOut(Out):
    """Where a face's chip (`GET /v1/faces/{id}/chip`, a square JPEG) sits."""

    size: int = Field(description="Side of the square chip in pixels.")
    landmarks: list[list[float]] = Field(
        description="The 5 landmarks (eyes, nose, mouth corners) as [x, y] in chip pixels: "
        "enough to re-align the face for any model.")
    region: list[float] = Field(
        description="x, y, side of the chip's square in the original photo's upright, "
        "full-resolution pixels (it may extend past the photo; that part is black).")
    bytes: int


class StoredFaceOut(Out):
    """A stored face: who it belongs to, where it is in its photo, its chip."""

    id: int
    person_id: int | None = Field(description="None: the face belongs to nobody (unassigned).")
    external_id: str | None
    image_id: int
    image_sha256: str
    source: str | None = Field(description="Where the photo was read from at enrollment.")
    face_index: int
    box: list[float] = Field(description="x1, y1, x2, y2 in the photo's full-resolution pixels.")
    landmarks: list[list[float]]
    det_prob: float
    quality: float
    model: str
    created_at: datetime
    chip: ChipOut | None = Field(description="None: no chip was kept for this face.")


class FacePageOut(Out):
    items: list[StoredFaceOut]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last.")


class AuditEntryOut(Out):
    """One person operation from the audit log."""

    id: int
    action: str = Field(description="create, rename, update, merge, unmerge, split, move, assign, "
                        "unassign, remove or delete.")
    person_id: int | None = Field(description="The person acted on (for a merge: the survivor).")
    external_id: str | None = Field(description="That person's external id at the time.")
    persons: list[int] = Field(description="Every person the operation touched.")
    actor: str = Field(description="`key:<key id> (<key name>)` for an API key, `user:<name>` for "
                       "the CLI or a library user.")
    details: dict[str, Any]
    undone_by: int | None = Field(description="The entry that undid this one, if any.")
    undoable: bool = Field(description="A merge not undone yet: `POST /v1/audit/{id}/undo` may undo it "
                           "while its faces still exist.")
    created_at: datetime


class AuditPageOut(Out):
    items: list[AuditEntryOut] = Field(description="Newest first.")
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null on the last.")


class MoveOut(Out):
    person: PersonOut | None = Field(description="Who has the faces now (null: nobody, after unassign).")
    moved: list[int] = Field(description="The faces that changed person (faces already there are left out).")
    previous: dict[str, int | None] = Field(description="Face id → the person it had (null: nobody).")
    audit_id: int | None = Field(description="The audit entry; null when nothing changed.")

    @field_validator("previous", mode="before")
    @classmethod
    def _face_ids_as_keys(cls, previous: dict) -> dict:
        return {str(k): v for k, v in previous.items()}  # JSON object keys are strings


class RemoveOut(Out):
    face_ids: list[int]
    persons: list[int] = Field(description="The persons the faces belonged to (they stay, maybe faceless).")
    images_deleted: int = Field(description="Photos no other face used any more.")
    audit_id: int


class SplitOut(Out):
    person: PersonOut = Field(description="The person split, after.")
    new_person: PersonOut
    faces_moved: int
    audit_id: int


class UnmergeOut(Out):
    person: PersonOut = Field(description="The merged-away person, back with its id, external id, "
                              "aliases, name, metadata and faces.")
    survivor: PersonOut
    faces_moved: int
    audit_id: int = Field(description="The 'unmerge' entry.")
    kept_survivor_changes: bool = Field(
        description="The survivor's name or metadata changed after the merge, so they were left as they are.")
