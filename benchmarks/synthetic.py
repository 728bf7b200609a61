"""Synthetic face-like embeddings: identities with several faces each.

Uniform random unit vectors are a poor stand-in for face embeddings: every pair is
almost orthogonal, there are no near neighbours, and approximate indexes look both
worse (no cluster structure to exploit) and better (the true neighbours are not
crowded by look-alikes) than they are on faces. This generator reproduces what an
index actually sees: identities as clusters whose same-identity and
different-identity cosine-similarity distributions match a real model's.

Model (all vectors unit length, `d` dimensions):

    centre_i = normalise(alpha * u + Q z_i / sqrt(r))      z_i ~ N(0, I_r)
    face_f   = normalise(centre_i + sigma_f * g_f / sqrt(d))  g_f ~ N(0, I_d)
    sigma_f  = sigma0 * exp(spread * N(0, 1))

* `u` is one shared direction: real embeddings are not centred, different people
  have a small positive mean similarity (`alpha` sets it).
* `Q` is a random d×r orthonormal basis: identity centres live in a subspace of
  modest intrinsic dimension `r` (real embedding sets have low intrinsic dimension),
  which is what sets the *spread* of different-identity similarities independently
  of `d` (≈ 1/sqrt(r)); this lets 512-d vectors reproduce the same distributions.
* `sigma_f` varies per face (image quality, pose): it sets the mean and the spread
  of same-identity similarity.

`calibrate()` solves for (alpha, r, sigma0, spread) so that sampled statistics match
targets — by default those measured on LFW for the project's model, read from
`benchmarks/lfw_similarity_stats.json` when it exists.

Usage::

    from benchmarks.synthetic import FaceLikeGenerator, load_target
    gen = FaceLikeGenerator.calibrated(dim=128, target=load_target(), seed=0)
    vectors, labels = gen.faces(n_identities=200_000, faces_per_identity=5)
    queries, query_labels = gen.new_faces(labels_of_interest)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

STATS_FILE = Path(__file__).resolve().parent / "lfw_similarity_stats.json"


@dataclass(frozen=True)
class SimilarityTarget:
    """Mean and standard deviation of cosine similarity for same / different identities."""

    same_mean: float = 0.70
    same_std: float = 0.10
    diff_mean: float = 0.02
    diff_std: float = 0.09
    source: str = "default (no lfw_similarity_stats.json yet)"


def load_target(path: Path = STATS_FILE) -> SimilarityTarget:
    """The real model's LFW statistics when measured, else the documented defaults."""
    if not path.is_file():
        return SimilarityTarget()
    raw = json.loads(path.read_text())
    return SimilarityTarget(
        same_mean=float(raw["same"]["mean"]),
        same_std=float(raw["same"]["std"]),
        diff_mean=float(raw["different"]["mean"]),
        diff_std=float(raw["different"]["std"]),
        source=f"{path.name} ({raw.get('model', '?')})",
    )


@dataclass(frozen=True)
class GeneratorParams:
    alpha: float  # weight of the shared direction in identity centres
    rank: int  # intrinsic dimension of identity centres
    sigma0: float  # median per-face noise
    spread: float  # log-normal spread of per-face noise


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


