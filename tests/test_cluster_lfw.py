"""Clustering real faces: lfw-dev photos and group photos through the real pipeline.

Embeddings are cached in pytest's cache (keyed by model version and file list), so only
the first run pays for the network (~370 photos)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from identity.cluster import ALGORITHMS, ClusterParams, FaceSet, cluster_faces, cluster_incremental
from identity.cluster import evaluate_clustering
from identity.cluster.metrics import subject_faces

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
LFW_DIR = DATA_DIR / "lfw-dev"
MISC_DIR = DATA_DIR / "misc"

pytestmark = pytest.mark.slow


def lfw_subset() -> list[Path]:
    """Everyone with 5+ photos (56 people, 326 photos) plus 40 people seen once, who must
    stay unclustered: the hard part of real collections."""
    folders = sorted(p for p in LFW_DIR.iterdir() if p.is_dir())
    photos = {f: sorted(f.glob("*.jpg")) for f in folders}
    many = [p for f in folders if len(photos[f]) >= 5 for p in photos[f]]
    once = [photos[f][0] for f in folders if len(photos[f]) == 1][:40]
    return many + once


def embedded(pipeline, pytestconfig, name: str, paths: list[Path]) -> FaceSet:
    key = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:12]
    cache = Path(pytestconfig.cache.mkdir("identity-cluster")) / f"{name}-{pipeline.model_version}-{key}.npz"
    if not cache.exists():
        faces = FaceSet.from_results(pipeline.process(paths))
        np.savez(
            cache,
            embeddings=faces.embeddings,
            paths=np.array([faces.source_of(i) for i in range(len(faces))]),
            boxes=faces.boxes,
            probs=faces.probabilities,
        )
    faces, _ = FaceSet.from_npz(cache)
    return faces


@pytest.fixture(scope="module")
def lfw(pipeline, pytestconfig) -> tuple[FaceSet, np.ndarray, np.ndarray]:
    """(faces, row of each photo's subject, its person)."""
    faces = embedded(pipeline, pytestconfig, "lfw", lfw_subset())
    subjects = subject_faces(faces.boxes, faces.image_index, np.full((len(faces.sources), 2), 250.0))
    people = np.array([Path(faces.source_of(i)).parent.name for i in subjects])
    return faces, subjects, people


def test_every_photo_yields_its_subject(lfw):
    faces, subjects, _ = lfw
    assert len(subjects) == len(lfw_subset())  # the detector misses no LFW subject


def test_default_clustering_groups_lfw_people(lfw, model_settings):
    faces, subjects, people = lfw
    result = cluster_faces(faces, ClusterParams.from_settings(model_settings))
    m = evaluate_clustering(people, result.labels[subjects])
    # Measured with the defaults (HDBSCAN, floor 0.65) on this subset: precision 1.000,
    # recall 0.936, F1 0.967. The defaults favour precision (a wrong merge costs a user
    # more than a split). Floors leave room for numeric drift but fail a wrong method or
    # threshold (components at 0.5: precision 0.77, F1 0.87).
    assert m.bcubed_f1 >= 0.95, m
    assert m.bcubed_precision >= 0.98, m


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_is_far_better_than_no_clustering(lfw, model_settings, algorithm):
    faces, subjects, people = lfw
    nothing = evaluate_clustering(people, np.full(len(subjects), -1)).bcubed_f1
    result = cluster_faces(faces, ClusterParams.from_settings(model_settings, algorithm=algorithm))
    m = evaluate_clustering(people, result.labels[subjects])
    # All photos alone scores ~0.4 here; every method at the default threshold beats 0.85
    # (components and DBSCAN, which chain, are the weakest at 0.87-0.89).
    assert m.bcubed_f1 > 0.85 > nothing + 0.3, (algorithm, m)


def test_people_seen_once_stay_unclustered(lfw, model_settings):
    faces, subjects, people = lfw
    result = cluster_faces(faces, ClusterParams.from_settings(model_settings))
    counts = {p: int((people == p).sum()) for p in set(people)}
    alone = np.array([counts[p] == 1 for p in people])
    assert np.mean(result.labels[subjects][alone] == -1) >= 0.9


def test_adding_photos_later_matches_clustering_them_all_at_once(lfw, model_settings):
    faces, subjects, people = lfw
    params = ClusterParams.from_settings(model_settings)
    rng = np.random.default_rng(0)
    first_half = rng.random(len(faces.sources))[faces.image_index] < 0.6
    old, new = faces.subset(first_half), faces.subset(~first_half)
    new = FaceSet(new.embeddings, np.unique(new.image_index, return_inverse=True)[1], boxes=new.boxes)
    before = cluster_faces(old, params)
    after = cluster_incremental(old, before, new, params)
    # Rows of `after` are old faces then new faces; map the subjects into that order.
    order = np.concatenate([np.flatnonzero(first_half), np.flatnonzero(~first_half)])
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    incremental = evaluate_clustering(people, after.labels[position[subjects]])
    batch = evaluate_clustering(people, cluster_faces(faces, params).labels[subjects])
    assert incremental.bcubed_f1 >= batch.bcubed_f1 - 0.02, (incremental, batch)


def test_faces_of_one_group_photo_never_share_a_cluster(pipeline, pytestconfig):
    group = sorted((MISC_DIR / "group").iterdir())
    faces = embedded(pipeline, pytestconfig, "group", group)
    assert len(faces) >= 10 and len(faces.sources) == 4
    # Link everything to everything: only the constraint keeps photo-mates apart.
    for algorithm in ALGORITHMS:
        result = cluster_faces(faces, ClusterParams(algorithm=algorithm, threshold=-1.0, k=8))
        clustered = result.labels >= 0
        pairs = list(zip(result.labels[clustered], faces.image_index[clustered]))
        assert len(pairs) == len(set(pairs)), algorithm
    unconstrained = cluster_faces(
        faces, ClusterParams(algorithm="components", threshold=-1.0, k=8, same_photo_constraint=False)
    )
    assert unconstrained.n_clusters == 1  # without it, photo-mates would be merged
