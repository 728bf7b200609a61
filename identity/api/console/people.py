"""People: the grid (keyset pages, search), a person's page (faces, history) and the
corrections made there: rename, merge, split, move, remove, delete, undo a merge."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response

from identity.api.console.core import (
    Admin,
    Console,
    ConsoleRoute,
    Enroller,
    Reader,
    actor,
    redirect,
    render,
    same_origin,
)
from identity.errors import InputError, NotFoundError

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False, dependencies=[Depends(same_origin)])

PAGE = 48  # persons per grid page: a few screens of cards, one query
FACES_PAGE = 120  # faces per page on a person's page
HISTORY_PAGE = 20


def _grid(service, q: str, after: int | None) -> dict:
    """One page of persons, with an exact match (id, external id, alias) first on a search's
    first page: the person asked for by id is found even when no name contains the text."""
    q = q.strip()
    page = service.persons(limit=PAGE, after=after, query=q or None)
    people = list(page.items)
    if q and after is None:
        try:
            exact = service.person(q)
        except (NotFoundError, InputError):
            exact = None
        if exact is not None:
            people = [exact] + [p for p in people if p.id != exact.id]
    return {"people": people, "next_after": page.next_after, "q": q}


@router.get("/people")
def people_page(request: Request, service: Console, _: Reader, q: str = Query("", max_length=256)) -> Response:
    return render(request, "people.html", nav="people", **_grid(service, q, None))


@router.get("/people/grid")
def people_grid(request: Request, service: Console, _: Reader, q: str = Query("", max_length=256),
                after: int | None = Query(None, ge=0, le=2**62)) -> Response:
    return render(request, "_people_grid.html", **_grid(service, q, after))


@router.get("/people/options")
def people_options(request: Request, service: Console, _: Reader) -> Response:
    """`<option>`s for a person field (merge into, move to): a few matches, never the list.
    The text is the asking field's value, whatever the field's name (htmx sends it so)."""
    text = next((v for v in request.query_params.values() if v.strip()), "")[:256]
    people = _grid(service, text, None)["people"][:12] if text.strip() else []
    return render(request, "_person_options.html", people=people)


def _faces(service, person_id: int, after: int | None):
    return service.faces(person=person_id, limit=FACES_PAGE, after=after)


@router.get("/people/{ref}")
def person_page(request: Request, ref: str, service: Console, _: Reader) -> Response:
    person = service.person(ref)
    return render(request, "person.html", nav="people", person=person,
                  faces=_faces(service, person.id, None),
                  history=service.person_history(person.id, limit=HISTORY_PAGE))


@router.get("/people/{person_id}/faces")
def person_faces(request: Request, person_id: int, service: Console, _: Reader,
                 after: int | None = Query(None, ge=0, le=2**62)) -> Response:
    person = service.person(person_id)
    return render(request, "_face_page.html", person=person, faces=_faces(service, person.id, after))


@router.get("/people/{person_id}/history")
def person_history(request: Request, person_id: int, service: Console, _: Reader,
                   before: int | None = Query(None, ge=0, le=2**62)) -> Response:
    return render(request, "_history.html", person_id=person_id,
                  history=service.person_history(person_id, limit=HISTORY_PAGE, before=before))


def _person_changed(request: Request, person_id: int) -> Response:
    """After a change the page is re-read whole: header, faces and history agree."""
    return redirect(request, f"/people/{person_id}")


@router.post("/people/{person_id}/rename")
def rename(request: Request, person_id: int, service: Console, key: Enroller,
           display_name: str = Form("", max_length=256)) -> Response:
    service.rename_person(person_id, display_name.strip() or None, actor=actor(key))
    return _person_changed(request, person_id)


@router.post("/people/{person_id}/merge")
def merge(request: Request, person_id: int, service: Console, key: Admin,
          other: str = Form(..., min_length=1, max_length=256)) -> Response:
    """`other` is merged into this person (its faces move here, its id becomes an alias)."""
    service.merge_persons(person_id, other.strip(), actor=actor(key))
    return _person_changed(request, person_id)


@router.post("/people/{person_id}/delete")
def delete(request: Request, person_id: int, service: Console, key: Admin) -> Response:
    service.delete_person(person_id, actor=actor(key))
    return redirect(request, "/people")


def _selected(face: list[int]) -> list[int]:
    if not face:
        raise InputError("select at least one face first")
    return face


@router.post("/people/{person_id}/split")
def split(request: Request, person_id: int, service: Console, key: Enroller,
          face: list[int] = Form([]), external_id: str = Form(..., min_length=1, max_length=256),
          display_name: str = Form("", max_length=256)) -> Response:
    """The selected faces become a new person."""
    result = service.split_person(person_id, _selected(face), external_id.strip(),
                                  display_name=display_name.strip() or None, actor=actor(key))
    return redirect(request, f"/people/{result.new_person.id}")


@router.post("/people/{person_id}/move")
def move(request: Request, person_id: int, service: Console, key: Enroller,
         face: list[int] = Form([]), to: str = Form(..., min_length=1, max_length=256)) -> Response:
    """The selected faces go to another, existing person."""
    service.move_faces(_selected(face), to.strip(), actor=actor(key))
    return _person_changed(request, person_id)


@router.post("/people/{person_id}/unassign")
def unassign(request: Request, person_id: int, service: Console, key: Enroller,
             face: list[int] = Form([])) -> Response:
    """The selected faces stay stored but belong to nobody (clustering sees them again)."""
    service.unassign_faces(_selected(face), actor=actor(key))
    return _person_changed(request, person_id)


@router.post("/people/{person_id}/remove")
def remove(request: Request, person_id: int, service: Console, key: Admin,
           face: list[int] = Form([])) -> Response:
    """The selected faces are deleted."""
    service.remove_faces(_selected(face), actor=actor(key))
    return _person_changed(request, person_id)


@router.post("/people/{person_id}/undo/{entry_id}")
def undo(request: Request, person_id: int, entry_id: int, service: Console, key: Admin) -> Response:
    """Undo a merge from the history: the merged-away person comes back as it was."""
    result = service.undo_merge(entry_id, actor=actor(key))
    return redirect(request, f"/people/{result.person.id}")


@router.get("/faces/{face_id}/chip")
def chip(face_id: int, service: Console, _: Reader) -> Response:
    """A face's chip for `<img>` (which cannot send the API's key header). A face id is
    never reused, so its chip never changes: the browser keeps it."""
    found = service.chip(face_id)
    return Response(found.jpeg, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=31536000, immutable"})


@router.get("/people/{person_id}/chip")
def cover(person_id: int, service: Console, _: Reader) -> Response:
    """The person's first face's chip: the card picture in the grid, one small query per
    card, asked for lazily by the browser as cards scroll into view."""
    page = service.faces(person=person_id, limit=1)
    if not page.items:
        raise NotFoundError(f"person {person_id} has no face")
    found = service.chip(page.items[0].id)
    return Response(found.jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})