class FaceLikeGenerator:
    """Deterministic (seeded) generator of face-like embedding sets."""

    def __init__(self, dim: int, params: GeneratorParams, seed: int = 0) -> None:
        self.dim = dim
        self.params = params
        self.seed = seed
        basis_rng = np.random.default_rng([seed, 1])
        self._u = _normalise(basis_rng.standard_normal((1, dim)))[0].astype(np.float32)
        q, _ = np.linalg.qr(basis_rng.standard_normal((dim, min(params.rank, dim))))
        self._q = q.astype(np.float32)  # d × r, orthonormal columns
        self._centres: np.ndarray | None = None
        self._noise_rng = np.random.default_rng([seed, 3])

    # --- construction --------------------------------------------------------------

    @classmethod
    def calibrated(
        cls, dim: int, target: SimilarityTarget | None = None, seed: int = 0
    ) -> "FaceLikeGenerator":
        return cls(dim, calibrate(dim, target or load_target(), seed=seed), seed=seed)

    # --- sampling --------------------------------------------------------------------

    def centres(self, n_identities: int) -> np.ndarray:
        """Identity centres (n × d); the same seed gives the same first n centres."""
        if self._centres is None or len(self._centres) < n_identities:
            rng = np.random.default_rng([self.seed, 2])
            p = self.params
            out = np.empty((n_identities, self.dim), np.float32)
            for start in range(0, n_identities, 65536):
                stop = min(start + 65536, n_identities)
                z = rng.standard_normal((stop - start, self._q.shape[1]), dtype=np.float32)
                block = z @ self._q.T / math.sqrt(self._q.shape[1]) + p.alpha * self._u
                out[start:stop] = _normalise(block)
            self._centres = out
        return self._centres[:n_identities]

    def _faces_of(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        centres = self.centres(int(labels.max()) + 1)
        p = self.params
        out = np.empty((len(labels), self.dim), np.float32)
        for start in range(0, len(labels), 65536):
            lab = labels[start : start + 65536]
            sigma = p.sigma0 * np.exp(p.spread * rng.standard_normal(len(lab), dtype=np.float32))
            noise = rng.standard_normal((len(lab), self.dim), dtype=np.float32)
            block = centres[lab] + noise * (sigma[:, None] / math.sqrt(self.dim))
            out[start : start + len(lab)] = _normalise(block)
        return out

    def faces(
        self, n_identities: int, faces_per_identity: int | tuple[int, int] = 5
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(vectors n×d float32, identity labels n int64)`.

        `faces_per_identity` is a count, or an inclusive `(low, high)` range drawn
        uniformly per identity (real galleries are uneven)."""
        rng = np.random.default_rng([self.seed, 4])
        if isinstance(faces_per_identity, tuple):
            counts = rng.integers(faces_per_identity[0], faces_per_identity[1] + 1, n_identities)
        else:
            counts = np.full(n_identities, faces_per_identity)
        labels = np.repeat(np.arange(n_identities, dtype=np.int64), counts)
        return self._faces_of(labels, rng), labels

    def new_faces(self, labels: np.ndarray) -> np.ndarray:
        """Fresh faces (not in any gallery drawn so far) of the given identities."""
        return self._faces_of(np.asarray(labels, np.int64), self._noise_rng)


# --- calibration ---------------------------------------------------------------------


def measure(vectors: np.ndarray, labels: np.ndarray, pairs: int = 20000, seed: int = 0) -> SimilarityTarget:
    """Sampled same/different-identity similarity statistics of a labelled set."""
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    sizes = np.diff(np.r_[starts, len(lab)])
    multi = starts[sizes >= 2]
    msz = sizes[sizes >= 2]
    pick = rng.integers(0, len(multi), pairs)
    a = rng.integers(0, msz[pick])
    b = (a + rng.integers(1, msz[pick])) % msz[pick]
    ia, ib = order[multi[pick] + a], order[multi[pick] + b]
    same = np.einsum("ij,ij->i", vectors[ia], vectors[ib])
    x, y = rng.integers(0, len(labels), (2, pairs * 2))
    keep = labels[x] != labels[y]
    diff = np.einsum("ij,ij->i", vectors[x[keep]], vectors[y[keep]])
    return SimilarityTarget(
        float(same.mean()), float(same.std()), float(diff.mean()), float(diff.std()), "measured"
    )


def _initial_params(target: SimilarityTarget) -> GeneratorParams:
    # Closed-form first guess (high-dimension approximations):
    #   same  ≈ 1 / sqrt((1+s1²)(1+s2²))   →  sigma0 from the mean, spread from the std
    #   diff  ≈ same_mean * (alpha² + N(0, 1/r)) / (1 + alpha²)
    shrink = target.same_mean
    sigma0 = math.sqrt(max(1.0 / shrink - 1.0, 1e-4))
    a2 = (target.diff_mean / shrink) / max(1.0 - target.diff_mean / shrink, 1e-6)
    rank = (shrink / (1.0 + a2) / target.diff_std) ** 2
    return GeneratorParams(math.sqrt(max(a2, 0.0)), max(4, round(rank)), sigma0, 0.3)


def calibrate(
    dim: int, target: SimilarityTarget, *, seed: int = 0, rounds: int = 8, identities: int = 3000
) -> GeneratorParams:
    """Fit generator parameters to `target` by a few multiplicative corrections on a
    small sample (a second or two); deterministic for a given seed."""
    p = _initial_params(target)
    for _ in range(rounds):
        gen = FaceLikeGenerator(dim, p, seed=seed)
        v, lab = gen.faces(identities, 4)
        m = measure(v, lab, seed=seed)
        # Each statistic is driven mainly by one parameter; correct each in turn.
        sigma0 = p.sigma0 * (m.same_mean / target.same_mean) ** 1.5
        spread = max(0.0, p.spread * (target.same_std / max(m.same_std, 1e-6)) ** 1.2)
        rank = max(4, round(p.rank * (m.diff_std / target.diff_std) ** 2))
        alpha_sq = max(p.alpha**2 + (target.diff_mean - m.diff_mean) / max(m.same_mean, 1e-3), 0.0)
        p = replace(p, sigma0=sigma0, spread=spread, rank=min(rank, dim), alpha=math.sqrt(alpha_sq))
    return p


if __name__ == "__main__":
    tgt = load_target()
    for d in (128, 512):
        g = FaceLikeGenerator.calibrated(d, tgt)
        vecs, labs = g.faces(5000, 4)
        print(d, g.params, measure(vecs, labs, seed=1), "target", tgt)
