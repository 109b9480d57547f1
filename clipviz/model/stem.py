"""The patch embedding as a matrix product: the same values, a faster input gradient on the CPU.

A ViT's stem is a convolution whose kernel equals its stride (non-overlapping ``p x p`` patches). That is a
reshape of the image into patches and one matrix product with the flattened kernel. On the CPU the
convolution's gradient with respect to its input (what feature visualization needs) is several times slower than
its forward pass, while the matrix product's backward costs about what its forward does: at 224 px, 4 images,
a 384-wide stem, one thread, 101 ms -> 33 ms forward + backward (docs/benchmarks.md). The values agree to float
rounding (max |diff| 1.7e-6 there; ``tests/test_speedups.py`` checks ``rtol=1e-5, atol=1e-5`` and the input
gradient).

>>> import clipviz, torch
>>> model = clipviz.load("world-clip")
>>> conv = patch_embedding(model)
>>> conv.kernel_size == conv.stride
True
>>> x = torch.rand(2, 3, 64, 64)
>>> with stem_as_matmul(model):
...     y = conv(x)
>>> torch.allclose(y, conv(x), atol=1e-5)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from clipviz.model.hooks import forwards_replaced
from clipviz.model.onednn import frozen_linear


def _is_patch_conv(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.kernel_size == m.stride
        and m.padding in ((0, 0), "valid")
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


def patch_embedding(model) -> nn.Conv2d | None:
    """The model's patch-embedding convolution (kernel == stride, no padding), if it has exactly one."""
    found = [m for m in model.backend.vision_root.modules() if _is_patch_conv(m)]
    return found[0] if len(found) == 1 else None


def patch_matmul(conv: nn.Conv2d, x: torch.Tensor, onednn: bool = False) -> torch.Tensor:
    """``conv(x)`` for a non-overlapping patch convolution, as unfold-by-reshape + one matrix product (with
    ``onednn``: ``clipviz.model.onednn.frozen_linear``, where it applies)."""
    b, c, h, w = x.shape
    kh, kw = conv.kernel_size
    gh, gw = h // kh, w // kw
    x = x[:, :, : gh * kh, : gw * kw]
    patches = x.reshape(b, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh, gw, c * kh * kw)
    if onednn:
        out = frozen_linear(patches, conv.weight, conv.bias)  # (B, gh, gw, out)
    else:
        out = F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)  # (B, gh, gw, out)
    return out.permute(0, 3, 1, 2)  # the convolution's (B, out, gh, gw), as a channels-last view


@contextmanager
def stem_as_matmul(model, enabled: bool = True, onednn: bool = False) -> Iterator[bool]:
    """Run the model's patch embedding as ``patch_matmul`` inside the block; yields whether it applied."""
    conv = patch_embedding(model) if enabled else None
    if conv is None:
        yield False
        return
    with forwards_replaced([conv], lambda module, x: patch_matmul(module, x, onednn)):
        yield True


def stem_matmul_is_faster(device: torch.device) -> bool:
    """Where the matrix-product stem was measured faster: the CPU. On CUDA the convolution stays (not measured)."""
    return torch.device(device).type == "cpu"
