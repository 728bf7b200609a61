"""/v1/persons: create, list (keyset pages), get, update, delete (cascades), merge."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Query, status

from identity.api.deps import get_service
from identity.api.schemas import (
    DeleteOut,
    MergeIn,
    MergeOut,
    PersonCreate,
    PersonOut,
    PersonPageOut,
    PersonUpdate,
)
from identity.api.security import require
from identity.service import Service

router = APIRouter(prefix="/v1/persons", tags=["persons"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PersonOut,
             dependencies=[Depends(require("enroll"))])
def create_person(body: PersonCreate, service: Service = Depends(get_service)) -> PersonOut:
    return PersonOut.of(service.store.create_person(body.external_id, body.display_name, body.metadata))


@router.get("", response_model=PersonPageOut, dependencies=[Depends(require("read"))])
def list_persons(
    limit: int = Query(50, ge=1, le=1000),
    after: int | None = Query(None, ge=0, le=2**62, description="`next_after` of the previous page"),
    q: str | None = Query(None, max_length=256, description="Substring of the external id or name"),
    service: Service = Depends(get_service),
) -> PersonPageOut:
    page = service.store.list_persons(limit=limit, after=after, query=q)
    return PersonPageOut(items=[PersonOut.of(p) for p in page.items], next_after=page.next_after)


@router.get("/{person}", response_model=PersonOut, dependencies=[Depends(require("read"))])
def get_person(person: str, service: Service = Depends(get_service)) -> PersonOut:
    return PersonOut.of(service.store.get_person(person))


@router.patch("/{person}", response_model=PersonOut, dependencies=[Depends(require("enroll"))])
def update_person(person: str, body: PersonUpdate, service: Service = Depends(get_service)) -> PersonOut:
    store = service.store
    current = store.get_person(person)
    if body.external_id is not None and body.external_id != current.external_id:
        current = store.set_external_id(current.id, body.external_id)
    if "display_name" in body.model_fields_set:
        current = store.rename_person(current.id, body.display_name)
    if body.metadata is not None:
        current = store.update_metadata(current.id, body.metadata, replace=body.replace_metadata)
    return PersonOut.of(current)


@router.delete("/{person}", response_model=DeleteOut, dependencies=[Depends(require("admin"))])
def delete_person(person: str, service: Service = Depends(get_service)) -> DeleteOut:
    return DeleteOut(**asdict(service.store.delete_person(person)))


@router.post("/{person}/merge", response_model=MergeOut, dependencies=[Depends(require("admin"))])
def merge_person(person: str, body: MergeIn, service: Service = Depends(get_service)) -> MergeOut:
    """Move every face of `other` to this person; `other`'s external id becomes an alias."""
    result = service.store.merge_persons(person, body.other)
    return MergeOut(person=PersonOut.of(result.person), merged_external_id=result.merged_external_id,
                    faces_moved=result.faces_moved)
