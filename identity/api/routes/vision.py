"""/search, /verify, /detect (under /v1): one request, answered in this process."""

from __future__ import annotations

from fastapi import Depends, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from identity.api.deps import ServiceDep, count_faces, model_call
from identity.api.routes import versioned
from identity.api.schemas import (
    DetectImageOut,
    DetectOut,
    EmbeddingQuery,
    EmbeddingSearchOut,
    ErrorBody,
    FaceSearchOut,
    Level,
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
    return SearchOut(source=upload.name, faces=[FaceSearchOut.model_validate(f) for f in found])


@router.post("/search/embedding", response_model=EmbeddingSearchOut)
async def search_embedding(body: EmbeddingQuery, service: ServiceDep) -> EmbeddingSearchOut:
    """Search with embeddings computed elsewhere (same model: `dim` must match)."""
    # async: a plain def route costs two trips through the thread pool (the call, then the
    # response's validation), each a GIL hand-over that cost more CPU than the search.
    if body.persons is None and len(body.vectors) <= 8 and _answers_quickly(service):
        found = service.search_embeddings(body.vectors, k=body.k, level=body.level)
    else:
        found = await run_in_threadpool(service.search_embeddings, body.vectors, k=body.k, level=body.level,
                                        persons=body.persons)
    return EmbeddingSearchOut(results=[FaceSearchOut.model_validate(f) for f in found])


def _answers_quickly(service) -> bool:
    """Whether a search by embedding may run on the event loop: an approximate index is
    loaded (a fraction of a millisecond a query; the exact scan of a large index, or
    pgvector's SQL while the index loads, go to a thread). Person names come from memory
    (identity/store/readcache.py); a name not seen yet is one indexed read."""
    if not service.opened()["index"]:
        return False
    mirror = service.index
    return mirror.ready and mirror.index.spec.approximate


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
    return VerifyOut.model_validate(result)


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
                out.append(DetectImageOut.model_validate(result))
    if len(uploads) == 1 and out[0].error is not None:
        raise _single_error(out[0])
    return DetectOut(images=out)


def _single_error(item: DetectImageOut) -> InputError:
    from identity.errors import ImageDecodeError, ImageTooLargeError

    cls = ImageTooLargeError if item.error.code == "image_too_large" else ImageDecodeError
    return cls(item.error.message, path=item.error.path or item.source)
