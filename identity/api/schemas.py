"""Request and response bodies (pydantic). Response bodies are read from the service's
dataclasses: `XOut.model_validate(obj)` (identity/views.py: `Out`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator

# Shown by the CLI too, so they live below both front ends.
from identity.views import DeleteOut, MergeOut, Out, PersonOut, PersonPageOut, PersonRefOut  # noqa: F401
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


class FaceOut(Out):
    box: list[float] = Field(description="x1, y1, x2, y2 in the full-resolution image's pixels")
    landmarks: list[list[float]] = Field(description="5 points: eyes, nose, mouth corners")
    probability: float

    @field_validator("box", mode="before")
    @classmethod
    def _box(cls, box) -> list[float]:
        return [float(v) for v in box]

    @field_validator("landmarks", mode="before")
    @classmethod
    def _landmarks(cls, landmarks) -> list[list[float]]:  # a 5 × 2 numpy array in the domain
        return np.asarray(landmarks, dtype=float).reshape(-1, 2).tolist()


class ItemOutcomeOut(Out):
    source: str
    person: str
    status: str
    reason: str | None = None
    face_id: int | None = None
    person_id: int | None = None


class EnrollOut(Out):
    person: str = Field(description="The person's external id")
    person_id: int | None = Field(None, description="The person's id; null when nothing was enrolled "
                                  "to a person the upload would have created")
    outcomes: list[ItemOutcomeOut]


class PersonHitOut(Out):
    person_id: int
    external_id: str
    display_name: str | None
    similarity: float
    faces: int


class FaceSearchOut(Out):
    face: FaceOut | None
    known: bool
    matches: list[PersonHitOut]
    nearest_similarity: float | None
    threshold: float


class SearchOut(Out):
    source: str
    faces: list[FaceSearchOut]


class EmbeddingQuery(BaseModel):
    vectors: list[list[float]] = Field(min_length=1, max_length=1000)
    k: int | None = Field(None, ge=1, le=1000)
    level: Level | None = None
    persons: list[str] | None = Field(None, max_length=1000)


class EmbeddingSearchOut(Out):
    results: list[FaceSearchOut]


class VerifyOut(Out):
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

    @model_validator(mode="before")
    @classmethod
    def _person(cls, data: Any) -> Any:
        """A `Verification` names the person by `person_id` and `person_external_id`."""
        if isinstance(data, dict) or not hasattr(data, "person_id"):
            return data
        fields = {name: getattr(data, name) for name in cls.model_fields if name != "person"}
        person = None if data.person_id is None else {"id": data.person_id, "external_id": data.person_external_id}
        return {**fields, "person": person}


class DetectImageOut(Out):
    source: str
    width: int = 0
    height: int = 0
    faces: list[FaceOut] = Field(default_factory=list)
    error: ErrorBody | None = None


class DetectOut(Out):
    images: list[DetectImageOut]


class DirectoryJobIn(BaseModel):
    directory: str = Field(min_length=1, max_length=4096,
                           description="Server-side folder under an allowed root: one sub-folder per person.")
    largest_face: bool = False


class ClusterJobIn(BaseModel):
    algorithm: Literal["components", "chinese_whispers", "dbscan", "hdbscan"] | None = None
    threshold: float | None = Field(None, ge=-1.0, le=1.0)
    min_cluster_size: int | None = Field(None, ge=1, le=100_000)
    hubness: bool | None = Field(None, description="Hubness-correct the kNN graph first; unset: the model's calibration.")


class ModelMoveJobIn(BaseModel):
    """`identity models migrate` as a job: `target` re-embeds every face with that model and
    switches search to it when done; `finalize` (after the switch) drops the old vectors."""

    target: str | None = Field(None, min_length=1, max_length=200, description="Model name (`identity models list`)")
    finalize: bool = False


class JobCreated(Out):
    job_id: str = Field(validation_alias=AliasChoices("job_id", "id"))  # a `Job`'s id
    kind: JobKind
    status: JobStatus
    total_items: int


class JobSummary(Out):
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


class JobList(Out):
    jobs: list[JobSummary]
    next: str | None = Field(None, description="Pass as `after` for the next page; null on the last")


class JobOut(JobSummary):
    """A job with its progress, outcome counts, per-file outcomes and result."""

    progress: float
    counts: dict[str, int]
    outcomes: list[dict[str, Any]]
    result: dict[str, Any] | None

    @model_validator(mode="before")
    @classmethod
    def _progress(cls, data: Any) -> Any:
        """A stored `Job` has no progress: it is its share of items done (enroll), or
        0 until a clustering job ends, then 1."""
        if isinstance(data, dict) or not hasattr(data, "items_done"):
            return data
        fields = {name: getattr(data, name) for name in cls.model_fields if name != "progress"}
        if data.kind in ("enroll", "model_move"):  # a move counts its re-embedded faces as it goes
            progress = data.items_done / data.total_items if data.total_items else 1.0
        elif data.status in ("succeeded", "failed", "cancelled"):
            progress = 1.0
        else:  # clustering counts its photos (or faces) only when it is done
            progress = 0.0
        return {**fields, "progress": round(min(progress, 1.0), 4)}


class ReadyOut(Out):
    ready: bool
    checks: dict[str, Any]
