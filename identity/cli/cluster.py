"""identity cluster: group the faces of unlabelled photos into people."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from identity.cli._common import Images, JsonOption, dump, out, progress, service, settings
from identity.errors import ConflictError
from identity.files import expand_images
from identity.vocabulary import ClusterAlgorithm, FolderMode

Algorithm = Annotated[Optional[ClusterAlgorithm], typer.Option(help="Clustering method (default: hdbscan).")]
Threshold = Annotated[Optional[float], typer.Option(
    min=-1.0, max=1.0,
    help="Cosine similarity: edge cut for graph methods, eps for DBSCAN, outlier floor for HDBSCAN.")]
Hubness = Annotated[Optional[bool], typer.Option(
    "--hubness/--no-hubness",
    help="Take each face's typical similarity to other people out of the graph first (default: the model's calibration).")]


def cluster_params(algorithm: ClusterAlgorithm | None, threshold: float | None, hubness: bool | None = None,
                   *, served=None):
    """The clustering parameters of the configured model (or of `served`, the settings a
    service serves with), with the options given."""
    from identity.cluster import ClusterParams

    overrides = {k: v for k, v in (("algorithm", algorithm and algorithm.value),
                                   ("threshold", threshold), ("hubness", hubness)) if v is not None}
    return ClusterParams.from_settings(served or settings(), **overrides)


def clustered(svc, paths: list[Path], params, *, keep_crops: bool = False, keep_chips: bool = False):
    with progress() as bar:
        task = bar.add_task("embedding", total=len(paths), rate="")
        return svc.cluster_images(paths, params=params, keep_crops=keep_crops, keep_chips=keep_chips,
                                  on_image=lambda _: bar.advance(task))


def annotations(clusters: int, matches: dict, saved: dict | None) -> dict[int, dict]:
    """Per cluster, for clusters.json (after --match or --save): the enrolled person it
    matched (`person`, null when none) and, with --save, the person its faces were saved
    as (`saved_as`: external id and person id)."""
    saved_as = (saved or {}).get("clusters", {})
    notes: dict[int, dict] = {}
    for cluster in range(clusters):
        found = matches.get(cluster)
        notes[cluster] = {"person": None if found is None else {
            "external_id": found.external_id, "display_name": found.display_name,
            "faces_matched": found.faces_matched, "similarity": round(found.similarity, 4)}}
        if saved is not None:
            notes[cluster]["saved_as"] = saved_as.get(cluster)
    return notes


def sheet_titles(matches: dict, saved: dict | None) -> dict[int, str]:
    """What a contact sheet says its cluster is: the matched person, or what it was saved as."""
    titles = {c: f"{m.external_id}" + (f" ({m.display_name})" if m.display_name else "") +
              f", {m.faces_matched}/{m.faces} faces matched" for c, m in matches.items()}
    for cluster, person in (saved or {}).get("clusters", {}).items():
        if cluster not in matches:
            titles[cluster] = f"saved as {person['external_id']}"
    return titles


def saved_sentence(saved: dict) -> str:
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(saved["images"].items()))
    return f"saved the clustered faces to {len(saved['persons'])} person(s): {counts or 'nothing to store'}"


def cluster(
    images: Images,
    out_dir: Annotated[Path, typer.Option("--out", help="Where clusters.json, folders and sheets go.")],
    algorithm: Algorithm = None,
    threshold: Threshold = None,
    hubness: Hubness = None,
    folders: Annotated[FolderMode, typer.Option(
        help="A folder per cluster with face 'crops', 'links' to the originals, or 'none'.")] = FolderMode.crops,
    sheets: Annotated[bool, typer.Option(
        help="A titled contact-sheet PNG per cluster, and one of the unclustered faces.")] = True,
    match: Annotated[bool, typer.Option(
        "--match", help="Name clusters after the enrolled person most of their faces find.")] = False,
    save: Annotated[bool, typer.Option(
        "--save", help="Store the clustered faces: to the matched person, else as a new unnamed person; "
        "clusters.json records which person each cluster was saved as.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an earlier result in --out (only the files a clustering writes).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Group the faces of unlabelled photos into people. Two faces of one photo never share
    a cluster; outliers and low-quality faces stay unclustered, with the reason. An --out
    folder holding an earlier result is refused unless --force: two runs never mix."""
    from identity.cluster.output import (
        REPORT,
        SHEETS_DIR,
        clear_previous,
        previous_result,
        write_cluster_folders,
        write_contact_sheets,
        write_json,
    )

    earlier = previous_result(out_dir)
    if earlier and not force:  # refused before any work: the run would take minutes to fail
        raise ConflictError(f"{out_dir} holds an earlier clustering result ({earlier[0].name}); pass --force "
                            "to replace it, or choose another --out", path=str(out_dir))
    paths = expand_images(images)
    with service() as svc:
        if match or save:  # the faces must be embedded by the model the store serves
            svc.follow_moves(force=True)
        params = cluster_params(algorithm, threshold, hubness, served=svc.settings)
        clustering = clustered(svc, paths, params, keep_crops=folders == FolderMode.crops or sheets,
                               keep_chips=save)
        matches = svc.match_clusters(clustering) if match or save else {}
        saved = svc.save_clusters(clustering, matches=matches) if save else None
    faces, result = clustering.faces, clustering.result
    clear_previous(out_dir)  # only now: a run that fails leaves the earlier result whole
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = annotations(result.n_clusters, matches, saved) if match or save else None
    written = write_json(result, faces, out_dir / REPORT, annotations=notes)
    if folders != FolderMode.none:
        write_cluster_folders(result, faces, out_dir, mode=folders.value)
    if sheets:
        write_contact_sheets(result, faces, out_dir / SHEETS_DIR, titles=sheet_titles(matches, saved))
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
