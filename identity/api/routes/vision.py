"""/search, /verify, /detect (under /v1): one request, answered in this process."""

from __future__ import annotations

from fastapi import Depends, File, Form, Request, UploadFile

from identity.api.deps import ServiceDep, count_faces, model_call
from identity.api.routes import versioned
from identity.api.schemas import (
    DetectImageOut,
    DetectOut,
    EmbeddingQuery,
    EmbeddingSearchOut,
    ErrorBody,
    FaceOut,
    FaceSearchOut,
    Level,
    PersonRefOut,
    SearchOut,
    VerifyOut,
)
from identity.api.security import require
from identity.api.uploads import read_uploads
from identity.errors import InputError
from identity.faces.types import ImageResult

router = versioned(tags=["recognition"], dependencies=[Depends(require("read"))])


@router.post("/search", response_model=SearchOut)
def search(
    request: Request,
    service: ServiceDep,
    image: UploadFile = File(..., description="A photo; every face in it is searched"),
    k: int | None = Form(None, ge=1, le=1000),
    level: Level | None = Form(None),
) -> SearchOut:
    (upload,) = read_uploads([image], 1)
    with model_call(request):
        found = service.search_image(upload.ref(), k=k, level=level)
    count_faces(request, len(found))
    return SearchOut(source=upload.name, faces=[FaceSearchOut.of(f) for f in found])


@router.post("/search/embedding", response_model=EmbeddingSearchOut)
def search_embedding(body: EmbeddingQuery, service: ServiceDep) -> EmbeddingSearchOut:
    """Search with embeddings computed elsewhere (same model: `dim` must match)."""
    found = service.search_embeddings(body.vectors, k=body.k, level=body.level, persons=body.persons)
    return EmbeddingSearchOut(results=[FaceSearchOut.of(f) for f in found])


@router.post("/verify", response_model=VerifyOut)
def verify(
    request: Request,
    service: ServiceDep,
    a: UploadFile = File(..., description="First photo (its largest face is compared)"),
    b: UploadFile | None = File(None, description="Second photo; or give `person` instead"),
    person: str | None = Form(None, max_length=256, description="An enrolled person: digits only are "
                              "the person's id, anything else an external id or alias"),
    level: Level | None = Form(None),
) -> VerifyOut:
    if (b is None) == (person is None):
        raise InputError("give exactly one of `b` (a second photo) or `person`")
    uploads = read_uploads([a] + ([b] if b is not None else []), 2)
    with model_call(request):
        if person is not None:
            result = service.verify_person(uploads[0].ref(), person, level=level)
        else:
            result = service.verify(uploads[0].ref(), uploads[1].ref(), level=level)
    count_faces(request, len(uploads))
    return VerifyOut(
        model=result.model, similarity=result.similarity, distance=result.distance,
        threshold=result.threshold, level=result.level, same=result.same,
        face_a=FaceOut.of(result.face_a), face_b=FaceOut.of(result.face_b) if result.face_b else None,
        faces_in_a=result.faces_in_a, faces_in_b=result.faces_in_b,
        person=None if result.person_id is None else PersonRefOut(id=result.person_id,
                                                                  external_id=result.person_external_id),
    )


@router.post("/detect", response_model=DetectOut)
def detect(
    request: Request,
    service: ServiceDep,
    images: list[UploadFile] = File(..., description="One or more photos"),
) -> DetectOut:
    """Boxes, landmarks and probabilities; an unreadable image gets an `error`, the others still run."""
    uploads = read_uploads(images, service.settings.api.max_images_per_request)
    out = []
    with model_call(request):
        for result in service.detect([u.ref() for u in uploads]):
            if isinstance(result, ImageResult):
                error = result.error
                body = error.to_dict() if hasattr(error, "to_dict") else {"code": "unreadable_image", "message": str(error)}
                out.append(DetectImageOut(source=result.source, error=ErrorBody(**body)))
            else:
                out.append(DetectImageOut(source=result.source, width=result.width, height=result.height,
                                          faces=[FaceOut.of(f) for f in result.faces]))
    if len(uploads) == 1 and out[0].error is not None:
        raise _single_error(out[0])
    return DetectOut(images=out)


def _single_error(item: DetectImageOut) -> InputError:
    from identity.errors import ImageDecodeError, ImageTooLargeError

    cls = ImageTooLargeError if item.error.code == "image_too_large" else ImageDecodeError
    return cls(item.error.message, path=item.error.path or item.source)
