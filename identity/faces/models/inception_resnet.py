"""Inception-ResNet-v1 (facenet-pytorch's `InceptionResnetV1`) rewritten for inference on
the CPU, computing the same function with fewer passes over memory:

* every batch norm is folded into the convolution before it (weight × γ/σ, bias β − μγ/σ),
  and the residual scale of each block into its last convolution;
* each convolution runs with its ReLU in one oneDNN kernel (`identity.faces.onednn`);
* the 1×1 convolutions that open a block's branches all read the block's input, so they
  run as one convolution whose output is split by branch.

What is left is the convolutions themselves, which run near this CPU's float32 peak; the
folding and fusion saved the batch norms' and ReLUs' passes (BENCHMARKS.md, "Face pipeline
throughput"). Embeddings equal the module's to float32 rounding (`tests/test_inception_resnet.py`).

With `body=torch.bfloat16` the residual blocks run in bfloat16 and the stem stays in float32.
Rounding the first feature maps, still close to raw pixels, to bf16's 8 bits is where most of
bf16's error comes from: with the stem in float32 the vectors are several times closer to
float32's than the whole network under autocast (BENCHMARKS.md, "bf16 with the stem in
float32"), and the stem is a third of the work.

Built from a loaded network by `fuse`; the original keeps serving GPUs and torch builds
without the fused kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from facenet_pytorch.models.inception_resnet_v1 import (
    BasicConv2d,
    Block8,
    Block17,
    Block35,
    InceptionResnetV1,
    Mixed_6a,
    Mixed_7a,
)
from torch import nn
from torch.nn import functional as F

from identity.faces import onednn


class FusedConv(nn.Module):
    """A convolution with its bias, then optionally ReLU, as one kernel."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, *, stride: Sequence[int],
                 padding: Sequence[int], relu: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
        self.stride, self.padding, self.relu = tuple(stride), tuple(padding), relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn.conv(x, self.weight, self.bias, stride=self.stride, padding=self.padding, relu=self.relu)


def _affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An inference batch norm as y = gain · x + shift, per channel."""
    gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return gain, bn.bias - bn.running_mean * gain


def _folded(layer: BasicConv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A BasicConv2d's (conv without bias, batch norm) as one convolution's weight and bias."""
    gain, shift = _affine(layer.bn)
    return layer.conv.weight * gain.view(-1, 1, 1, 1), shift


def _fold(layer: BasicConv2d) -> FusedConv:
    weight, bias = _folded(layer)
    return FusedConv(weight, bias, stride=layer.conv.stride, padding=layer.conv.padding, relu=True)


def _fold_all(layers: Sequence[BasicConv2d]) -> nn.Sequential:
    return nn.Sequential(*(_fold(layer) for layer in layers))


class _Heads(nn.Module):
    """The 1×1 BasicConv2d layers opening several branches, as one convolution; returns
    each branch's channels."""

    def __init__(self, layers: Sequence[BasicConv2d]) -> None:
        super().__init__()
        for layer in layers:
            if layer.conv.kernel_size != (1, 1) or layer.conv.stride != (1, 1):
                raise ValueError("only 1×1, stride-1 branch heads can share a convolution")
        weights, biases = zip(*(_folded(layer) for layer in layers))
        self.conv = FusedConv(torch.cat(weights), torch.cat(biases), stride=(1, 1), padding=(0, 0), relu=True)
        self.sizes = [w.shape[0] for w in weights]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(self.conv(x), self.sizes, dim=1)


class _Residual(nn.Module):
    """Block35, Block17 or Block8: branches from x, concatenated, a 1×1 convolution scaled,
    plus x, then ReLU unless the block has none."""

    def __init__(self, block: Block35 | Block17 | Block8) -> None:
        super().__init__()
        branches = [b if isinstance(b, nn.Sequential) else nn.Sequential(b)
                    for b in (block.branch0, block.branch1, getattr(block, "branch2", None)) if b is not None]
        self.heads = _Heads([b[0] for b in branches])
        self.tails = nn.ModuleList(_fold_all(b[1:]) for b in branches)
        up = block.conv2d
        self.up = FusedConv(up.weight * block.scale, up.bias * block.scale, stride=up.stride,
                            padding=up.padding, relu=False)
        self.relu = not getattr(block, "noReLU", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([tail(h) for tail, h in zip(self.tails, self.heads(x))], dim=1)
        out = self.up(out) + x
        return F.relu(out) if self.relu else out


class _Mixed6a(nn.Module):
    def __init__(self, block: Mixed_6a) -> None:
        super().__init__()
        self.branch0 = _fold(block.branch0)
        self.branch1 = _fold_all(block.branch1)
        self.pool = block.branch2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.pool(x)], dim=1)


class _Mixed7a(nn.Module):
    def __init__(self, block: Mixed_7a) -> None:
        super().__init__()
        branches = (block.branch0, block.branch1, block.branch2)
        self.heads = _Heads([b[0] for b in branches])
        self.tails = nn.ModuleList(_fold_all(b[1:]) for b in branches)
        self.pool = block.branch3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convs = [tail(h) for tail, h in zip(self.tails, self.heads(x))]
        return torch.cat([*convs, self.pool(x)], dim=1)


class FusedInceptionResnetV1(nn.Module):
    """`InceptionResnetV1(classify=False)`'s forward: N×3×H×W float32 → N×dim float32 unit
    vectors, the residual blocks computed in `body` (float32 or bfloat16)."""

    def __init__(self, network: InceptionResnetV1, body: torch.dtype = torch.float32) -> None:
        super().__init__()
        if network.classify:
            raise ValueError("only the embedding form (classify=False) can be fused")
        n = network
        self.stem = nn.Sequential(
            _fold(n.conv2d_1a), _fold(n.conv2d_2a), _fold(n.conv2d_2b), n.maxpool_3a,
            _fold(n.conv2d_3b), _fold(n.conv2d_4a), _fold(n.conv2d_4b),
        )
        self.blocks = nn.Sequential(
            *(_Residual(b) for b in n.repeat_1), _Mixed6a(n.mixed_6a),
            *(_Residual(b) for b in n.repeat_2), _Mixed7a(n.mixed_7a),
            *(_Residual(b) for b in n.repeat_3), _Residual(n.block8),
        ).to(body)
        self.body = body
        # The bottleneck (a bias-free linear layer, then a batch norm) folded the same way.
        gain, shift = _affine(n.last_bn)
        self.bottleneck = nn.Linear(n.last_linear.in_features, n.last_linear.out_features)
        self.bottleneck.weight = nn.Parameter(n.last_linear.weight * gain[:, None], requires_grad=False)
        self.bottleneck.bias = nn.Parameter(shift, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x).to(self.body)).float()
        return F.normalize(self.bottleneck(x.mean(dim=(2, 3))), p=2, dim=1)


@torch.no_grad()
def fuse(network: InceptionResnetV1, body: torch.dtype = torch.float32) -> FusedInceptionResnetV1:
    """The CPU inference form of a loaded network in eval mode (its weights are copied), its
    residual blocks in `body`: float32, or bfloat16 where oneDNN has bf16 kernels."""
    if network.training:
        raise ValueError("fuse a network in eval mode: batch norms must use their running statistics")
    if body not in (torch.float32, torch.bfloat16):
        raise ValueError(f"the residual blocks run in float32 or bfloat16, not {body}")
    return FusedInceptionResnetV1(network, body).eval()
