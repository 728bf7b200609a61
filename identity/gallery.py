"""The Python API: a gallery of enrolled people, for programs that use `identity` as a
library (as deepface and InsightFace users do) rather than through the CLI or HTTP.

    import identity

    with identity.open() as gallery:                  # the embedded database, default model
        gallery.enroll("photos/")                     # photos/<person>/*.jpg
        for face in gallery.search("group.jpg"):
            print(face.matches[0].external_id if face.known else "unknown")

Everything here is a thin, typed veneer over `identity.service.Service`, which the CLI and
the API use too, so the three answer alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from identity.config import Settings, get_settings
from identity.enroll import EnrollItem, EnrollSummary, items_from_directory, items_from_manifest
from identity.errors import InputError
from identity.files import expand_images
from identity.service import Clustering, Detection, FaceSearch, Service, Verification
from identity.vocabulary import Level

PathLike = str | Path


class Gallery:
    """Enrolled people and the operations on them. Open with `identity.open()`; close (or
    use as a context manager) to stop the index follower and the database pool."""

    def __init__(self, service: Service) -> None:
        self.service = service

    @property
    def settings(self) -> Settings:
        return self.service.settings

    def close(self) -> None:
        self.service.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enroll(self, source: PathLike, *, person: str | None = None, largest_face: bool = False,
               report: PathLike | None = None) -> EnrollSummary:
        """Enroll a folder with one sub-folder per person, a CSV/JSONL manifest, or (with
        `person`) one photo or a folder of photos of that person. Idempotent."""
        path = Path(source)
        if person is not None:
            items: list = [EnrollItem(str(p), person) for p in expand_images([path])]
        elif path.is_dir():
            items = list(items_from_directory(path))
        elif path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
            items = list(items_from_manifest(path))
        else:
            raise InputError("give a folder of per-person folders, a manifest, or person=", path=str(path))
        return self.service.enroll(items, largest_face=largest_face,
                                   report=Path(report) if report is not None else None)

    def search(self, image: PathLike, *, k: int | None = None, level: Level | str | None = None) -> list[FaceSearch]:
        """Every face in the photo with the enrolled persons it matches, best first."""
        return self.service.search_image(image, k=k, level=_level(level))

    def verify(self, a: PathLike, b: PathLike | None = None, *, person: int | str | None = None,
               level: Level | str | None = None) -> Verification:
        """The (largest) face of `a` against photo `b`, or against an enrolled `person`."""
        if (b is None) == (person is None):
            raise InputError("give exactly one of b (a second photo) or person")
        if person is not None:
            return self.service.verify_person(a, person, level=_level(level))
        return self.service.verify(a, b, level=_level(level))

    def detect(self, images: PathLike | Iterable[PathLike]) -> list[Detection]:
        """Boxes, landmarks and probabilities (no embedding network needed). An unreadable
        image raises its `ImageDecodeError`."""
        found = []
        for item in self.service.detect(expand_images(_many(images))):
            if not isinstance(item, Detection):
                raise item.error  # type: ignore[misc]
            found.append(item)
        return found

    def cluster(self, images: PathLike | Iterable[PathLike], **params: Any) -> Clustering:
        """Group the faces of unlabelled photos into people (`params` override the
        clustering settings: algorithm, threshold, …)."""
        from identity.cluster import ClusterParams

        return self.service.cluster_images(expand_images(_many(images)),
                                           params=ClusterParams.from_settings(self.settings, **params))

    def person(self, ref: int | str):
        return self.service.person(ref)


def open(settings: Settings | None = None, **overrides: Any) -> Gallery:  # noqa: A001 - identity.open reads best
    """A gallery on the configured database and model; keyword arguments override single
    settings (`database_url=`, `model=`, `data_dir=`, `device=`, …)."""
    base = settings or get_settings()
    return Gallery(Service(base.replace(**overrides) if overrides else base))


def _many(value: PathLike | Iterable[PathLike]) -> list[PathLike]:
    return [value] if isinstance(value, (str, Path)) else list(value)


def _level(level: Level | str | None) -> str | None:
    if level is None:
        return None
    if level not in Level.values():
        raise InputError(f"level must be one of {', '.join(Level.values())} (got {level!r})")
    return Level(level).value
