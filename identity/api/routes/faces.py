"""Stored faces and corrections, under /v1: list and read faces and their chips; move,
assign, unassign and remove faces; split a person; a person's history; the audit log and
undoing a merge.

Scopes: reading (faces, chips, history) needs `read`; corrections that keep every face
(move, assign, unassign, split) need `enroll`; removing faces and undoing a merge need
`admin`, as deleting and merging persons do. Every correction is recorded in the audit
log under the calling key.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from fastapi import Path, Query, Request, Response, status
from pydantic import BaseModel, Field

from identity.api.deps import AdminKey, EnrollKey, PersonRef, ReadKey, ServiceDep, actor
from identity.api.routes import versioned
from identity.views import (
    AuditEntryOut,
    AuditPageOut,
    FacePageOut,
    MoveOut,
    RemoveOut,
    SplitOut,
    StoredFaceOut,
    UnmergeOut,
)

faces_router = versioned("/faces", tags=["faces"])
persons_router = versioned("/persons", tags=["persons"])
audit_router = versioned("/audit", tags=["audit"])
routers = (faces_router, persons_router, audit_router)

_MAX_ID = 2**63 - 1
FaceId = Annotated[int, Path(ge=1, le=_MAX_ID, description="A face id.")]
EntryId = Annotated[int, Path(ge=1, le=_MAX_ID, description="An audit entry id.")]
FaceIds = Annotated[list[Annotated[int, Field(ge=1, le=_MAX_ID)]], Field(
    min_length=1, max_length=10_000, description="Face ids (as `GET /v1/faces` lists them).")]
Action = Literal["create", "rename", "update", "merge", "unmerge", "split", "move", "assign", "unassign",
                 "remove", "delete"]
PersonField = Annotated[str, Field(
    min_length=1, max_length=256,
    description="The person: digits are a person id, anything else an external id or alias.")]


# --- bodies ------------------------------------------------------------------------------------------


class MoveIn(BaseModel):
    face_ids: FaceIds
    person: PersonField


class FacesIn(BaseModel):
    face_ids: FaceIds


class SplitIn(BaseModel):
    face_ids: FaceIds = Field(description="Faces of this person that become the new person.")
    external_id: str = Field(min_length=1, max_length=256, description="The new person's external id.")
    display_name: str | None = Field(None, max_length=256)
    metadata: dict[str, Any] = Field(default_factory=dict)


# --- faces -----------------------------------------------------------------------------------------------


@faces_router.get("", response_model=FacePageOut)
def list_faces(
    service: ServiceDep,
    _: ReadKey,
    person: str | None = Query(None, max_length=256, description="Only this person's faces (id, external id or alias)."),
    unassigned: bool = Query(False, description="Only the faces that belong to nobody."),
    limit: int = Query(100, ge=1, le=1000),
    after: int | None = Query(None, ge=0, le=_MAX_ID, description="`next_after` of the previous page"),
) -> FacePageOut:
    """Faces in id order, a page at a time: a person's, the unassigned ones, or all."""
    page = service.faces(person=person, unassigned=unassigned, limit=limit, after=after)
    return FacePageOut.model_validate(page)


@faces_router.get("/{face_id}", response_model=StoredFaceOut)
def get_face(face_id: FaceId, service: ServiceDep, _: ReadKey) -> StoredFaceOut:
    return StoredFaceOut.model_validate(service.face(face_id))


@faces_router.get(
    "/{face_id}/chip",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "The chip, a square JPEG. Its landmarks "
                     "and its place in the photo are in `GET /v1/faces/{face_id}` (`chip`)."}},
)
def get_chip(face_id: FaceId, request: Request, service: ServiceDep, _: ReadKey) -> Response:
    """The face's chip: a square JPEG twice the face box, the face in the middle. 404 when
    the face does not exist or has no chip."""
    chip = service.chip(face_id)
    # A face's chip never changes (a face id is never reused), so clients may keep it.
    etag = '"' + hashlib.sha256(chip.jpeg).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(chip.jpeg, media_type="image/jpeg", headers=headers)


@faces_router.post("/move", response_model=MoveOut)
def move_faces(body: MoveIn, service: ServiceDep, key: EnrollKey) -> MoveOut:
    """Give the faces to `person`, whoever had them. Faces already there are left out of
    `moved`; nothing changes when an id is unknown."""
    return MoveOut.model_validate(service.move_faces(body.face_ids, body.person, actor=actor(key)))


