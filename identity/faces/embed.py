"""Aligned crops → L2-normalised embeddings, in batches, on the best device."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import torch

from identity.config import PipelineSettings
from identity.faces import onednn
from identity.faces.models.kinds import Normalization
from identity.faces.models.manifest import ModelSpec


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@cache
def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX). There oneDNN's
    bf16 convolutions run the embedding networks about twice as fast as fp32 (BENCHMARKS.md);
    elsewhere bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The dtype the embedding network computes in. 'auto': bfloat16 on a CPU that has it in
    hardware, float32 elsewhere (GPUs included: their bf16 path is not measured yet)."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if name != "auto":
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', not {name!r}")
    return torch.bfloat16 if device.type == "cpu" and native_bf16() else torch.float32


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


def for_inference(network: torch.nn.Module, device: torch.device, precision: torch.dtype) -> torch.nn.Module:
    """The fastest form of `network` that computes its vectors in `precision` on `device`. On a
    CPU with oneDNN's fused kernels, Inception-ResNet-v1 is rebuilt with its batch norms folded
    and its ReLUs fused (`models/inception_resnet.py`); in bf16 that form keeps its stem in
    float32, which takes most of bf16's error out of the vectors. A form built here computes
    in `precision` itself; `network` itself, returned for any other network or device, runs
    under the embedder's autocast."""
    if device.type != "cpu" or not onednn.fused_conv_available(precision):
        return network
    from facenet_pytorch import InceptionResnetV1

    if isinstance(network, InceptionResnetV1) and not network.classify:
        from identity.faces.models.inception_resnet import fuse

        return fuse(network, body=precision)
    return network


class Embedder:
    """Wraps an embedding network. `embed` takes uint8 crops and returns unit vectors.

    With `flip`, the network's output for the mirrored crop is added before normalising (a
    free test-time augmentation that usually gains a few tenths of a point on LFW; the raw
    outputs are summed, as InsightFace does, so for a network whose outputs are not unit
    vectors the longer one weighs more). `normalize=False` returns the raw sum, for
    evaluation code that combines passes itself. `precision` bfloat16 runs the network in
    bf16 (its CPU form, or the module under autocast: convolutions and matmuls in bf16,
    outputs back in float32): embeddings agree with float32's to cosine ≥ 0.998 on real crops
    (tests/test_precision.py)."""

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
        precision: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device)
        self.precision = precision
        # Channels-last: faster convolutions on CPU (oneDNN) and on tensor-core GPUs;
        # embeddings agree with the default layout to ~1e-7.
        network = network.to(self.device, memory_format=torch.channels_last).eval()
        self.network = for_inference(network, self.device, precision)
        self.autocast = precision != torch.float32 and self.network is network
        self.dim = dim
        self.input_size = input_size
        self.normalization = Normalization.parse(normalization, "normalization")
        self.flip = flip
        self.batch_size = batch_size
        self.normalize = normalize

    @classmethod
    def for_model(cls, network: torch.nn.Module, spec: ModelSpec, pipeline: PipelineSettings,
                  device: torch.device) -> Embedder:
        """The model's loaded network as the pipeline settings run it (flip, batch, precision):
        one place, so enrollment and a model move embed a crop alike."""
        return cls(network, dim=spec.dim, input_size=spec.input_size, normalization=spec.normalization,
                   device=device, flip=pipeline.flip, batch_size=pipeline.batch_size,
                   precision=resolve_precision(pipeline.precision, device))

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
        # Crops decoded from a read-only buffer (a stored chip) are copied: torch warns on
        # tensors over memory it may not write, though this one is only read.
        batch = torch.from_numpy(np.require(chunk, requirements=["C_CONTIGUOUS", "WRITEABLE"])).to(self.device)
        # N×H×W×C data viewed as N×C×H×W is already channels-last in memory.
        batch = standardize(batch.permute(0, 3, 1, 2).float(), self.normalization)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.precision, enabled=self.autocast):
            if self.flip:
                both = self.network(torch.cat([batch, batch.flip(3)])).float()
                vectors = both[: len(chunk)] + both[len(chunk) :]
            else:
                vectors = self.network(batch)
        vectors = vectors.float()
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=1)
        return vectors.cpu().numpy()
