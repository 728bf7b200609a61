"""/persons (under /v1): create, list (keyset pages), get, update, delete (cascades), merge."""

from __future__ import annotations

from fastapi import Query, status

from identity.api.deps import AdminKey, EnrollKey, PersonRef, ReadKey, ServiceDep, actor
from identity.api.routes import versioned
from identity.api.schemas import (
    DeleteOut,
    MergeIn,
    MergeOut,
    PersonCreate,
    PersonOut,
    PersonPageOut,
    PersonUpdate,
)

router = versioned("/persons", tags=["persons"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PersonOut)
def create_person(body: PersonCreate, service: ServiceDep, key: EnrollKey) -> PersonOut:
    """A new person. An external id in use is a 409; a merged-away one too, naming the
    person it was merged into (it resolves to that person)."""
    return PersonOut.model_validate(service.create_person(body.external_id, body.display_name, body.metadata,
                                              actor=actor(key)))


@router.get("", response_model=PersonPageOut)
def list_persons(
    service: ServiceDep,
    _: ReadKey,
    limit: int = Query(50, ge=1, le=1000),
    after: int | None = Query(None, ge=0, le=2**62, description="`next_after` of the previous page"),
    q: str | None = Query(None, max_length=256, description="Substring of the external id or name"),
) -> PersonPageOut:
    page = service.persons(limit=limit, after=after, query=q)
    return PersonPageOut.model_validate(page)


@router.get("/{person}", response_model=PersonOut)
def get_person(person: PersonRef, service: ServiceDep, _: ReadKey) -> PersonOut:
    return PersonOut.model_validate(service.person(person))


@router.patch("/{person}", response_model=PersonOut)
def update_person(person: PersonRef, body: PersonUpdate, service: ServiceDep, key: EnrollKey) -> PersonOut:
    return PersonOut.model_validate(service.update_person(
        person, external_id=body.external_id, display_name=body.display_name,
        rename="display_name" in body.model_fields_set, metadata=body.metadata,
        replace_metadata=body.replace_metadata, actor=actor(key)))


@router.delete("/{person}", response_model=DeleteOut)
def delete_person(person: PersonRef, service: ServiceDep, key: AdminKey) -> DeleteOut:
    return DeleteOut.model_validate(service.delete_person(person, actor=actor(key)))


@router.post("/{person}/merge", response_model=MergeOut)
def merge_person(person: PersonRef, body: MergeIn, service: ServiceDep, key: AdminKey) -> MergeOut:
    """Move every face of `other` to this person; `other`'s external id becomes an alias
    that resolves to this person. `audit_id` names the merge in the audit log:
    `POST /v1/audit/{audit_id}/undo` undoes it while its faces still exist."""
    result = service.merge_persons(person, body.other, actor=actor(key))
    return MergeOut.model_validate(result)
