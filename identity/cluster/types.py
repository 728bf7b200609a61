"""Values that cross the boundary of clustering: a table of faces in, labels out.

Clustering works on arrays, not on lists of `Face` objects, because it must scale to
millions of faces: one row per face, columns as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from identity.cluster.sharpness import blur_score
from identity.errors import InputError, ModelMismatchError
from identity.faces.types import Face, ImageResult

UNCLUSTERED = -1  # label of a face that belongs to no cluster (outlier, filtered out, too small a group)


@dataclass(frozen=True)
class FaceSet:
    """One row per face. `image_index[i]` points into `sources` (one entry per image), so
    faces of one photo share an index: that is what the same-photo constraint reads."""

    embeddings: np.ndarray  # (n, dim) float32, L2-normalised
    image_index: np.ndarray  # (n,) int64
    sources: tuple[str, ...] = ()  # per image: path or label, for reports and crops
    boxes: np.ndarray | None = None  # (n, 4) x1, y1, x2, y2 in the image's pixels
    probabilities: np.ndarray | None = None  # (n,) detection probability
    blur: np.ndarray | None = None  # (n,) variance of the Laplacian of the crop (higher = sharper)
    crops: tuple[np.ndarray | None, ...] | None = None  # aligned crops when the pipeline kept them
    image_sizes: np.ndarray | None = None  # (n_images, 2) width, height of each photo

    def __post_init__(self) -> None:
        emb = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        if emb.ndim != 2:
            raise InputError(f"embeddings must be (n, dim), got shape {emb.shape}")
        object.__setattr__(self, "embeddings", emb)
        object.__setattr__(self, "image_index", np.asarray(self.image_index, dtype=np.int64))
        if self.image_index.shape != (len(emb),):
            raise InputError("image_index must have one entry per face")
        for name in ("probabilities", "blur"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.asarray(value, dtype=np.float32))
        if self.boxes is not None:
            object.__setattr__(self, "boxes", np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4))

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def source_of(self, i: int) -> str:
        return self.sources[int(self.image_index[i])] if self.sources else str(int(self.image_index[i]))

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, image_index: np.ndarray | None = None) -> FaceSet:
        """Bare embeddings (benchmarks, tests): each face its own photo unless told otherwise."""
        n = len(embeddings)
        return cls(embeddings, np.arange(n) if image_index is None else image_index)

    @classmethod
    def from_results(cls, results: Iterable[ImageResult], *, keep_crops: bool = False) -> FaceSet:
        """Flatten pipeline results (unreadable images and images without faces add no rows).

        When the pipeline kept crops, each face's blur score is measured on the way and
        the crop itself is dropped unless `keep_crops` (crops cost ~77 kB a face)."""
        sources: list[str] = []
        sizes: list[tuple[int, int]] = []
        faces: list[Face] = []
        image_index: list[int] = []
        blur: list[float] = []
        crops: list[np.ndarray | None] = []
        for result in results:
            if not result.ok or not result.faces:
                continue
            sources.append(result.source)
            sizes.append((result.width, result.height))
            for face in result.faces:
                faces.append(replace(face, crop=None))
                image_index.append(len(sources) - 1)
                blur.append(np.nan if face.crop is None else blur_score(face.crop))
                crops.append(face.crop if keep_crops else None)
        if not faces:
            return cls(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), tuple(sources))
        dims = {face.embedding.shape[0] for face in faces}
        if len(dims) != 1:
            raise ModelMismatchError(f"faces carry embeddings of several dimensions: {sorted(dims)}")
        blur_array = np.array(blur, np.float32)
        return cls(
            embeddings=np.stack([face.embedding for face in faces]),
            image_index=np.array(image_index),
            sources=tuple(sources),
            boxes=np.array([face.box for face in faces], np.float32),
            probabilities=np.array([face.probability for face in faces], np.float32),
            blur=None if np.isnan(blur_array).all() else blur_array,
            crops=tuple(crops) if keep_crops and any(c is not None for c in crops) else None,
            image_sizes=np.array(sizes, np.int64),
        )

    @classmethod
    def from_npz(cls, path: Path) -> tuple[FaceSet, np.ndarray | None]:
        """Read the embeddings file the benchmarks write (see benchmarks/bench_cluster.py);
        returns the faces and the per-face ground-truth labels when the file has them."""
        with np.load(path, allow_pickle=False) as data:
            paths = data["paths"].astype(str)
            unique, image_index = np.unique(paths, return_inverse=True)
            faces = cls(
                embeddings=data["embeddings"],
                image_index=image_index,
                sources=tuple(unique.tolist()),
                boxes=data["boxes"] if "boxes" in data else None,
                probabilities=data["probs"] if "probs" in data else None,
            )
            labels = data["labels"].astype(str) if "labels" in data else None
        return faces, labels

    def subset(self, rows: np.ndarray) -> FaceSet:
        """The faces at `rows` (indices or a boolean mask), keeping the image numbering."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, np.int64)
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return FaceSet(
            embeddings=self.embeddings[rows],
            image_index=self.image_index[rows],
            sources=self.sources,
            boxes=pick(self.boxes),
            probabilities=pick(self.probabilities),
            blur=pick(self.blur),
            crops=None if self.crops is None else tuple(self.crops[i] for i in rows),
            image_sizes=self.image_sizes,
        )


@dataclass(frozen=True)
class ClusterResult:
    """Labels 0..m-1 numbered by decreasing cluster size; UNCLUSTERED (-1) for the rest.
    `reasons[i]` says why face i is unclustered when it was filtered out before clustering
    ('too_small', 'low_probability', 'blurred'); '' otherwise."""

    labels: np.ndarray  # (n,) int64
    algorithm: str
    params: dict = field(default_factory=dict)
    reasons: np.ndarray | None = None  # (n,) str
    seconds: float = 0.0

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) and self.labels.max() >= 0 else 0

    @property
    def n_unclustered(self) -> int:
        return int(np.count_nonzero(self.labels == UNCLUSTERED))

    def members(self) -> list[np.ndarray]:
        """Row indices of each cluster, cluster 0 first."""
        order = np.argsort(self.labels, kind="stable")
        sorted_labels = self.labels[order]
        starts = np.searchsorted(sorted_labels, np.arange(self.n_clusters + 1))
        return [order[starts[c] : starts[c + 1]] for c in range(self.n_clusters)]
