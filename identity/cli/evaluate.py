"""identity evaluate lfw | identify | clusters, and identity calibrate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from identity.cli._common import JsonOption, dump, out, progress, service
from identity.cli.cluster import Algorithm, Hubness, Threshold, cluster_params, clustered
from identity.errors import InputError

app = typer.Typer(help="Measure accuracy: LFW protocol, identification, clustering.")

ImageDir = Annotated[Path, typer.Option("--dir", help="LFW images: DIR/<Name>/<Name>_0001.jpg.")]
Pairs = Annotated[Path, typer.Option(help="pairs.txt (10 folds) or a View 1 list (pairsDevTrain.txt).")]


def image_progress(bar, total: int, label: str):
    task = bar.add_task(label, total=total, rate="")
    return lambda n=1: bar.advance(task, n)


def existing_dir(directory: Path) -> Path:
    if not directory.is_dir():
        raise InputError("no such directory", path=str(directory))
    return directory


def existing_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError("no such file", path=str(path))
    return path


@app.command("lfw")
def evaluate_lfw(
    directory: ImageDir,
    pairs: Pairs,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Write lfw_report.json and lfw_roc.png here.")] = None,
    as_json: JsonOption = False,
) -> None:
    """facenet's LFW protocol through this pipeline: 10-fold accuracy, VAL@FAR=1e-3, AUC, EER."""
    from identity.evaluate.runner import load_pairs, run_lfw

    count = len(load_pairs(existing_dir(directory), existing_file(pairs)).unique_paths())
    with service() as svc, progress() as bar:
        report = run_lfw(svc.pipeline, directory, pairs, out_dir=out_dir,
                         progress=image_progress(bar, count, "embedding"))
    data = report.to_dict()
    if as_json:
        dump(data)
        return
    m = report.metrics
    out.print(f"{report.model} ({report.alignment}{', flip' if report.flip else ''}) on {pairs.name}: "
              f"accuracy {m.accuracy_mean:.4f} ± {m.accuracy_std:.4f}, "
              f"VAL@FAR={m.far_target:g} {m.val_mean:.4f} ± {m.val_std:.4f}, "
              f"AUC {m.auc:.4f}, EER {m.eer:.4f}", highlight=False)
    out.print(f"{report.n_images} images, {report.n_no_face} without a face ({report.fallback})")
    if out_dir:
        out.print(f"report and ROC curve in {out_dir}", highlight=False)


@app.command("identify")
def evaluate_identify(
    directory: Annotated[Path, typer.Option("--dir", help="DIR/<person>/<image>.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Write the JSON report here.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Gallery: first photo of each person with two or more; probes: their other photos, plus
    people seen once as impostors. Rank-1/5 and open-set DIR at FAR 1e-2."""
    from identity.evaluate.runner import run_identify

    count = sum(1 for _ in existing_dir(directory).glob("*/*"))
    with service() as svc, progress() as bar:
        report = run_identify(svc.pipeline, directory, out_dir=out_dir,
                              progress=image_progress(bar, count, "embedding"))
    data = report.to_dict()
    if as_json:
        dump(data)
        return
    for key, value in data.items():
        out.print(f"{key:>28}: {value:.4f}" if isinstance(value, float) else f"{key:>28}: {value}",
                  highlight=False)


@app.command("clusters")
def evaluate_clusters(
    directory: Annotated[Path, typer.Argument(help="DIR/<person>/<image>: folder names are the truth.")],
    algorithm: Algorithm = None,
    threshold: Threshold = None,
    hubness: Hubness = None,
    as_json: JsonOption = False,
) -> None:
    """Cluster the photos as if unlabelled, then score against the folder names: pairwise and
    BCubed precision/recall/F1, clusters vs identities, fraction unclustered."""
    from identity.cluster.metrics import folder_metrics
    from identity.enroll import EnrollItem, items_from_directory

    params = cluster_params(algorithm, threshold, hubness)
    # The same layout as enrollment: `_`/`.` folders (probes, hidden) are not people.
    photos = [Path(item.source) for item in items_from_directory(existing_dir(directory))
              if isinstance(item, EnrollItem)]
    if not photos:
        raise InputError("no photos in DIR/<person>/ folders", path=str(directory))
    with service() as svc:
        clustering = clustered(svc, photos, params)
    metrics = folder_metrics(clustering.faces, clustering.result).to_dict()
    if as_json:
        dump({"algorithm": params.algorithm, "threshold": params.threshold, "hubness": params.hubness, **metrics})
        return
    for key, value in metrics.items():
        out.print(f"{key:>28}: {value:.4f}" if isinstance(value, float) else f"{key:>28}: {value}",
                  highlight=False)


def calibrate(
    directory: Annotated[Path, typer.Option("--dir", help="Labelled images (LFW layout).")],
    pairs: Annotated[Path, typer.Option(help="The pairs file naming the images to use.")],
    as_json: JsonOption = False,
) -> None:
    """Similarity thresholds for false-accept rates 1e-2 (loose), 1e-3 (normal) and 1e-4
    (strict), from every cross-identity pair; stored with the model version and used by
    verify and search from then on."""
    from identity.evaluate.runner import load_pairs, run_calibration

    count = len(load_pairs(existing_dir(directory), existing_file(pairs)).unique_paths())
    with service() as svc, progress() as bar:
        report = run_calibration(svc.pipeline, directory, pairs, settings=svc.settings,
                                 progress=image_progress(bar, count, "embedding"))
    if as_json:
        dump(report.to_dict())
        return
    table = Table("level", "target FAR", "similarity ≥", "impostor pairs", "same-person accepted")
    for name, lt in report.levels.items():
        table.add_row(name, f"{lt.far:g}", f"{lt.similarity:.4f}", f"{lt.n_impostor:,}",
                      f"{lt.genuine_accept_rate:.4f}")
    out.print(table)
    fit = getattr(report, "clustering", None)
    if fit is not None:
        out.print(f"clustering ({fit.algorithm}): floor {fit.floor}, merge {fit.merge_similarity}, "
                  f"hubness correction {'on' if fit.hubness else 'off'}; "
                  f"BCubed P {fit.bcubed_precision:.4f} R {fit.bcubed_recall:.4f} F1 {fit.bcubed_f1:.4f}"
                  + ("" if fit.precision_met else f" (no setting reached precision {fit.min_precision})"),
                  highlight=False)
    out.print(f"stored in {report.path}", highlight=False)
