"""Hubness correction (`identity.cluster.hubness`): each face's typical similarity to other
people is taken out of its edges, measured against the faces a strict pass put elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.synthetic import FaceLikeGenerator, load_target
from identity.cluster import ClusterParams, FaceSet, cluster_faces, knn_graph
from identity.cluster.hubness import centre, typical_similarity
from identity.cluster.knn import KnnGraph

# Four faces, each listing the other three, most similar first.
GRAPH = KnnGraph(
    indices=np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]),
    similarities=np.array([[0.9, 0.6, 0.5], [0.9, 0.4, 0.3], [0.6, 0.4, 0.2], [0.5, 0.3, 0.2]], np.float32),
)
NOBODY = np.full(4, -1)  # no strict cluster: everyone is "other people"


def corrected(graph: KnnGraph, a: int, b: int) -> float:
    return float(graph.similarities[a][graph.indices[a] == b][0])


def test_typical_similarity_averages_the_ranks_asked_for() -> None:
    mu = typical_similarity(GRAPH, NOBODY, ranks=(1, 3))
    np.testing.assert_allclose(mu, [0.55, 0.35, 0.3, 0.25], atol=1e-6)


def test_each_edge_loses_half_of_each_ends_excess_over_the_median() -> None:
    # μ = 0.55, 0.35, 0.30, 0.25; median 0.325: excesses +0.225, +0.025, -0.025, -0.075.
    out = centre(GRAPH, NOBODY, ranks=(1, 3))
    assert corrected(out, 0, 1) == pytest.approx(0.9 - 0.5 * (0.225 + 0.025))  # a hub's edge falls
    assert corrected(out, 2, 3) == pytest.approx(0.2 + 0.5 * (0.025 + 0.075))  # loners' edge rises
    for a in range(4):  # symmetric, and every row still most similar first
        assert all(np.diff(out.similarities[a]) <= 0)
        for b in out.indices[a]:
            assert corrected(out, a, b) == pytest.approx(corrected(out, b, a))


def test_cluster_mates_of_the_strict_pass_are_not_other_people() -> None:
    strict = np.array([0, 0, -1, -1])  # faces 0 and 1 are one person
    mu = typical_similarity(GRAPH, strict, ranks=(0, 2))
    # face 0 is measured against faces 2 and 3 only, not against its mate (0.9)
    np.testing.assert_allclose(mu, [0.55, 0.35, 0.5, 0.4], atol=1e-6)


def test_a_face_with_nobody_else_in_its_list_keeps_its_similarities() -> None:
    everyone_one_person = np.zeros(4, np.int64)
    assert np.isnan(typical_similarity(GRAPH, everyone_one_person, ranks=(0, 2))).all()
    out = centre(GRAPH, everyone_one_person, ranks=(0, 2))
    np.testing.assert_array_equal(out.similarities, GRAPH.similarities)


def test_a_person_with_hundreds_of_photos_stays_one_cluster() -> None:
    """Local centering measured against a face's own neighbours would, for a person with more
    photos than k, measure them against themselves and cut every edge between their photos.
    Measured against other people's faces, their photos stay together."""
    gen = FaceLikeGenerator.calibrated(dim=128, target=load_target(), seed=5)
    people = np.concatenate([np.zeros(300, np.int64), np.repeat(np.arange(1, 601), 2)])
    faces = FaceSet.from_embeddings(gen.new_faces(people))
    params = ClusterParams(hubness=True)
    graph = knn_graph(faces.embeddings, params.k)

    big = people == 0
    strict = cluster_faces(faces, ClusterParams(algorithm="chinese_whispers"), graph=graph).labels
    against_neighbours = typical_similarity(graph, np.full(len(people), -1))
    assert np.nanmean(against_neighbours[big]) > np.nanmean(against_neighbours[~big]) + 0.2
    # Their lists hold only each other: not measured, so left as they are.
    against_others = typical_similarity(graph, strict)
    assert np.isnan(against_others[big]).mean() >= 0.95
    assert not np.isnan(against_others[~big]).any()

    labels = cluster_faces(faces, params, graph=graph).labels
    theirs = np.bincount(labels[big][labels[big] >= 0]).argmax()
    assert (labels[big] == theirs).mean() >= 0.95
    assert not (labels[~big] == theirs).any()  # and nobody else joined them
