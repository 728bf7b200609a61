"""Search by photo: every face in it boxed and named, or unknown with the nearest person."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.responses import Response

from identity.api.console.core import Console, ConsoleRoute, Reader, render, same_origin
from identity.api.deps import model_call
from identity.api.uploads import read_uploads

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False, dependencies=[Depends(same_origin)])

PREVIEW_SIDE = 960  # the photo is shown back at most this large (a data: URL, never stored)


@dataclass(frozen=True)
class Preview:
    url: str  # data:image/jpeg;base64,…
    width: int  # the photo's upright full-resolution size: boxes are in these pixels
    height: int


def preview(data: bytes, name: str, settings) -> Preview:
    """The photo, upright (EXIF applied, HEIC decoded: browsers show neither reliably),
    small enough to send back inline."""
    from PIL import Image

    from identity.faces.decode import decode_image

    image = decode_image(data, source=name, max_pixels=settings.pipeline.max_image_pixels, max_side=PREVIEW_SIDE)
    buffer = io.BytesIO()
    Image.fromarray(image.pixels).save(buffer, format="JPEG", quality=82)
    return Preview("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
                   image.width, image.height)


@router.get("/search")
def search_page(request: Request, _: Reader) -> Response:
    return render(request, "search.html", nav="search")


@router.post("/search")
def search(request: Request, service: Console, _: Reader,
           image: UploadFile = File(..., description="A photo")) -> Response:
    (upload,) = read_uploads([image], 1)
    with model_call(request):
        found = service.search_image(upload.ref())
    shown = preview(upload.data, upload.name, service.settings)
    return render(request, "_search_result.html", source=upload.name, photo=shown,
                  faces=list(enumerate(found, start=1)))
