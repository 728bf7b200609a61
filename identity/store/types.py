"""Rows and results that cross the store's boundary. Plain frozen dataclasses: no SQL here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from identity.faces.types import ImageResult


@dataclass(frozen=True)
class ModelInfo:
    """The embedding model a batch of faces was computed with."""

    name: str
    version: str
    dim: int


@dataclass(frozen=True)
class Person:
    id: int
    external_id: str
    display_name: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    aliases: tuple[str, ...] = ()
    face_count: int = 0


@dataclass(frozen=True)
class PersonPage:
    items: tuple[Person, ...]
    next_after: int | None  # pass as `after` for the next page; None on the last page


@dataclass(frozen=True)
class FaceRow:
    """A stored face, without its embedding (for listings)."""

    id: int
    image_id: int
    image_sha256: str
    source: str | None
    face_index: int
    box: tuple[float, float, float, float]
    det_prob: float
    quality: float
    model: str
    model_version: str
    person_id: int | None


@dataclass(frozen=True)
class KnownFace:
    face_id: int
    face_index: int
    model: str
    person_id: int | None
    person_external_id: str | None


@dataclass(frozen=True)
class KnownImage:
    """An image already in the store, with the faces enrolled from it."""

    id: int
    sha256: str  # hex
    source: str | None
    width: int
    height: int
    faces: tuple[KnownFace, ...] = ()

    def face(self, model: str, face_index: int) -> KnownFace | None:
        for known in self.faces:
            if known.model == model and known.face_index == face_index:
                return known
        return None


@dataclass(frozen=True)
class FacesToAdd:
    """One processed image and what to enroll from it.

    `external_id` names the person every selected face belongs to (created on demand,
    an alias resolves to its person); None stores the faces unassigned. `face_indexes`
    selects faces by their position in `image.faces` (detection order); None = all.
    """

    image: ImageResult
    external_id: str | None = None
    display_name: str | None = None
    face_indexes: tuple[int, ...] | None = None
    actor: str | None = None  # recorded in the audit log for a person this creates

    def selected(self) -> tuple[int, ...]:
        if self.face_indexes is None:
            return tuple(range(len(self.image.faces)))
        return tuple(self.face_indexes)


AddStatus = Literal["added", "already_present", "conflict", "no_face"]


@dataclass(frozen=True)
class AddOutcome:
    """What `Store.add_faces` did with one `FacesToAdd`, in input order.

    added: at least one selected face was new and is now stored.
    already_present: every selected face was stored before, with the same person.
    conflict: a selected face is already enrolled to a different person; nothing
      was written for this image (`detail` says which person).
    no_face: nothing was selected; nothing was written.
    """

    source: str
    sha256: str | None
    status: AddStatus
    image_id: int | None = None
    person_id: int | None = None
    face_ids: tuple[int, ...] = ()  # of the selected faces, new or already present
    detail: str | None = None


@dataclass(frozen=True)
class DeleteResult:
    person_id: int
    external_id: str
    faces_deleted: int
    images_deleted: int


@dataclass(frozen=True)
class MergeResult:
    person: Person  # the kept person, after the merge
    merged_external_id: str  # now an alias of `person`
    faces_moved: int
    merged_person_id: int | None = None  # the id the merged-away person had
    audit_id: int | None = None  # the merge's audit entry: what `undo_merge` takes


@dataclass(frozen=True)
class Change:
    """One change-log row: the search index replays these in `seq` order."""

    seq: int
    op: Literal["insert", "delete", "update"]
    face_id: int
    person_id: int | None


@dataclass(frozen=True)
class ExportResult:
    out_dir: str
    files: tuple[str, ...]
    persons: int
    faces: int
    watermark: int


# --- corrections and the audit log (identity/store/corrections.py, audit.py) ----------------


@dataclass(frozen=True)
class AuditEntry:
    """One person operation: what (`action`, `details`), when, by whom (`actor`: `key:<id>
    (<name>)` for an API key, `user:<name>` for the CLI or a library user), on whom
    (`person_id`/`external_id`: the subject at the time; `persons`: everyone touched)."""

    id: int
    action: str
    person_id: int | None
    external_id: str | None
    persons: tuple[int, ...]
    actor: str
    details: dict[str, Any]
    undone_by: int | None
    created_at: datetime

    @property
    def undoable(self) -> bool:
        return self.action == "merge" and self.undone_by is None


@dataclass(frozen=True)
class AuditPage:
    items: tuple[AuditEntry, ...]  # newest first
    next_before: int | None  # pass as `before` for the next (older) page; None on the last


@dataclass(frozen=True)
class ChipInfo:
    """Where a face's chip sits: its side in pixels, the 5 landmarks in chip pixels and the
    chip's square in the original photo (x, y, side, upright full-resolution pixels)."""

    size: int
    landmarks: tuple[tuple[float, float], ...]
    region: tuple[float, float, float]
    bytes: int


@dataclass(frozen=True)
class FaceInfo:
    """A stored face with its owner and chip, without its embedding."""

    id: int
    person_id: int | None
    external_id: str | None
    image_id: int
    image_sha256: str
    source: str | None
    face_index: int
    box: tuple[float, ...]
    landmarks: tuple[tuple[float, float], ...]
    det_prob: float
    quality: float
    model: str
    created_at: datetime
    chip: ChipInfo | None = None


@dataclass(frozen=True)
class FacePage:
    items: tuple[FaceInfo, ...]
    next_after: int | None


@dataclass(frozen=True)
class MoveResult:
    """Faces given to `person` (None: unassigned). `moved` lists the faces that changed
    owner, `previous` who had each of them (None: nobody)."""

    person: Person | None
    moved: tuple[int, ...]
    previous: dict[int, int | None]
    audit_id: int | None  # None when nothing changed


@dataclass(frozen=True)
class RemoveResult:
    face_ids: tuple[int, ...]
    persons: tuple[int, ...]  # who had them
    images_deleted: int
    audit_id: int


@dataclass(frozen=True)
class SplitResult:
    person: Person  # the person split, after
    new_person: Person  # the chosen faces' new person
    faces_moved: int
    audit_id: int


@dataclass(frozen=True)
class UnmergeResult:
    person: Person  # the merged-away person, restored (same id, external id, aliases)
    survivor: Person  # the person it had been merged into, after
    faces_moved: int
    audit_id: int  # the 'unmerge' entry
    kept_survivor_changes: bool  # the survivor's name or metadata changed since: left as is


@dataclass(frozen=True)
class Chip:
    """A chip read back: the JPEG and where it sits (see ChipInfo)."""

    face_id: int
    jpeg: bytes
    info: ChipInfo
