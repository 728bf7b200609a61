"""Request and response bodies (pydantic), converted from the service's dataclasses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

# Shown by the CLI too, so they live below both front ends.
from identity.views import DeleteOut, MergeOut, PersonOut, PersonPageOut, PersonRefOut  # noqa: F401
from identity.vocabulary import JobKind, JobStatus

Level = Literal["loose", "normal", "strict"]


class ErrorBody(BaseModel):
    code: str
    message: str
    path: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class PersonCreate(BaseModel):
    external_id: str = Field(min_length=1, max_length=256)
    display_name: str | None = Field(None, max_length=256)
    metadata: dict[str, Any] = Field(default_factory=dict)


class PersonUpdate(BaseModel):
    external_id: str | None = Field(None, min_length=1, max_length=256)
    display_name: str | None = Field(None, max_length=256)
    metadata: dict[str, Any] | None = None
    replace_metadata: bool = False


class MergeIn(BaseModel):
    other: str = Field(min_length=1, max_length=256, description="The person merged away: digits are "
                       "a person id, anything else an external id or alias.")


class FaceOut(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in the full-resolution image's pixels")
    landmarks: list[list[float]] = Field(description="5 points: eyes, nose, mouth corners")
    probability: float

    @classmethod
    def of(cls, face) -> FaceOut:
        return cls(box=[float(v) for v in face.box],
                   landmarks=np.asarray(face.landmarks, dtype=float).reshape(-1, 2).tolist(),
                   probability=float(face.probability))


class ItemOutcomeOut(BaseModel):
    source: str
    person: str
    status: str
    reason: str | None = None
    face_id: int | None = None
    person_id: int | None = None


class EnrollOut(BaseModel):
    person: str = Field(description="The person's external id")
    person_id: int | None = Field(None, description="The person's id; null when nothing was enrolled "
                                  "to a person the upload would have created")
    outcomes: list[ItemOutcomeOut]


class PersonHitOut(BaseModel):
    person_id: int
    external_id: str
    display_name: str | None
    similarity: float
    faces: int


class FaceSearchOut(BaseModel):
    face: FaceOut | None
    known: bool
    matches: list[PersonHitOut]
    nearest_similarity: float | None
    threshold: float

    @classmethod
    def of(cls, found) -> FaceSearchOut:
        return cls(
            face=FaceOut.of(found.face) if found.face is not None else None,
            known=found.known,
            matches=[PersonHitOut(person_id=m.person_id, external_id=m.external_id,
                                  display_name=m.display_name, similarity=float(m.similarity),
                                  faces=m.faces) for m in found.matches],
            nearest_similarity=found.nearest_similarity,
            threshold=float(found.threshold),
        )


class SearchOut(BaseModel):
    source: str
    faces: list[FaceSearchOut]


class EmbeddingQuery(BaseModel):
    vectors: list[list[float]] = Field(min_length=1, max_length=1000)
    k: int | None = Field(None, ge=1, le=1000)
    level: Level | None = None
    persons: list[str] | None = Field(None, max_length=1000)


class EmbeddingSearchOut(BaseModel):
    results: list[FaceSearchOut]


class VerifyOut(BaseModel):
    model: str
    similarity: float
    distance: float
    threshold: float
    level: str
    same: bool
    face_a: FaceOut
    face_b: FaceOut | None
    faces_in_a: int
    faces_in_b: int
    person: PersonRefOut | None = Field(None, description="The enrolled person compared against, when `person` was given")


class DetectImageOut(BaseModel):
    source: str
    width: int = 0
    height: int = 0
    faces: list[FaceOut] = Field(default_factory=list)
    error: ErrorBody | None = None


class DetectOut(BaseModel):
    images: list[DetectImageOut]


class DirectoryJobIn(BaseModel):
    directory: str = Field(min_length=1, max_length=4096,
                           description="Server-side folder under an allowed root: one sub-folder per person.")
    largest_face: bool = False


class ClusterJobIn(BaseModel):
    algorithm: Literal["components", "chinese_whispers", "dbscan", "hdbscan"] | None = None
    threshold: float | None = Field(None, ge=-1.0, le=1.0)
    min_cluster_size: int | None = Field(None, ge=1, le=100_000)


class JobCreated(BaseModel):
    job_id: str
    kind: JobKind
    status: JobStatus
    total_items: int


class JobSummary(BaseModel):
    """A job in a listing: its state and progress, without outcomes or result."""

    id: str
    kind: JobKind
    status: JobStatus
    total_items: int
    items_done: int
    total_batches: int
    batches_done: int
    error: str | None
    resumes: int = Field(0, description="Times the job was taken over after its process died")
    created_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job) -> JobSummary:
        return cls.model_validate(job, from_attributes=True)


class JobList(BaseModel):
    jobs: list[JobSummary]
    next: str | None = Field(None, description="Pass as `after` for the next page; null on the last")


class JobOut(JobSummary):
    """A job with its progress, outcome counts, per-file outcomes and result."""

    progress: float
    counts: dict[str, int]
    outcomes: list[dict[str, Any]]
    result: dict[str, Any] | None

    @classmethod
    def of(cls, job) -> JobOut:
        if job.kind == "enroll":
            progress = job.items_done / job.total_items if job.total_items else 1.0
        elif job.status in ("succeeded", "failed", "cancelled"):
            progress = 1.0
        else:  # clustering counts its photos (or faces) only when it is done
            progress = 0.0
        return cls(**JobSummary.of(job).model_dump(), progress=round(min(progress, 1.0), 4),
                   counts=job.counts, outcomes=job.outcomes, result=job.result)


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, Any]
