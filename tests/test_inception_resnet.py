"""Inception-ResNet-v1's CPU form (batch norms folded, ReLUs fused, branch heads merged)
computes what facenet-pytorch's module computes, and the embedder uses it exactly where it
can: on a CPU, in float32, where torch has oneDNN's fused kernel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from facenet_pytorch import InceptionResnetV1

from identity.faces import onednn
from identity.faces.embed import Embedder, for_inference, standardize
from identity.faces.models.inception_resnet import FusedInceptionResnetV1, fuse
from identity.faces.models.keras_facenet import build_network

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
CPU = torch.device("cpu")

needs_fused_kernel = pytest.mark.skipif(not onednn.fused_conv_available(),
                                        reason="this torch build has no oneDNN fused convolution")


def _random_network(dim: int, seed: int = 0) -> InceptionResnetV1:
    """Random weights and, unlike a fresh module, non-trivial batch-norm statistics, so the
    folding is exercised by every layer."""
    torch.manual_seed(seed)
    network = build_network(dim)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return network.eval()


@needs_fused_kernel
@pytest.mark.parametrize("dim", [128, 512])
def test_the_fused_network_computes_the_modules_vectors(dim) -> None:
    network = _random_network(dim)
    fused = fuse(network)
    x = torch.rand(4, 3, 160, 160) * 2 - 1
    with torch.inference_mode():
        expected, got = network(x), fused(x)
    assert got.shape == (4, dim)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    # It holds its own (folded) weights: the module it came from is not changed.
    torch.testing.assert_close(network(x), expected, atol=0, rtol=0)


def test_only_an_eval_mode_embedding_network_can_be_fused() -> None:
    network = _random_network(128)
    with pytest.raises(ValueError, match="eval mode"):
        fuse(network.train())
    classifier = InceptionResnetV1(pretrained=None, classify=True, num_classes=10).eval()
    with pytest.raises(ValueError, match="classify"):
        fuse(classifier)


@needs_fused_kernel
def test_the_embedder_fuses_only_on_a_cpu_in_float32() -> None:
    network = _random_network(128)
    assert isinstance(for_inference(network, CPU, torch.float32), FusedInceptionResnetV1)
    # bf16 runs the module under autocast, which the fused kernels would silently bypass.
    assert for_inference(network, CPU, torch.bfloat16) is network
    assert for_inference(network, torch.device("cuda"), torch.float32) is network
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten())
    assert for_inference(other, CPU, torch.float32) is other
    embedder = Embedder(network, dim=128, input_size=160, normalization="per_image", flip=True)
    assert isinstance(embedder.network, FusedInceptionResnetV1)


@pytest.mark.slow
@needs_fused_kernel
def test_real_faces_embed_alike_through_both_forms(pipeline, model_settings) -> None:
    """facenet-keras-128's real weights on real aligned crops (lfw-dev and a group photo),
    flipped too: the pipeline's vectors are the module's to float32 rounding, far below
    anything a threshold could see."""
    from identity.faces import models

    assert isinstance(pipeline.embedder.network, FusedInceptionResnetV1)
    photos = sorted((DATA_DIR / "lfw-dev").glob("C*/*.jpg"))[:24] + sorted((DATA_DIR / "misc" / "group").iterdir())
    crops = np.stack([f.crop for r in pipeline.process(photos, keep_crops=True) for f in r.faces])
    assert len(crops) >= 24
    module = models.load_network(pipeline.spec, model_settings).to(memory_format=torch.channels_last)
    batch = standardize(torch.from_numpy(crops).permute(0, 3, 1, 2).float(), pipeline.spec.normalization)
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = torch.cat([module(batch), module(batch.flip(3))])
        got = torch.cat([pipeline.embedder.network(batch), pipeline.embedder.network(batch.flip(3))])
    cosine = torch.nn.functional.cosine_similarity(expected, got)
    assert cosine.min().item() >= 1 - 1e-6, cosine.min().item()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
