"""The evaluation runners through the real face pipeline, on a small LFW subset.

A mini LFW tree is built in tmp_path from links to ../shared/data/lfw-dev (one same and
one different pair per fold of pairsDevTrain.txt), plus one person whose only image has
no face, to exercise the no-face fallback. Images are embedded once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from identity.config import Settings
from identity.cluster import ClusterParams
from identity.evaluate.calibrate import (
    CLUSTER_FLOORS,
    CLUSTER_MERGES,
    thresholds_by_level,
    write_calibration,
)
from identity.evaluate.pairs import parse_pairs
from identity.evaluate.runner import (
    EmbeddedImages,
    embed_images,
    labelled_images,
    run_calibration,
    run_identify,
    run_lfw,
)

LFW_DEV = Path("/work/shared/data/lfw-dev")
NO_FACE = Path("/work/shared/data/misc/nonface/sklearn_flower.jpg")

pytestmark = pytest.mark.slow


def link(root: Path, name: str, index: int, target: Path) -> None:
    path = root / name / f"{name}_{index:04d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.symlink_to(target)


@pytest.fixture(scope="module")
def mini_lfw(tmp_path_factory) -> tuple[Path, Path]:
    """(image dir, View-1-format pairs file): 10 same + 10 different pairs, the last
    different pair involving `Nobody`, whose image holds no face."""
    root = tmp_path_factory.mktemp("mini-lfw")
    chosen = parse_pairs(LFW_DEV / "pairsDevTrain.txt", LFW_DEV).subset(1).pairs
    same = [p for p in chosen if p.same]
    diff = [p for p in chosen if not p.same][:-1]
    lines = ["10"]
    for p in same:
        i, j = (int(x.stem.rsplit("_", 1)[1]) for x in (p.path1, p.path2))
        lines.append(f"{p.name1}\t{i}\t{j}")
    for p in diff:
        i, j = (int(x.stem.rsplit("_", 1)[1]) for x in (p.path1, p.path2))
        lines.append(f"{p.name1}\t{i}\t{p.name2}\t{j}")
    lines.append(f"{diff[0].name1}\t{int(diff[0].path1.stem[-4:])}\tNobody\t1")
    for p in chosen:
        for path, name in ((p.path1, p.name1), (p.path2, p.name2)):
            link(root, name, int(path.stem[-4:]), path)
    link(root, "Nobody", 1, NO_FACE)
    pairs_file = root / "pairs_mini.txt"
    pairs_file.write_text("\n".join(lines) + "\n")
    return root, pairs_file


@pytest.fixture(scope="module")
def embedded(pipeline, mini_lfw) -> EmbeddedImages:
    paths, _ = labelled_images(mini_lfw[0])
    return embed_images(pipeline, paths)


def test_embedding_uses_a_fallback_crop_where_no_face_is_found(embedded: EmbeddedImages) -> None:
    assert [p.parent.name for p in embedded.no_face] == ["Nobody"]
    assert embedded.detected.sum() == len(embedded.paths) - 1
    # every image, the fallback included, has a unit embedding, so every pair can be scored
    assert np.linalg.norm(embedded.embeddings, axis=1) == pytest.approx(
        np.ones(len(embedded.paths)), abs=1e-4
    )


def test_lfw_protocol_scores_every_pair_and_writes_its_report(
    pipeline, mini_lfw, embedded, tmp_path
) -> None:
    root, pairs_file = mini_lfw
    report = run_lfw(pipeline, root, pairs_file, out_dir=tmp_path, embedded=embedded)

    m = report.metrics
    assert (m.n_pairs, m.n_same, m.n_different, m.n_folds) == (20, 10, 10, 10)
    assert report.n_no_face == 1 and report.no_face[0].endswith("Nobody_0001.jpg")
    assert "median detected face box" in report.fallback
    # a real FaceNet separates these pairs almost perfectly
    assert m.accuracy_mean >= 0.9 and m.auc >= 0.95
    assert m.same_similarity["mean"] > m.different_similarity["mean"] + 0.4
    assert 0.0 <= m.eer <= 0.1
    assert Path(report.roc_png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads(Path(report.report_json).read_text())
    assert written["metrics"]["accuracy_mean"] == pytest.approx(m.accuracy_mean)
    assert (
        written["model"] == pipeline.model_name
        and written["model_version"] == pipeline.model_version
    )
    assert written["n_no_face"] == 1


def test_lfw_protocol_embeds_through_the_pipeline_itself(pipeline, mini_lfw, embedded) -> None:
    root, pairs_file = mini_lfw
    small = root / "pairs_tiny.txt"
    small.write_text(
        "\n".join(
            pairs_file.read_text().splitlines()[:3] + pairs_file.read_text().splitlines()[11:13]
        ).replace("10", "2", 1)
        + "\n"
    )
    report = run_lfw(pipeline, root, small)  # no `embedded`: runs the pipeline
    assert report.n_images == len(parse_pairs(small, root).unique_paths())
    assert report.metrics.n_pairs == 4 and report.embed_seconds > 0


def test_identification_on_the_mini_tree(pipeline, mini_lfw, embedded, tmp_path) -> None:
    report = run_identify(pipeline, mini_lfw[0], embedded=embedded, out_dir=tmp_path)
    m = report.metrics
    assert report.n_no_face == 1  # Nobody is left out, not guessed
    assert m.n_gallery == 10 and m.n_mated_probes == 10
    assert m.n_impostor_probes == report.n_images - 20 - 1
    assert m.rank_rates[1] >= 0.9 and m.rank_rates[5] >= m.rank_rates[1]
    point = m.open_set[0]
    assert point.empirical_false_alarm_rate <= point.false_alarm_rate
    assert 0.0 <= point.dir <= m.rank_rates[1]
    assert json.loads(Path(report.report_json).read_text())["metrics"]["n_gallery"] == 10


def test_calibration_on_the_mini_tree(pipeline, model_settings, mini_lfw, embedded, tmp_path) -> None:
    root, pairs_file = mini_lfw
    report = run_calibration(pipeline, root, pairs_file, settings=model_settings,
                             embedded=embedded, write=False)
    n = (
        len(parse_pairs(pairs_file, root).unique_paths()) - 1
    )  # calibration uses the pairs' images with a face
    n_same_pairs = 10  # each repeated person has exactly two images here
    loose, normal, strict = (report.levels[k] for k in ("loose", "normal", "strict"))
    assert loose.n_impostor == n * (n - 1) // 2 - n_same_pairs and loose.n_genuine == n_same_pairs
    for level in (loose, normal, strict):
        assert level.empirical_far <= level.far
    assert loose.similarity <= normal.similarity <= strict.similarity
    assert not strict.resolved  # a few hundred impostor pairs cannot resolve 1e-4
    assert report.n_no_face == 1

    fit = report.clustering  # the floor and merge were fitted on the same faces
    assert fit is not None and fit.n_faces == n and 0.0 < fit.bcubed_f1 <= 1.0
    assert fit.floor in CLUSTER_FLOORS and fit.merge_similarity in CLUSTER_MERGES

    settings = Settings(data_dir=tmp_path)
    write_calibration(
        report.levels, pipeline.spec, settings, source=report.source, clustering=fit
    )
    assert thresholds_by_level(pipeline.spec, settings)["normal"] == normal.similarity
    assert ClusterParams.from_settings(settings).threshold == fit.floor
