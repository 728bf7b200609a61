"""Group unlabelled faces into people: kNN graph (FAISS), clustering algorithms,
constraints (same photo, quality, minimum size), incremental updates, metrics, output."""

from identity.cluster.api import (
    ALGORITHMS,
    ClusterParams,
    centred_graph,
    cluster_faces,
    cluster_incremental,
    relabel_by_size,
    split_same_photo,
)
from identity.cluster.knn import KnnGraph, knn_graph
from identity.cluster.metrics import ClusterMetrics, evaluate_clustering
from identity.cluster.quality import QualityThresholds, quality_reasons
from identity.cluster.sharpness import blur_score
from identity.cluster.types import UNCLUSTERED, ClusterResult, FaceSet

__all__ = [
    "ALGORITHMS",
    "UNCLUSTERED",
    "ClusterMetrics",
    "ClusterParams",
    "ClusterResult",
    "FaceSet",
    "KnnGraph",
    "QualityThresholds",
    "blur_score",
    "centred_graph",
    "cluster_faces",
    "cluster_incremental",
    "evaluate_clustering",
    "knn_graph",
    "quality_reasons",
    "relabel_by_size",
    "split_same_photo",
]
