"""oneDNN's convolution with a fused activation, the kernel torch.compile emits on the CPU.

A convolution followed by a ReLU (or a batch norm folded into it) costs one pass over the
feature map instead of two or three; on a busy machine the separate passes took as long as
the convolution itself. Used by SCRFD (`scrfd.py`) and the CPU form of Inception-ResNet-v1
(`models/inception_resnet.py`). Where this torch build lacks the operator, or it does not
compute what conv2d + relu compute, `conv` falls back to exactly those. bfloat16 tensors
take the same kernel where oneDNN has it for this CPU (`fused_conv_available(torch.bfloat16)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
from torch.nn import functional as F


@cache
def fused_conv_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether `torch.ops.mkldnn._convolution_pointwise` exists here for `dtype` (float32 or
    bfloat16: oneDNN has bf16 kernels only on CPUs with AVX-512) and agrees with conv2d + relu
    on a small grouped, padded case."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        x = torch.randn(1, 4, 6, 6).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4, 2, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
        b = torch.randn(4).to(dtype)
        got = op(x, w, b, [1, 1], [1, 1], [1, 1], 2, "relu", [], "").float()
        expected = F.relu(F.conv2d(x.float(), w.float(), b.float(), padding=1, groups=2))
        # bf16 keeps 8 bits of mantissa: its result agrees to about 1 %, float32's to rounding.
        atol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else (0.05, 0.02)
        return bool(torch.allclose(got, expected, atol=atol, rtol=rtol))
    except (AttributeError, RuntimeError):
        return False


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, stride: Sequence[int],
         padding: Sequence[int], groups: int = 1, relu: bool) -> torch.Tensor:
    """conv2d (+ ReLU): on a float32 or bfloat16 CPU tensor (and weights of its dtype) oneDNN's
    fused kernel, elsewhere conv2d then relu."""
    if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and weight.dtype == x.dtype
            and fused_conv_available(x.dtype)):
        return torch.ops.mkldnn._convolution_pointwise(
            x.contiguous(memory_format=torch.channels_last), weight, bias, list(padding),
            list(stride), [1, 1], groups, "relu" if relu else "none", [], "",
        )
    out = F.conv2d(x, weight, bias, stride=tuple(stride), padding=tuple(padding), groups=groups)
    return F.relu(out) if relu else out
