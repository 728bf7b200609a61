"""kNN graph, algorithms and constraints, on embeddings built so the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity.cluster import (
    ALGORITHMS,
    UNCLUSTERED,
    ClusterParams,
    FaceSet,
    cluster_faces,
    cluster_incremental,
    evaluate_clustering,
    knn_graph,
    relabel_by_size,
    split_same_photo,
)
from identity.cluster import QualityThresholds, algorithms

# HDBSCAN (the default) cannot select the whole set as one cluster, so the few-face
# tests of constraints and increments use Chinese whispers.
CW = ClusterParams("chinese_whispers", threshold=0.5)
from identity.errors import InputError


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def people(sizes: list[int], *, dim: int = 64, noise: float = 0.25, seed: int = 0):
    """One random direction per person, faces scattered around it: same-person cosine
    ≈ 0.8, different-person ≈ 0 (what a good face model gives, with wider margins)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((len(sizes), dim)))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[truth] + noise * rng.standard_normal((len(truth), dim)) / np.sqrt(dim) * 2
    return unit(x), truth


# --- kNN graph ---------------------------------------------------------------------------


def test_exact_knn_graph_equals_brute_force_and_never_lists_a_face_itself():
    x, _ = people([5] * 40, seed=1)
    graph = knn_graph(x, 6)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.sort(sims, axis=1)[:, ::-1][:, :6]
    np.testing.assert_allclose(graph.similarities, expected, atol=1e-5)
    assert not (graph.indices == np.arange(len(x))[:, None]).any()


def test_exact_duplicates_are_neighbours_not_self():
    x, _ = people([3, 3], seed=2)
    x = np.concatenate([x, x[:1]])  # face 6 is a copy of face 0
    graph = knn_graph(x, 2)
    assert graph.indices[0, 0] == 6 and graph.indices[6, 0] == 0
    assert graph.similarities[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_fewer_faces_than_k_pads_with_missing_neighbours():
    x, _ = people([3], seed=3)
    graph = knn_graph(x, 5)
    assert (graph.indices[:, 2:] == -1).all() and np.isneginf(graph.similarities[:, 2:]).all()
    assert len(graph.edges()[0]) == 3  # the triangle, each edge once


def test_ivf_graph_finds_nearly_all_the_edges_clustering_uses():
    x, _ = people([4] * 1500, seed=4)
    exact = knn_graph(x, 5)
    approx = knn_graph(x, 5, exact_max=1000)  # forces the inverted-file index
    # Only edges above a clustering threshold matter; the rest are near-random pairs.
    wanted = {tuple(e) for e in np.stack(exact.edges(0.5)[:2], axis=1).tolist()}
    found = {tuple(e) for e in np.stack(approx.edges(0.5)[:2], axis=1).tolist()}
    assert len(wanted) > 5000
    assert len(wanted & found) / len(wanted) > 0.99


def test_knn_graph_refuses_bad_shapes():
    with pytest.raises(InputError):
        knn_graph(np.zeros(5, np.float32), 3)


# --- algorithms ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_recovers_well_separated_people_and_leaves_loners_out(algorithm):
    x, truth = people([6, 5, 4, 4, 3, 1, 1, 1], seed=5)
    result = cluster_faces(FaceSet.from_embeddings(x), ClusterParams(algorithm=algorithm, threshold=0.5))
    m = evaluate_clustering(truth, result.labels)
    assert m.bcubed_f1 == pytest.approx(1.0)
    assert (result.labels[-3:] == UNCLUSTERED).all()  # the three people seen once


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_collection_of_one_person_is_one_cluster(algorithm):
    # HDBSCAN alone leaves this all noise (it never selects its hierarchy's root).
    x, _ = people([7, 1, 1], seed=3)
    result = cluster_faces(FaceSet.from_embeddings(x), ClusterParams(algorithm=algorithm, threshold=0.5))
    assert result.n_clusters == 1  # not split into sub-clusters of one person
    assert (result.labels[:7] == 0).sum() >= 5  # HDBSCAN may still call a face noise
    assert (result.labels[7:] == UNCLUSTERED).all()


def test_chinese_whispers_cuts_a_weak_bridge_that_connected_components_follows():
    # Two tight groups of 8; one face of each group is also close-ish to the other group.
    x, truth = people([8, 8], seed=6, noise=0.1)
    bridge = unit(x[0] + x[8])
    x = np.concatenate([x, bridge[None]])
    truth = np.append(truth, -1)
    faces = FaceSet.from_embeddings(x)
    comp = cluster_faces(faces, ClusterParams(algorithm="components", threshold=0.6))
    cw = cluster_faces(faces, ClusterParams(algorithm="chinese_whispers", threshold=0.6))
    assert comp.n_clusters == 1  # the chain through the bridge face joins both people
    assert cw.n_clusters == 2
    assert len(set(cw.labels[:8])) == 1 and len(set(cw.labels[8:16])) == 1


def test_threshold_is_the_similarity_at_which_faces_link():
    a = unit(np.array([1.0, 0.0, 0.0]))
    b = unit(np.array([1.0, 1.0, 0.0]))  # cos(a, b) = 0.707
    faces = FaceSet.from_embeddings(np.stack([a, b]))
    assert cluster_faces(faces, ClusterParams("components", threshold=0.70, k=1)).n_clusters == 1
    assert cluster_faces(faces, ClusterParams("components", threshold=0.71, k=1)).n_clusters == 0


def test_dbscan_eps_is_the_euclidean_twin_of_the_threshold():
    assert algorithms.cosine_to_euclidean(0.5) == pytest.approx(1.0)
    assert algorithms.euclidean_to_cosine(1.0) == pytest.approx(0.5)


def test_unknown_algorithm_is_an_input_error():
    x, _ = people([2], seed=7)
    with pytest.raises(InputError):
        cluster_faces(FaceSet.from_embeddings(x), ClusterParams(algorithm="kmeans"))  # type: ignore[arg-type]


# --- constraints -----------------------------------------------------------------------------


def test_two_faces_of_one_photo_are_split_even_when_linked_through_others():
    x, truth = people([4, 4], seed=8, noise=0.1)
    # Photo 0 holds face 0 (person 0) and face 4 (person 1); the threshold is so loose
    # that everyone links to everyone.
    image_index = np.array([0, 1, 2, 3, 0, 5, 6, 7])
    faces = FaceSet.from_embeddings(x, image_index)
    for algorithm in ("components", "chinese_whispers", "dbscan"):
        result = cluster_faces(faces, ClusterParams(algorithm=algorithm, threshold=-1.0))
        assert result.labels[0] != result.labels[4], algorithm
        assert evaluate_clustering(truth, result.labels).bcubed_f1 == pytest.approx(1.0), algorithm


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(ALGORITHMS),
    st.integers(0, 10_000),
    st.floats(-0.2, 0.8),
)
def test_no_cluster_ever_holds_two_faces_of_one_photo(algorithm, seed, threshold):
    rng = np.random.default_rng(seed)
    x, _ = people([5] * 8, seed=seed, noise=0.6)
    image_index = rng.integers(0, 15, len(x))  # ~2-3 faces per photo, at random
    result = cluster_faces(
        FaceSet.from_embeddings(x, image_index), ClusterParams(algorithm=algorithm, threshold=threshold)
    )
    clustered = result.labels >= 0
    pairs = set()
    for label, image in zip(result.labels[clustered], image_index[clustered]):
        assert (label, image) not in pairs
        pairs.add((label, image))


