"""Aligned crops → L2-normalised embeddings, in batches, on the best device."""

from __future__ import annotations

import numpy as np
import torch

from identity.faces.models.kinds import Normalization


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def standardize(batch: torch.Tensor, normalization: Normalization | str) -> torch.Tensor:
    """N×3×H×W float in 0..255 → the network's input scale."""
    normalization = Normalization.parse(normalization, "normalization")
    if normalization == Normalization.FIXED:
        return (batch - 127.5) / 128.0
    if normalization == Normalization.SYMMETRIC:
        return (batch - 127.5) / 127.5
    # facenet's prewhiten: per-image standardisation, std floored so flat crops don't explode.
    flat = batch.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1, unbiased=False)
    std = torch.clamp(std, min=1.0 / (flat.shape[1] ** 0.5)).view(-1, 1, 1, 1)
    return (batch - mean) / std


class Embedder:
    """Wraps an embedding network. `embed` takes uint8 crops and returns unit vectors.

    With `flip`, the network's output for the mirrored crop is added before normalising (a
    free test-time augmentation that usually gains a few tenths of a point on LFW; the raw
    outputs are summed, as InsightFace does, so for a network whose outputs are not unit
    vectors the longer one weighs more). `normalize=False` returns the raw sum, for
    evaluation code that combines passes itself."""

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        dim: int,
        input_size: int,
        normalization: Normalization | str,
        device: torch.device | str = "cpu",
        flip: bool = True,
        batch_size: int = 32,
        normalize: bool = True,
    ) -> None:
        self.device = torch.device(device)
        # Channels-last: faster convolutions on CPU (oneDNN) and on tensor-core GPUs;
        # embeddings agree with the default layout to ~1e-7.
        self.network = network.to(self.device, memory_format=torch.channels_last).eval()
        self.dim = dim
        self.input_size = input_size
        self.normalization = Normalization.parse(normalization, "normalization")
        self.flip = flip
        self.batch_size = batch_size
        self.normalize = normalize

    def embed(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        expected = (self.input_size, self.input_size, 3)
        if crops.ndim != 4 or crops.shape[1:] != expected:
            raise ValueError(f"crops must be N×{expected[0]}×{expected[1]}×3, got {crops.shape}")
        out = np.empty((len(crops), self.dim), dtype=np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            out[start : start + len(chunk)] = self._embed_chunk(chunk)
        return out

    @torch.inference_mode()
    def _embed_chunk(self, chunk: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device)
        # N×H×W×C data viewed as N×C×H×W is already channels-last in memory.
        batch = standardize(batch.permute(0, 3, 1, 2).float(), self.normalization)
        batch = batch.contiguous(memory_format=torch.channels_last)
        if self.flip:
            both = self.network(torch.cat([batch, batch.flip(3)]))
            vectors = both[: len(chunk)] + both[len(chunk) :]
        else:
            vectors = self.network(batch)
        vectors = vectors.float()
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=1)
        return vectors.cpu().numpy()