@faces_router.post("/assign", response_model=MoveOut)
def assign_faces(body: MoveIn, service: ServiceDep, key: EnrollKey) -> MoveOut:
    """Give unassigned faces to `person`. A face that belongs to someone else is a 409 and
    nothing changes (use move for it)."""
    return MoveOut.model_validate(service.assign_faces(body.face_ids, body.person, actor=actor(key)))


@faces_router.post("/unassign", response_model=MoveOut)
def unassign_faces(body: FacesIn, service: ServiceDep, key: EnrollKey) -> MoveOut:
    """The faces belong to nobody afterwards; they stay stored (and clusterable)."""
    return MoveOut.model_validate(service.unassign_faces(body.face_ids, actor=actor(key)))


@faces_router.post("/remove", response_model=RemoveOut)
def remove_faces(body: FacesIn, service: ServiceDep, key: AdminKey) -> RemoveOut:
    """Delete the faces (embedding and chip) and the photos no other face uses."""
    return RemoveOut.model_validate(service.remove_faces(body.face_ids, actor=actor(key)))


@faces_router.delete("/{face_id}", response_model=RemoveOut)
def remove_face(face_id: FaceId, service: ServiceDep, key: AdminKey) -> RemoveOut:
    """Delete one face (as `POST /v1/faces/remove` with one id)."""
    return RemoveOut.model_validate(service.remove_faces([face_id], actor=actor(key)))


# --- a person's faces, split and history -------------------------------------------------------------------


@persons_router.get("/{person}/faces", response_model=FacePageOut)
def person_faces(
    person: PersonRef, service: ServiceDep, _: ReadKey,
    limit: int = Query(100, ge=1, le=1000),
    after: int | None = Query(None, ge=0, le=_MAX_ID, description="`next_after` of the previous page"),
) -> FacePageOut:
    """This person's faces in id order, a page at a time."""
    page = service.faces(person=person, limit=limit, after=after)
    return FacePageOut.model_validate(page)


@persons_router.post("/{person}/split", status_code=status.HTTP_201_CREATED, response_model=SplitOut)
def split_person(person: PersonRef, body: SplitIn, service: ServiceDep, key: EnrollKey) -> SplitOut:
    """The chosen faces of this person become a new person. A face of someone else, or an
    external id already in use (a merged-away one included: the 409 names its survivor),
    changes nothing."""
    return SplitOut.model_validate(service.split_person(person, body.face_ids, body.external_id,
                                            display_name=body.display_name, metadata=body.metadata,
                                            actor=actor(key)))


@persons_router.get("/{person}/history", response_model=AuditPageOut)
def person_history(
    person: PersonRef, service: ServiceDep, _: ReadKey,
    limit: int = Query(50, ge=1, le=1000),
    before: int | None = Query(None, ge=1, le=_MAX_ID, description="`next_before` of the previous page"),
) -> AuditPageOut:
    """What happened to this person, newest first, including the history of every person
    merged into them. A deleted person's history is found by its last external id."""
    return AuditPageOut.model_validate(service.person_history(person, limit=limit, before=before))


# --- the audit log ---------------------------------------------------------------------------------------------


@audit_router.get("", response_model=AuditPageOut)
def audit_log(
    service: ServiceDep, _: ReadKey,
    action: Annotated[Action | None, Query(description="Only this action.")] = None,
    limit: int = Query(50, ge=1, le=1000),
    before: int | None = Query(None, ge=1, le=_MAX_ID, description="`next_before` of the previous page"),
) -> AuditPageOut:
    """Every person operation, newest first."""
    return AuditPageOut.model_validate(service.audit_log(limit=limit, before=before, action=action))


@audit_router.get("/{entry_id}", response_model=AuditEntryOut)
def audit_entry(entry_id: EntryId, service: ServiceDep, _: ReadKey) -> AuditEntryOut:
    return AuditEntryOut.model_validate(service.audit_entry(entry_id))


@audit_router.post("/{entry_id}/undo", response_model=UnmergeOut)
def undo(entry_id: EntryId, service: ServiceDep, key: AdminKey) -> UnmergeOut:
    """Undo a merge: the merged-away person comes back with its id, external id, aliases,
    name, metadata and the faces the merge moved. 409 when the entry is no merge, was
    undone already, or one of its faces was removed or moved since."""
    return UnmergeOut.model_validate(service.undo_merge(entry_id, actor=actor(key)))

