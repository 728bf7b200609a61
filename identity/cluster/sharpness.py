"""How sharp a face crop is. A measure of pixels only: the face table records it for
each face (types.py) and the quality filter compares it with a threshold (quality.py)."""

from __future__ import annotations

import numpy as np


def blur_score(crop: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey crop (Pech-Pacheco et al. 2000):
    sharp edges give large second derivatives, blur flattens them. Compare crops of one
    size only (the aligned crops are all image_size × image_size)."""
    grey = np.asarray(crop, np.float32)
    if grey.ndim == 3:
        grey = grey @ np.array([0.299, 0.587, 0.114], np.float32)
    lap = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    )
    return float(lap.var()) if lap.size else 0.0
