"""The words the product's options take, one enum each.

The settings, the API schemas, the CLI (Typer validates choices from these) and the domain
use the same members, so a new choice is added in one place. Members are `str` subclasses:
they compare equal to their value, so JSON, SQL and older call sites that pass plain
strings keep working.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    def __str__(self) -> str:  # f"{level}" prints "normal", not "Level.normal"
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Level(Choice):
    """Named similarity thresholds, calibrated per model to a false-accept rate."""

    loose = "loose"  # FAR 1e-2
    normal = "normal"  # FAR 1e-3
    strict = "strict"  # FAR 1e-4


class Selection(Choice):
    """Which faces of a photo to keep."""

    all = "all"
    largest = "largest"
    central = "central"  # facenet's LFW rule: the face nearest the image centre


class FaceDetector(Choice):
    """The face detector of the pipeline."""

    mtcnn = "mtcnn"  # facenet-pytorch's MTCNN (weights in its wheel): the default
    scrfd = "scrfd"  # InsightFace's SCRFD-500M (scrfd_500m_bnkps.onnx in models_dir)


class FolderMode(Choice):
    """What `identity cluster --out` puts in each cluster's folder."""

    crops = "crops"
    links = "links"
    none = "none"


class ClusterAlgorithm(Choice):
    hdbscan = "hdbscan"
    chinese_whispers = "chinese_whispers"
    components = "components"  # connected components of the similarity graph
    dbscan = "dbscan"


class Scope(Choice):
    """What an API key may do; a broader scope includes the narrower ones."""

    read = "read"
    enroll = "enroll"
    admin = "admin"


class JobKind(Choice):
    enroll = "enroll"
    cluster = "cluster"
    model_move = "model_move"  # identity/moves.py: re-embed every face with another model


class JobStatus(Choice):
    """A recorded job's state; the last three are final."""

    queued = "queued"  # recorded, no batch finished yet
    running = "running"
    succeeded = "succeeded"
    failed = "failed"  # `error` says why (a batch failed, its process died too often, its client gave up)
    cancelled = "cancelled"  # DELETE /v1/jobs/{id}: no batch writes anything afterwards
