"""Report files: a ROC curve PNG and a JSON document."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from identity.evaluate.metrics import RocCurve


def plot_roc(curve: RocCurve, path: Path, *, title: str, label: str | None = None) -> Path:
    """Write the ROC as a PNG, FAR on a log axis (the low-FAR end is where thresholds live)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    try:
        positive = curve.fpr > 0  # log axis cannot show FAR = 0
        ax.plot(curve.fpr[positive], curve.tpr[positive], lw=1.5, label=label)
        ax.set_xscale("log")
        ax.set_xlim(max(curve.fpr[positive].min(), 1e-5) if positive.any() else 1e-5, 1.0)
        ax.set_ylim(0.0, 1.01)
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if label:
            ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf/NaN
    return value


def write_json(data: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # readers never see a half-written report
    return path
