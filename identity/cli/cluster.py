"""identity cluster: group the faces of unlabelled photos into people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from identity.cli._common import Images, JsonOption, dump, out, progress, service, settings
from identity.files import expand_images
from identity.vocabulary import ClusterAlgorithm, FolderMode

Algorithm = Annotated[Optional[ClusterAlgorithm], typer.Option(help="Clustering method (default: hdbscan).")]
Threshold = Annotated[Optional[float], typer.Option(
    min=-1.0, max=1.0,
    help="Cosine similarity: edge cut for graph methods, eps for DBSCAN, outlier floor for HDBSCAN.")]


def cluster_params(algorithm: ClusterAlgorithm | None, threshold: float | None):
    from identity.cluster import ClusterParams

    overrides = {k: v for k, v in (("algorithm", algorithm and algorithm.value),
                                   ("threshold", threshold)) if v is not None}
    return ClusterParams.from_settings(settings(), **overrides)


def clustered(svc, paths: list[Path], params, *, keep_crops: bool = False):
    with progress() as bar:
        task = bar.add_task("embedding", total=len(paths), rate="")
        return svc.cluster_images(paths, params=params, keep_crops=keep_crops,
                                  on_image=lambda _: bar.advance(task))


def saved_sentence(saved: dict) -> str:
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(saved["images"].items()))
    return f"saved the clustered faces to {len(saved['persons'])} person(s): {counts or 'nothing to store'}"


def cluster(
    images: Images,
    out_dir: Annotated[Path, typer.Option("--out", help="Where clusters.json, folders and sheets go.")],
    algorithm: Algorithm = None,
    threshold: Threshold = None,
    folders: Annotated[FolderMode, typer.Option(
        help="A folder per cluster with face 'crops', 'links' to the originals, or 'none'.")] = FolderMode.crops,
    sheets: Annotated[bool, typer.Option(help="A contact-sheet PNG per cluster.")] = True,
    match: Annotated[bool, typer.Option(
        "--match", help="Name clusters after the enrolled person most of their faces find.")] = False,
    save: Annotated[bool, typer.Option(
        "--save", help="Store the clustered faces: to the matched person, else as a new unnamed person.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Group the faces of unlabelled photos into people. Two faces of one photo never share
    a cluster; outliers and low-quality faces stay unclustered, with the reason."""
    from identity.cluster.output import write_cluster_folders, write_contact_sheets, write_json

    paths = expand_images(images)
    params = cluster_params(algorithm, threshold)
    with service() as svc:
        clustering = clustered(svc, paths, params, keep_crops=folders == FolderMode.crops or sheets)
        matches = svc.match_clusters(clustering) if match or save else {}
        saved = svc.save_clusters(clustering, matches=matches) if save else None
    faces, result = clustering.faces, clustering.result
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_json(result, faces, out_dir / "clusters.json")
    if matches:  # the enrolled person each matched cluster is, beside the clusters
        report = json.loads(written.read_text())
        for entry in report["clusters"]:
            found = matches.get(entry["cluster"])
            entry["person"] = None if found is None else {
                "external_id": found.external_id, "display_name": found.display_name,
                "faces_matched": found.faces_matched, "similarity": round(found.similarity, 4)}
        written.write_text(json.dumps(report, indent=1))
    if folders != FolderMode.none:
        write_cluster_folders(result, faces, out_dir, mode=folders.value)
    if sheets:
        write_contact_sheets(result, faces, out_dir / "sheets")
    unclustered = int((result.labels < 0).sum())
    summary = {"faces": len(faces), "photos": len(faces.sources), "clusters": result.n_clusters,
               "unclustered": unclustered, "algorithm": params.algorithm, "out": str(written),
               "matched": {str(c): m.external_id for c, m in matches.items()}, "saved": saved}
    if as_json:
        dump(summary)
        return
    out.print(f"{summary['faces']} face(s) in {summary['photos']} photo(s) → "
              f"{result.n_clusters} cluster(s), {unclustered} unclustered; {written}", highlight=False)
    for number, found in sorted(matches.items()):
        out.print(f"  cluster {number} is {found.external_id} ({found.faces_matched}/{found.faces} faces)",
                  highlight=False)
    if saved:
        out.print(saved_sentence(saved), highlight=False)
