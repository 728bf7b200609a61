"""Inception-ResNet-v1's CPU form (batch norms folded, ReLUs fused, branch heads merged)
computes what facenet-pytorch's module computes, and the embedder uses it exactly where it
can: on a CPU where torch has oneDNN's fused kernel, in float32, or in bfloat16 with its stem
in float32."""

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
needs_fused_bf16 = pytest.mark.skipif(not onednn.fused_conv_available(torch.bfloat16),
                                      reason="oneDNN has no bf16 convolution on this CPU")


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
def test_the_embedder_fuses_only_on_a_cpu() -> None:
    network = _random_network(128)
    fused = for_inference(network, CPU, torch.float32)
    assert isinstance(fused, FusedInceptionResnetV1) and fused.body == torch.float32
    assert for_inference(network, torch.device("cuda"), torch.float32) is network
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten())
    assert for_inference(other, CPU, torch.float32) is other
    embedder = Embedder(network, dim=128, input_size=160, normalization="per_image", flip=True)
    assert isinstance(embedder.network, FusedInceptionResnetV1) and not embedder.autocast


@needs_fused_bf16
def test_in_bf16_the_blocks_run_in_bf16_and_the_stem_in_float32() -> None:
    network = _random_network(128)
    fused = for_inference(network, CPU, torch.bfloat16)
    assert isinstance(fused, FusedInceptionResnetV1) and fused.body == torch.bfloat16
    assert {p.dtype for p in fused.stem.parameters()} == {torch.float32}
    assert {p.dtype for p in fused.blocks.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fused.bottleneck.parameters()} == {torch.float32}
    # The fused form computes in bf16 itself; autocast would not reach its kernels anyway.
    embedder = Embedder(network, dim=128, input_size=160, normalization="per_image", precision=torch.bfloat16)
    assert embedder.network.body == torch.bfloat16 and not embedder.autocast
    x = torch.rand(4, 3, 160, 160) * 2 - 1
    with torch.inference_mode():
        got, expected = fused(x), network(x)
    assert got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, expected).min().item() >= 0.999


def test_other_networks_run_under_autocast_in_bf16() -> None:
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    embedder = Embedder(other, dim=8, input_size=16, normalization="symmetric", precision=torch.bfloat16)
    assert embedder.network is other and embedder.autocast  # the module itself, under autocast
    assert not Embedder(other, dim=8, input_size=16, normalization="symmetric").autocast


def test_the_blocks_run_in_float32_or_bf16_only() -> None:
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        fuse(_random_network(128), body=torch.float16)


@pytest.fixture(scope="module")
def real_crops(pipeline, model_settings):
    """facenet-keras-128's real weights and real aligned crops (lfw-dev and a group photo),
    each with its mirror image, standardised as the embedder does."""
    from identity.faces import models

    photos = sorted((DATA_DIR / "lfw-dev").glob("C*/*.jpg"))[:24] + sorted((DATA_DIR / "misc" / "group").iterdir())
    crops = np.stack([f.crop for r in pipeline.process(photos, keep_crops=True) for f in r.faces])
    assert len(crops) >= 24
    module = models.load_network(pipeline.spec, model_settings).to(memory_format=torch.channels_last)
    batch = standardize(torch.from_numpy(crops).permute(0, 3, 1, 2).float(), pipeline.spec.normalization)
    batch = torch.cat([batch, batch.flip(3)]).contiguous(memory_format=torch.channels_last)
    return module, batch


def _vectors(network, batch, autocast: bool = False) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return network(batch).float()


@pytest.mark.slow
@needs_fused_kernel
def test_real_faces_embed_alike_through_both_forms(real_crops) -> None:
    """The fused float32 form's vectors are the module's to float32 rounding, far below
    anything a threshold could see."""
    module, batch = real_crops
    expected, got = _vectors(module, batch), _vectors(for_inference(module, CPU, torch.float32), batch)
    cosine = torch.nn.functional.cosine_similarity(expected, got)
    assert cosine.min().item() >= 1 - 1e-6, cosine.min().item()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
@needs_fused_bf16
def test_a_float32_stem_keeps_bf16_vectors_closer_to_float32(real_crops) -> None:
    """bf16 with the stem in float32 (what the embedder runs) against the whole module under
    bf16 autocast: several times closer to the float32 vectors, on every face."""
    module, batch = real_crops
    expected = torch.nn.functional.normalize(_vectors(module, batch), dim=1)
    mixed = torch.nn.functional.normalize(_vectors(for_inference(module, CPU, torch.bfloat16), batch), dim=1)
    autocast = torch.nn.functional.normalize(_vectors(module, batch, autocast=True), dim=1)
    mixed_error = 1 - (mixed * expected).sum(dim=1)
    autocast_error = 1 - (autocast * expected).sum(dim=1)
    assert mixed_error.max().item() <= 1e-4, mixed_error.max().item()
    assert mixed_error.mean().item() * 2 <= autocast_error.mean().item(), (mixed_error.mean(), autocast_error.mean())
