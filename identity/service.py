"""The operations the CLI and the API share.

`Service` owns the long-lived, expensive things (the face pipeline, the database pool,
the search index) and creates each one the first time an operation needs it, so
`identity detect` never starts a database and `identity persons list` never loads a
network. Routers and commands stay thin: parse, call one method here, format.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from identity.config import Settings, get_settings
from identity.errors import InputError, MultipleFacesError, NoFaceError
from identity.faces import models
from identity.faces.types import DetectedFace, Face, ImageRef, ImageResult

# The vision pipeline (torch, torchvision, facenet-pytorch: seconds to import) is imported
# where it is first needed, so that commands which never touch an image, `identity
# persons list` or `identity keys create`, start without it.
if TYPE_CHECKING:
    from identity.faces.detect import Detector, ScrfdDetector, Selection
    from identity.faces.pipeline import FacePipeline
    from identity.enroll import EnrollItem, EnrollSummary, ItemOutcome
    from identity.index import IndexMirror
    from identity.runners import Runner
    from identity.store import Store
    from identity.store.jobs import Job
    from identity.store.readcache import ServingCaches
    from identity.store.types import ModelInfo


_log = logging.getLogger(__name__)
_MODEL_CHECK_S = 1.0


@dataclass(frozen=True)
class Detection:
    source: str
    width: int
    height: int
    faces: tuple[DetectedFace, ...]  # in full-resolution pixels


@dataclass(frozen=True)
class PersonHit:
    person_id: int
    external_id: str
    display_name: str | None
    similarity: float
    faces: int  # this person's faces among the top-k at or above the threshold


@dataclass(frozen=True)
class FaceSearch:
    """One query face and who it is: `matches` best first, empty when unknown."""

    face: Face | None
    matches: tuple[PersonHit, ...]
    nearest_similarity: float | None
    threshold: float
    # Whose face is the most similar, even under the threshold: what an unknown face is
    # closest to. None when that face belongs to nobody (or nothing is enrolled).
    nearest: PersonHit | None = None

    @property
    def known(self) -> bool:
        return bool(self.matches)


@dataclass(frozen=True)
class Clustering:
    """Photos grouped into people: the images (for saving), one row per face, the labels."""

    images: tuple[ImageResult, ...]
    faces: object  # identity.cluster.FaceSet
    result: object  # identity.cluster.ClusterResult


@dataclass(frozen=True)
class ClusterMatch:
    cluster: int
    person_id: int
    external_id: str
    display_name: str | None
    faces_matched: int  # the cluster's faces whose best match is this person
    faces: int  # the cluster's size
    similarity: float  # mean similarity of the matching faces


@dataclass(frozen=True)
class Verification:
    model: str
    similarity: float  # cosine similarity of the two embeddings
    distance: float  # euclidean distance of the unit vectors (sqrt(2 - 2·similarity))
    threshold: float  # similarity threshold of `level`
    level: str
    same: bool
    face_a: Face
    face_b: Face | None  # None when B is an enrolled person
    faces_in_a: int
    faces_in_b: int  # faces in photo B, or the person's enrolled faces
    person_id: int | None = None  # the enrolled person B is, when B is one
    person_external_id: str | None = None


class Service:
    """The operations. Built from its parts, each passed in or, when left out, opened on
    first use from the settings: so `identity detect` never starts a database and
    `identity persons list` never loads a network, yet tests and library users can hand
    in a pipeline, a store or a runner of their own. `opened()` says what is running."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        pipeline: FacePipeline | None = None,
        store: Store | None = None,
        index: IndexMirror | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self._pipeline = pipeline
        self._detector: Detector | None = None
        self._store = store
        self._index = index
        self._runner = runner
        self._owned: set[str] = set()  # resources this service opened, so it closes them
        self._opening = threading.RLock()
        self._caches: ServingCaches | None = None  # API keys and person names (serving_caches)
        # The model this service serves: the configured one until the store says a model
        # move replaced it (follow_moves); checked at most once a second.
        self._configured_model = self.settings.pipeline.model
        self._adoptable = models.adoptable_models(self.settings)  # a default gives way to the store's own
        self._model_checked = float("-inf")
        self._switching = threading.Lock()
        # One model call at a time: the networks are not documented as thread-safe, and
        # on a GPU (or 2 CPU cores) concurrent calls only contend.
        self.model_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Service:
        return cls(settings)

    # --- resources, each opened on first use -------------------------------------------

    def _open(self, name: str, make):
        with self._opening:
            if getattr(self, f"_{name}") is None:
                setattr(self, f"_{name}", make())
                self._owned.add(name)
            return getattr(self, f"_{name}")

    @property
    def pipeline(self) -> FacePipeline:
        """Detector and embedding network (loads the weights)."""
        from identity.faces.pipeline import FacePipeline

        return self._open("pipeline", lambda: FacePipeline.from_settings(self.settings))

    @property
    def detector(self) -> Detector | ScrfdDetector:
        """The detector alone: the pipeline's when it is loaded, else one without the embedding network."""
        if self._pipeline is not None:
            return self._pipeline.detector
        from identity.faces.detect import make_detector
        from identity.faces.embed import resolve_device

        return self._open("detector", lambda: make_detector(self.settings.pipeline,
                                                           resolve_device(self.settings.pipeline.device)))

    @property
    def store(self) -> Store:
        """The database (starts the embedded server when no URL is configured)."""
        from identity.store import Store

        return self._open("store", lambda: Store.open(self.settings))

    @property
    def index(self) -> IndexMirror:
        """The FAISS mirror of this model's faces: snapshot loaded, change-log tail replayed,
        then followed in the background so new faces become searchable within a second."""
        from identity.index import IndexMirror

        if self._index is None:
            self.follow_moves()

        def make() -> IndexMirror:
            mirror = IndexMirror.from_settings(self.store, self.settings, self.model_info)
            mirror.start()
            return mirror

        return self._open("index", make)

    @property
    def runner(self) -> Runner:
        """Where batch work runs: this process, or Celery workers when a broker is configured."""
        from identity.runners import runner_from_settings

        return self._open("runner", lambda: runner_from_settings(self.settings, self))

    def opened(self) -> dict[str, bool]:
        """Which resources exist now (for health checks: nothing here opens one)."""
        return {name: getattr(self, f"_{name}") is not None
                for name in ("pipeline", "detector", "store", "index", "runner")}

    @cached_property
    def model_info(self) -> ModelInfo:
        from identity.store.types import ModelInfo

        spec = models.get_model(self.settings.pipeline.model)
        return ModelInfo(spec.name, spec.version, spec.dim)

    def close(self) -> None:
        """Stop what this service opened: the index follower (writing a snapshot if it
        changed), the runner, the pool. Parts passed in belong to the caller."""
        if "index" in self._owned and self._index is not None:
            self._index.stop(snapshot=True)
        if self._caches is not None:
            self._caches.stop()
        if "runner" in self._owned and self._runner is not None:
            self._runner.close()
        if "store" in self._owned and self._store is not None:
            self._store.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def thresholds(self) -> dict[str, float]:
        spec = models.get_model(self.settings.pipeline.model)
        return models.load_thresholds(spec, self.settings)

    # --- vision ---------------------------------------------------------------------------

    def detect(self, refs: Iterable[ImageRef | str | Path]) -> Iterator[Detection | ImageResult]:
        """Boxes, landmarks and probabilities without loading the embedding network.
        Unreadable images come back as an `ImageResult` carrying the error."""
        from identity.faces.pipeline import DecodeLimits, as_ref, decode_or_error, to_full_resolution

        limits = DecodeLimits.from_settings(self.settings.pipeline)
        for ref in map(as_ref, refs):
            image = decode_or_error(ref, limits)
            if isinstance(image, ImageResult):
                yield image
                continue
            yield Detection(
                source=ref.source,
                width=image.width,
                height=image.height,
                faces=tuple(to_full_resolution(face, image.scale)
                            for face in self.detector.detect([image.pixels])[0]),
            )

    def embed(
        self, refs: Iterable[ImageRef | str | Path], *, select: Selection = "all"
    ) -> Iterator[ImageResult]:
        return self.pipeline.process(refs, select=select)

    def one_face(self, ref: ImageRef | str | Path, *, largest: bool = True) -> tuple[Face, int]:
        """The face to compare in a verification photo: its only face, or (with `largest`)
        the largest of several. Returns the face and how many faces the photo had."""
        result = self.pipeline.embed_image(ref)
        if result.error is not None:
            raise result.error
        if not result.faces:
            raise NoFaceError("no face found", path=result.source)
        if len(result.faces) > 1 and not largest:
            raise MultipleFacesError(
                f"{len(result.faces)} faces found; pass --largest-face to use the largest",
                path=result.source,
            )
        return max(result.faces, key=lambda f: f.area), len(result.faces)

    def verify(
        self,
        a: ImageRef | str | Path,
        b: ImageRef | str | Path,
        *,
        level: str | None = None,
        largest: bool = True,
    ) -> Verification:
        level = level or self.settings.pipeline.threshold_level
        thresholds = self.thresholds()
        face_a, count_a = self.one_face(a, largest=largest)
        face_b, count_b = self.one_face(b, largest=largest)
        similarity = float(np.dot(face_a.embedding, face_b.embedding))
        threshold = thresholds[level]
        return Verification(
            model=self.pipeline.model_name,
            similarity=similarity,
            distance=float(np.sqrt(max(0.0, 2.0 - 2.0 * similarity))),
            threshold=threshold,
            level=level,
            same=similarity >= threshold,
            face_a=face_a,
            face_b=face_b,
            faces_in_a=count_a,
            faces_in_b=count_b,
        )


    def verify_person(
        self, ref: ImageRef | str | Path, person: int | str, *, level: str | None = None
    ) -> Verification:
        """The photo's (largest) face against an enrolled person: the best similarity over
        that person's enrolled faces decides."""
        level = level or self.settings.pipeline.threshold_level
        threshold = self.thresholds()[level]
        target = self.store.get_person(person)  # a wrong reference fails before the model runs
        face, count = self.one_face(ref)
        hits = self.search_embeddings(face.embedding[None, :], k=1, level=level, persons=[target.id])[0]
        similarity = max((h.similarity for h in hits.matches), default=hits.nearest_similarity or -1.0)
        return Verification(
            model=self.model_info.name, similarity=similarity,
            distance=float(np.sqrt(max(0.0, 2.0 - 2.0 * similarity))), threshold=threshold,
            level=level, same=similarity >= threshold, face_a=face, face_b=None,
            faces_in_a=count, faces_in_b=target.face_count,
            person_id=target.id, person_external_id=target.external_id,
        )

    # --- enrollment -------------------------------------------------------------------------

    def enroll_batch(self, items: list[EnrollItem], *, largest_face: bool = False) -> list[ItemOutcome]:
        """One batch, one transaction, idempotent: the unit every runner runs."""
        from identity.enroll import enroll_batch

        self.follow_moves()
        return enroll_batch(items, pipeline=self.pipeline, store=self.store,
                            max_bytes=self.settings.api.max_upload_bytes, largest_face=largest_face)

    def enroll_stream(self, batches: Iterable[list[EnrollItem]], *,
                      largest_face: bool = False) -> Iterator[list[ItemOutcome]]:
        """Many batches through one pipeline (detection keeps overlapping across batches),
        each written in its own transaction."""
        from identity.enroll import enroll_stream

        self.follow_moves()
        return enroll_stream(batches, pipeline=self.pipeline, store=self.store,
                             max_bytes=self.settings.api.max_upload_bytes, largest_face=largest_face)

    def enroll(self, items: Iterable, *, largest_face: bool = False, report: Path | None = None,
               on_progress=None) -> EnrollSummary:
        """Run an enrollment job on the runner (this process, or the Celery workers).
        Returns an `EnrollSummary`; skipped files are listed in `report`. On workers the
        run is a recorded job this process drives (identity/jobs.py: driven_job)."""
        from identity import enroll, jobs

        if self.runner.remote:  # the job row counts them first
            items = list(items)
        with jobs.driven_job(self, items) as job_id:

            def run(batches, done) -> None:
                self.runner.enroll(batches, largest_face=largest_face, on_done=done, job_id=job_id)

            return enroll.run(items, runner=run, batch_size=self.settings.pipeline.batch_size,
                              report=report, on_progress=on_progress)

    def enroll_now(self, items: list[EnrollItem], *, largest_face: bool = False,
                   key_id: str | None = None, job_id: str | None = None) -> list[ItemOutcome] | Job:
        """A few photos enrolled while the caller waits (an upload): the outcomes, or,
        when workers did not finish within `enroll_wait_seconds`, the job to follow (with
        id `job_id` when given: the spool owner of the photos, which the job then holds)."""
        from identity import jobs

        return jobs.enroll_now(self, items, largest_face=largest_face, key_id=key_id, job_id=job_id)

    # --- recorded jobs (identity/jobs.py) --------------------------------------------------

    def start_enroll_job(self, items: list[EnrollItem], *, planned: list[ItemOutcome] = (),
                         largest_face: bool = False, params: dict[str, Any] | None = None,
                         key_id: str | None = None, job_id: str | None = None) -> Job:
        """`job_id`: the id files were spooled under for this job (identity/spool.py)."""
        from identity import jobs

        return jobs.start_enroll_job(self, items, planned=planned, largest_face=largest_face,
                                     params=params, key_id=key_id, job_id=job_id)

    def start_directory_job(self, directory: str | Path, *, largest_face: bool = False,
                            key_id: str | None = None) -> Job:
        """A server-side folder (one sub-folder per person) under one of the allowed roots."""
        from identity import jobs
        from identity.files import confine

        roots = list(self.settings.api.allowed_roots)
        resolved = confine(directory, roots)
        items, refused = jobs.directory_items(resolved, roots)
        return self.start_enroll_job(items, planned=refused, largest_face=largest_face,
                                     params={"directory": str(resolved)}, key_id=key_id)

    def enroll_job_batch(self, job_id: str, number: int, batch: list[EnrollItem], *,
                         largest_face: bool = False) -> list[ItemOutcome]:
        from identity import jobs

        self.follow_moves()
        return jobs.enroll_job_batch(self, job_id, number, batch, largest_face=largest_face)

    def fail_job(self, job_id: str, exc: BaseException) -> None:
        from identity import jobs

        jobs.fail_job(self, job_id, exc)

    def start_cluster_job(self, spec: dict[str, Any], *, key_id: str | None = None,
                          job_id: str | None = None) -> Job:
        from identity import jobs

        return jobs.start_cluster_job(self, spec, key_id=key_id, job_id=job_id)

    def cluster_job(self, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        from identity import jobs

        return jobs.cluster_job(self, job_id, spec)

    def release_spool(self, owner: str) -> None:
        """Remove what a request spooled (identity/spool.py) unless a running job adopted it."""
        from identity import jobs

        jobs.release_unless_active(self, owner)

    def sweep_spool(self) -> list[str]:
        """At start: remove spooled uploads of ended jobs and orphans (identity/jobs.py)."""
        from identity import jobs

        return jobs.sweep_spool(self)

    def jobs(self, *, status: str | None = None, kind: str | None = None, limit: int = 50,
             after: str | None = None) -> tuple[list[Job], str | None]:
        """One page of jobs, newest first, and the cursor of the next page."""
        from identity.store import jobs as job_store

        return job_store.list_jobs(self.store, status=status, kind=kind, limit=limit, after=after)

    def cancel_job(self, job_id: str) -> Job:
        from identity import jobs

        return jobs.cancel_job(self, job_id)

    def recover_jobs(self) -> list[tuple[str, str]]:
        """Resume (or fail) the jobs whose owning process is gone."""
        from identity import jobs

        return jobs.recover_jobs(self)

    def job(self, job_id: str, *, with_outcomes: bool = True) -> Job:
        from identity.store import jobs as job_store

        return job_store.get_job(self.store, job_id, with_outcomes=with_outcomes)

    # --- search ---------------------------------------------------------------------------------

    def search_embeddings(
        self, vectors: np.ndarray, *, k: int | None = None, level: str | None = None,
        persons: Iterable[int | str] | None = None,
    ) -> list[FaceSearch]:
        """Many query vectors, one index call; results aggregated per person."""
        from identity.index import search_any

        level = level or self.settings.pipeline.threshold_level
        threshold = self.thresholds()[level]
        vectors = self._query_vectors(vectors)
        person_ids = None if persons is None else [self.store.get_person(p).id for p in persons]
        results, _ = search_any(self.index, self.store, self.model_info, vectors,
                                k or self.settings.index.search_k, threshold, persons=person_ids)
        ids = {m.person_id for r in results for m in r.matches if m.person_id is not None}
        ids |= {r.nearest.person_id for r in results if r.nearest and r.nearest.person_id is not None}
        people = self.person_names(sorted(ids))

        def nearest(r) -> PersonHit | None:
            if r.nearest is None or r.nearest.person_id not in people:
                return None
            p = people[r.nearest.person_id]
            count = next((m.faces for m in r.matches if m.person_id == p.id), 0)
            return PersonHit(p.id, p.external_id, p.display_name, r.nearest.similarity, count)

        return [
            FaceSearch(
                face=None,
                matches=tuple(
                    PersonHit(m.person_id, people[m.person_id].external_id,
                              people[m.person_id].display_name, m.similarity, m.faces)
                    for m in r.matches if m.person_id in people
                ),
                nearest_similarity=r.nearest.similarity if r.nearest else None,
                threshold=threshold,
                nearest=nearest(r),
            )
            for r in results
        ]

    def _query_vectors(self, vectors) -> np.ndarray:
        """Validate query embeddings from outside (the API accepts them) and normalise them."""
        dim = self.model_info.dim
        if isinstance(vectors, np.ndarray):
            rows = list(vectors.reshape(1, -1) if vectors.ndim == 1 else vectors)
        else:  # lists from a request body may be ragged: check before numpy sees them
            rows = list(vectors)
            if rows and not hasattr(rows[0], "__len__"):
                rows = [rows]
        if not rows or any(not hasattr(v, "__len__") or len(v) != dim for v in rows):
            raise InputError(f"each query vector must have {dim} numbers (model {self.model_info.name})")
        with np.errstate(over="ignore"):
            matrix = np.asarray(rows, dtype=np.float32)
        if not np.isfinite(matrix).all():
            raise InputError("query vectors must be finite numbers")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InputError("a zero vector has no direction to search")
        return matrix / norms

    def search_image(
        self, ref: ImageRef | str | Path, *, k: int | None = None, level: str | None = None,
        persons: Iterable[int | str] | None = None,
    ) -> list[FaceSearch]:
        """Every face in the photo, each with the enrolled persons it matches."""
        self.follow_moves()
        pipeline = self.pipeline
        result = pipeline.embed_image(ref)
        if pipeline.model_name != self.model_info.name:  # the store switched models meanwhile
            result = self.pipeline.embed_image(ref)
        if result.error is not None:
            raise result.error
        if not result.faces:
            return []
        vectors = np.stack([f.embedding for f in result.faces])
        found = self.search_embeddings(vectors, k=k, level=level, persons=persons)
        return [FaceSearch(face, hit.matches, hit.nearest_similarity, hit.threshold, hit.nearest)
                for face, hit in zip(result.faces, found)]

    # --- clustering -------------------------------------------------------------------------

    def cluster_images(self, refs: Iterable[ImageRef | str | Path], *, params=None,
                       keep_crops: bool = False, keep_chips: bool = False, on_image=None) -> Clustering:
        """Detect and embed every face of every photo, then group the faces into people.
        `keep_chips` (when the clustering will be saved, and settings.store.chips): the images
        kept for saving carry each face's chip (~9 kB), so saved faces get theirs."""
        from dataclasses import replace

        from identity.cluster import ClusterParams, FaceSet, cluster_faces

        params = params or ClusterParams.from_settings(self.settings)
        images: list[ImageResult] = []

        def results():
            # Crops go through the pipeline so the quality filter can measure blur; the
            # images kept for saving drop them (a crop costs ~77 kB).
            for result in self.pipeline.process(refs, keep_crops=True,
                                                keep_chips=keep_chips and self.settings.store.chips):
                if on_image is not None:
                    on_image(result)
                if result.ok and result.faces:
                    images.append(replace(result, faces=tuple(replace(f, crop=None) for f in result.faces)))
                yield result

        faces = FaceSet.from_results(results(), keep_crops=keep_crops)
        if len(faces) == 0:
            raise NoFaceError("no face found in any of the photos")
        return Clustering(tuple(images), faces, cluster_faces(faces, params))

    def match_clusters(self, clustering: Clustering, *, level: str | None = None) -> dict[int, ClusterMatch]:
        """Clusters that are an enrolled person: most of the cluster's faces find that person
        first at the threshold of `level`. One index call for every clustered face."""
        labels = clustering.result.labels
        rows = np.flatnonzero(labels >= 0)
        if len(rows) == 0:
            return {}
        hits = self.search_embeddings(clustering.faces.embeddings[rows], level=level)
        votes: dict[int, list[PersonHit]] = {}
        for row, hit in zip(rows, hits):
            if hit.known:
                votes.setdefault(int(labels[row]), []).append(hit.matches[0])
        matches = {}
        for cluster, best in votes.items():
            size = int((labels == cluster).sum())
            top = max({b.external_id for b in best}, key=lambda e: sum(b.external_id == e for b in best))
            agreeing = [b for b in best if b.external_id == top]
            if 2 * len(agreeing) > size:
                matches[cluster] = ClusterMatch(cluster, agreeing[0].person_id, top, agreeing[0].display_name,
                                                len(agreeing), size,
                                                float(np.mean([b.similarity for b in agreeing])))
        return matches

    def save_clusters(self, clustering: Clustering, *, matches: dict[int, ClusterMatch] | None = None) -> dict:
        """Store every clustered face: to the enrolled person its cluster matched, else to a
        new unnamed person (`unnamed-<image sha256 prefix>-<face>`, named after the cluster's
        first face, so saving the same clustering again adds nothing). Unnamed persons can be
        renamed and merged with `identity persons`. Returns the store's outcome counts."""
        from collections import Counter

        from identity.store.types import FacesToAdd

        matches = matches or {}
        faces, labels = clustering.faces, clustering.result.labels
        by_source = {image.source: image for image in clustering.images}
        owners: dict[int, str] = {}
        picks: dict[tuple[str, str], list[int]] = {}
        first_row = {int(i): int(np.argmax(faces.image_index == i)) for i in np.unique(faces.image_index)}
        for row in np.flatnonzero(labels >= 0):
            cluster = int(labels[row])
            source = faces.source_of(int(row))
            face_index = int(row) - first_row[int(faces.image_index[row])]
            if cluster not in owners:
                image = by_source[source]
                owners[cluster] = (matches[cluster].external_id if cluster in matches
                                   else f"unnamed-{image.sha256[:12]}-{face_index}")
            picks.setdefault((source, owners[cluster]), []).append(face_index)
        items = [FacesToAdd(by_source[source], external_id=owner, face_indexes=tuple(indexes))
                 for (source, owner), indexes in picks.items()]
        outcomes = []
        for start in range(0, len(items), 256):
            outcomes += self.store.add_faces(items[start : start + 256], model=self.model_info)
        counts = Counter(o.status for o in outcomes)
        ids = {item.external_id: o.person_id for item, o in zip(items, outcomes) if o.person_id is not None}
        return {"persons": sorted(set(owners.values())), "images": dict(counts),
                # which person each cluster was saved as (person_id None: none of its faces
                # could be stored, e.g. all were enrolled to someone else already)
                "clusters": {cluster: {"external_id": owner, "person_id": ids.get(owner)}
                             for cluster, owner in sorted(owners.items())}}

    # --- persons ----------------------------------------------------------------------------

    # `actor` names who asks, for the audit log: `key:<id> (<name>)` from the API; left
    # out, the OS user running this process (the CLI's user).

    def create_person(self, external_id: str, display_name: str | None = None,
                      metadata: dict[str, Any] | None = None, *, actor: str | None = None):
        return self.store.create_person(external_id, display_name, metadata, actor=actor)

    def person(self, ref: int | str):
        """A person by id (digits) or else by external id or alias (identity/names.py)."""
        return self.store.get_person(ref)

    def persons(self, *, limit: int = 50, after: int | None = None, query: str | None = None):
        """One keyset page of persons, in id order."""
        return self.store.list_persons(limit=limit, after=after, query=query)

    def person_faces(self, ref: int | str):
        return self.store.person_faces(self.store.get_person(ref).id)

    def update_person(self, ref: int | str, *, external_id: str | None = None,
                      display_name: str | None = None, rename: bool = False,
                      metadata: dict[str, Any] | None = None, replace_metadata: bool = False,
                      actor: str | None = None):
        """Change what was given; `rename` says whether `display_name` was given (None clears it)."""
        current = self.store.get_person(ref)
        if external_id is not None and external_id != current.external_id:
            current = self.store.set_external_id(current.id, external_id, actor=actor)
        if rename:
            current = self.store.rename_person(current.id, display_name, actor=actor)
        if metadata is not None:
            current = self.store.update_metadata(current.id, metadata, replace=replace_metadata, actor=actor)
        self._forget_names()
        return current

    def rename_person(self, ref: int | str, display_name: str | None, *, actor: str | None = None):
        try:
            return self.store.rename_person(ref, display_name, actor=actor)
        finally:
            self._forget_names()

    def merge_persons(self, keep: int | str, other: int | str, *, actor: str | None = None):
        try:
            return self.store.merge_persons(keep, other, actor=actor)
        finally:
            self._forget_names()

    def delete_person(self, ref: int | str, *, actor: str | None = None):
        try:
            return self.store.delete_person(ref, actor=actor)
        finally:
            self._forget_names()

    def _forget_names(self) -> None:
        """Read-your-writes in this process: the database's announcement of the change
        (identity/store/readcache.py) reaches the cache a few milliseconds after the commit,
        which the caller's next request may beat."""
        if self._caches is not None:
            self._caches.names.cache.clear()

    # --- corrections and history (identity/store/corrections.py) ---------------------------

    def face(self, face_id: int):
        """A stored face: owner, box, landmarks, chip (no embedding)."""
        return self.store.face(face_id)

    def faces(self, *, person: int | str | None = None, unassigned: bool = False,
              limit: int = 100, after: int | None = None):
        """One keyset page of faces in id order: a person's, the unassigned ones, or all."""
        return self.store.list_faces(person=person, unassigned=unassigned, limit=limit, after=after)

    def move_faces(self, face_ids: Iterable[int], to: int | str, *, actor: str | None = None):
        return self.store.move_faces(face_ids, to, actor=actor)

    def assign_faces(self, face_ids: Iterable[int], to: int | str, *, actor: str | None = None):
        """Unassigned faces to a person; a face someone else has is a conflict (move it instead)."""
        return self.store.move_faces(face_ids, to, actor=actor, only_unassigned=True)

    def unassign_faces(self, face_ids: Iterable[int], *, actor: str | None = None):
        return self.store.unassign_faces(face_ids, actor=actor)

    def remove_faces(self, face_ids: Iterable[int], *, actor: str | None = None):
        """Delete faces (embedding, chip, and images no other face uses)."""
        return self.store.remove_faces(face_ids, actor=actor)

    def split_person(self, ref: int | str, face_ids: Iterable[int], external_id: str, *,
                     display_name: str | None = None, metadata: dict[str, Any] | None = None,
                     actor: str | None = None):
        """The chosen faces of `ref` become a new person `external_id`."""
        return self.store.split_person(ref, face_ids, external_id, display_name=display_name,
                                       metadata=metadata, actor=actor)

    def person_history(self, ref: int | str, *, limit: int = 50, before: int | None = None):
        return self.store.person_history(ref, limit=limit, before=before)

    def audit_log(self, *, limit: int = 50, before: int | None = None, action: str | None = None):
        return self.store.audit_log(limit=limit, before=before, action=action)

    def audit_entry(self, entry_id: int):
        return self.store.audit_entry(entry_id)

    def undo_merge(self, entry_id: int, *, actor: str | None = None):
        """Undo the merge recorded as audit entry `entry_id`, while its faces still exist."""
        return self.store.undo_merge(entry_id, actor=actor)

    # --- face chips (identity/chips.py) ------------------------------------------------------

    def chip(self, face_id: int):
        return self.store.chip(face_id)

    def backfill_chips(self, *, on_progress=None):
        """Chips for stored faces that have none, cut from their source photos where those
        are still readable and unchanged (same sha256); the others are counted, not fatal."""
        from identity.chips import backfill

        return backfill(self.store, self.settings, on_progress=on_progress)

    def export(self, out_dir: str | Path):
        """Persons, faces and embeddings as Parquet + JSON, readable without this project."""
        return self.store.export(out_dir)

    # --- moving to another model (identity/moves.py) -------------------------------------

    def follow_moves(self, *, force: bool = False) -> str:
        """Serve the model the store serves (at most one check a second): the configured
        model, unless a model move from it was switched, then the move's target. On a
        switch, the target's pipeline and index are opened first (the index from the
        snapshot the move wrote) and then swapped in together, so a search runs on one
        model's pair, never a mix; the old index stops. Returns the served model."""
        now = time.monotonic()
        if not force and now - self._model_checked < _MODEL_CHECK_S:
            return self.settings.pipeline.model
        self._model_checked = now
        from identity.errors import StoreError

        try:
            served, move = self.store.serving_model(self._configured_model, adoptable=self._adoptable)
        except StoreError:  # the database is away: keep serving what this process serves
            return self.settings.pipeline.model
        if served == self.settings.pipeline.model:
            return served
        with self._switching:
            if served == self.settings.pipeline.model:
                return served
            from identity.moves import model_info, model_settings

            settings = model_settings(self.settings, served)
            info = model_info(served)
            if served == self._configured_model:
                _log.info("this store now serves %s, the configured model", served)
            elif move is None:
                _log.warning("the default model is %s, but this store holds faces of %s; serving %s "
                             "(`identity models migrate --to %s` moves the store; IDENTITY_MODEL=%s says so)",
                             self._configured_model, served, served, self._configured_model, served)
            else:
                _log.warning("the configured model is %s, but the store serves %s since model move %s; serving %s "
                             "(set IDENTITY_MODEL=%s to say so)", self._configured_model, served, move.id, served,
                             served)
            from identity.faces.pipeline import FacePipeline

            pipeline = FacePipeline.from_settings(settings) if self._pipeline is not None else None
            index = None
            if self._index is not None:
                from identity.index import IndexMirror

                index = IndexMirror.from_settings(self.store, settings, info)
                index.start()
            with self._opening:
                old_index = self._index if "index" in self._owned else None
                self.settings = settings
                self.__dict__["model_info"] = info
                if pipeline is not None:
                    self._pipeline = pipeline
                    self._owned.add("pipeline")
                if index is not None:
                    self._index = index
                    self._owned.add("index")
            if old_index is not None:
                old_index.stop(snapshot=True)
        return served

    @property
    def configured_model(self) -> str:
        """The model the settings name; `settings.pipeline.model` is the one served."""
        return self._configured_model

    def migrate_model(self, target: str, *, switch: bool = True, page: int | None = None, on_progress=None):
        """Re-embed every stored face with `target`, build its index, switch (MoveReport)."""
        from identity import moves

        self.target_model(target)
        report = moves.migrate(self.store, self.settings, target, switch=switch, page=page or moves.PAGE,
                               on_progress=on_progress)
        if report.switched:
            self.follow_moves(force=True)
        return report

    @staticmethod
    def target_model(name: str) -> models.ModelSpec:
        """The registry's model `name`, asked for by a user: unknown is their mistake
        (UnknownModelError, exit 2 / 422), unlike the configured model missing."""
        from identity.errors import ModelNotFoundError, UnknownModelError

        try:
            return models.get_model(name)
        except ModelNotFoundError as exc:
            raise UnknownModelError(str(exc)) from exc

    def start_model_move_job(self, spec: dict[str, Any], *, key_id: str | None = None) -> Job:
        """The move (or its finalization) as a recorded job run by this process."""
        from identity import jobs

        return jobs.start_model_move_job(self, spec, key_id=key_id)

    def finalize_model_move(self):
        """Drop the old model's vectors of the switched move (ModelMove)."""
        from identity import moves

        return moves.finalize(self.store, self.settings)

    def abandon_model_move(self):
        """Give up the running move: its target vectors are deleted (ModelMove)."""
        from identity.errors import ModelMoveError

        move = self.store.open_move()
        if move is None:
            raise ModelMoveError("no model move is open")
        return self.store.abandon_move(move)

    def move_index_status(self) -> dict | None:
        """During a model move, the model that is not served (the target while the move
        runs, the old model once switched): its vectors in the database, its change-log
        watermark, its index snapshot and the move's progress. None when no move is open."""
        from identity.index.snapshot import read_meta, snapshot_dir

        move = self.store.open_move()
        if move is None:
            return None
        served = self.settings.pipeline.model
        other = move.target if served != move.target else move.source
        progress = self.store.move_progress(move)
        meta = read_meta(snapshot_dir(self.settings.data_dir, other))
        return {
            "model": other,
            "role": "target of the move (not served yet)" if other == move.target else "old model (no longer served)",
            "move": move.id,
            "move_state": move.state,
            "faces_reembedded": progress["done"],
            "faces_to_reembed": progress["faces"],
            "vectors": self.store.counts()["faces"].get(other, {}).get("faces", 0),
            "db_watermark": self.store.watermark(other),
            "snapshot_watermark": None if meta is None else meta.watermark,
            "snapshot_faces": None if meta is None else meta.count,
        }

    def model_moves(self) -> list[dict]:
        """Every model move, with the progress of the open one."""
        out = []
        for move in self.store.model_moves():
            row = move.to_dict()
            if move.state in ("running", "switched"):
                row["progress"] = self.store.move_progress(move)
            out.append(row)
        return out

    # --- API keys -------------------------------------------------------------------------

    def create_key(self, name: str, scopes: list[str]) -> tuple[str, str]:
        """(key id, secret): the secret exists only in this return value; the store keeps a hash."""
        from identity.store.keys import create_key

        return create_key(self.store, name, scopes)

    def keys(self):
        from identity.store.keys import list_keys

        return list_keys(self.store)

    def revoke_key(self, key_id: str):
        from identity.store.keys import revoke_key

        try:
            return revoke_key(self.store, key_id)
        finally:
            if self._caches is not None:  # at once in this process; the others hear of it
                self._caches.keys.cache.invalidate(key_id)

    def authenticate(self, secret: str):
        """The active key `secret` presents (AuthenticationError otherwise), from memory
        when it was seen recently (`serving_caches`)."""
        caches = self.serving_caches()
        if caches is None:
            from identity.store.keys import authenticate

            return authenticate(self.store, secret)
        return caches.keys.authenticate(secret)

    def cached_key(self, secret: str):
        """The key from memory without any I/O (None: not cached, call `authenticate`)."""
        caches = self._caches
        return None if caches is None else caches.keys.cached(secret)

    # --- serving caches -------------------------------------------------------------------

    def serving_caches(self) -> ServingCaches | None:
        """API keys and person names kept in memory, dropped when the database announces a
        change (identity/store/readcache.py); None when `api.cache_seconds` is 0."""
        if self._caches is not None:
            return self._caches
        if self.settings.api.cache_seconds <= 0:
            return None
        with self._opening:
            if self._caches is None:
                from identity.store.readcache import ServingCaches

                self._caches = ServingCaches(self.store, self.settings.api.cache_seconds).start()
            return self._caches

    def person_names(self, ids):
        """{person id: (id, external_id, display_name)} of the persons among `ids` that
        exist: what search results say about them."""
        caches = self.serving_caches()
        if caches is None:
            from identity.store.readcache import person_names

            return person_names(self.store, ids)
        return caches.names.names(ids)