def test_splitting_keeps_every_face_and_seeds_each_part_with_one_photo_face():
    x, _ = people([4, 4], seed=9, noise=0.1)
    labels = np.zeros(8, np.int64)  # one wrong cluster of two people
    image_index = np.array([0, 1, 2, 3, 0, 5, 6, 7])
    split = split_same_photo(labels, x, image_index)
    assert len(set(split[:4])) == 1 and len(set(split[4:])) == 1 and split[0] != split[4]


def test_relabel_numbers_clusters_by_size_and_drops_small_ones():
    labels = np.array([7, 7, 3, 3, 3, 9, -1, 5, 5])
    assert relabel_by_size(labels, 2).tolist() == [1, 1, 0, 0, 0, -1, -1, 2, 2]
    assert relabel_by_size(labels, 3).tolist() == [-1, -1, 0, 0, 0, -1, -1, -1, -1]


# --- incremental ------------------------------------------------------------------------------


def test_new_faces_join_their_people_and_old_clusters_keep_their_numbers():
    x, truth = people([6, 6, 6, 2], seed=10)
    old = np.r_[0:4, 6:10, 12:16, 18]  # four faces of each of the first three people + one of the last
    new = np.setdiff1d(np.arange(len(x)), old)
    old_faces = FaceSet.from_embeddings(x[old])
    first = cluster_faces(old_faces, CW)
    later = cluster_incremental(old_faces, first, FaceSet.from_embeddings(x[new]), CW)
    assert later.labels[: len(old)].tolist()[:12] == first.labels[:12].tolist()
    m = evaluate_clustering(np.concatenate([truth[old], truth[new]]), later.labels)
    assert m.bcubed_f1 == pytest.approx(1.0)  # incl. the last person, formed from old + new


def test_incremental_respects_the_same_photo_constraint():
    x, _ = people([5], seed=11, noise=0.1)
    old_faces = FaceSet.from_embeddings(x[:3])
    first = cluster_faces(old_faces, CW)
    # Two new faces of one new photo, both looking like the clustered person.
    new_faces = FaceSet.from_embeddings(x[3:], np.array([0, 0]))
    later = cluster_incremental(old_faces, first, new_faces, CW)
    assert sorted(later.labels[3:].tolist()) == [UNCLUSTERED, 0]


def test_incremental_keeps_filtered_faces_out():
    x, _ = people([4], seed=12, noise=0.1)
    old_faces = FaceSet.from_embeddings(x[:2])
    first = cluster_faces(old_faces, CW)
    new_faces = FaceSet(x[2:], np.arange(2), probabilities=np.array([0.99, 0.5]))
    params = ClusterParams("chinese_whispers", 0.5, quality=QualityThresholds(min_probability=0.9))
    later = cluster_incremental(old_faces, first, new_faces, params)
    assert later.labels.tolist() == [0, 0, 0, UNCLUSTERED]
    assert later.reasons.tolist() == ["", "", "", "low_probability"]
