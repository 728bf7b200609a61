"""PostgreSQL + pgvector store: persons, images, faces, embeddings and the change log.

`Store.open(settings)` is the entry point; `upgrade(settings)` applies migrations.
"""

from identity.store.changes import CHANNEL
from identity.store.migrate import upgrade
from identity.store.store import Store
from identity.store.types import (
    AddOutcome,
    Change,
    DeleteResult,
    ExportResult,
    FaceRow,
    FacesToAdd,
    KnownFace,
    KnownImage,
    MergeResult,
    ModelInfo,
    Person,
    PersonPage,
)

__all__ = [
    "CHANNEL",
    "AddOutcome",
    "Change",
    "DeleteResult",
    "ExportResult",
    "FaceRow",
    "FacesToAdd",
    "KnownFace",
    "KnownImage",
    "MergeResult",
    "ModelInfo",
    "Person",
    "PersonPage",
    "Store",
    "upgrade",
]
