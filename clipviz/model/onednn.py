"""The model's linear layers as oneDNN matrix products with pre-packed frozen weights: faster on the CPU.

During feature visualization the weights are frozen (``requires_grad`` is off), so a linear layer's backward
needs only its input gradient, ``grad @ W``. Here both products run as oneDNN's ``linear`` on weights packed
once into its blocked layout (``W`` for the forward, ``W^T`` for the input gradient), cached per weight within one
rendering (``packing_kept``) and never beyond it: a weight edited between two renderings, even through ``.data``
(which PyTorch's in-place version counter does not see), is packed anew. At one thread,
``(788 x 384) @ (384 x 384)`` (4 images of a ViT-S/16): MKL ``addmm`` 2.40 ms, packed oneDNN 2.08 ms (median); the
MLP's ``384 x 1536`` products 10.4 -> 8.8 ms forward and 9.8 -> 8.5 ms input gradient (docs/benchmarks.md). The
packed weights double the memory of the layers they serve while a rendering runs.

The values are those of ``F.linear`` up to float rounding (oneDNN sums in another order than MKL: max |diff|
4e-6 on outputs of order 1; ``tests/test_speedups.py`` checks objective values and input gradients with
``rtol=1e-4, atol=1e-5`` on every tiny architecture). A row's result does not depend on the other rows of the
product (checked there too: an image alone gives the bits it gives in a batch), so batch independence holds.
A layer falls back to ``F.linear`` where the path does not apply: a weight or bias that needs a gradient, an
input that is not float32 on the CPU, CPU autocast on.

>>> import clipviz, torch
>>> model = clipviz.load("world-clip")
>>> x = torch.rand(2, 3, 64, 64)
>>> with linears_as_onednn(model) as switched:
...     y = model(x)
>>> switched > 0, torch.allclose(y, model(x), atol=1e-4)
(True, True)
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from clipviz.model.hooks import forwards_replaced

# oneDNN's packing takes the expected number of rows as a hint; it changes neither the values nor (measured from
# 197 to 3,152 rows) the speed.
_ROWS_HINT = 1024
# id(weight) -> (a weak reference to it, its in-place version, W and W^T packed), inside a ``packing_kept``
# block only (``None`` outside: every product packs its weight afresh); per thread and task, so that two renderings
# at once (a Gradio app's requests) never share one
_PACKED: ContextVar[dict[int, tuple[weakref.ref, int, torch.Tensor, torch.Tensor]] | None] = ContextVar(
    "clipviz_packed", default=None
)


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's packed linear product."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _packed(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W`` and ``W^T`` (``weight`` flattened to 2-D) in oneDNN's layout, packed once per in-place version within
    a ``linears_as_onednn`` block."""
    cache, key = _PACKED.get(), id(weight)
    entry = cache.get(key) if cache is not None else None
    if entry is None or entry[0]() is not weight or entry[1] != weight._version:
        w = weight.detach().flatten(1)
        reorder = torch.ops.mkldnn._reorder_linear_weight
        ref = weakref.ref(weight, lambda _ref: cache.pop(key, None) if cache is not None else None)
        entry = (ref, weight._version, reorder(w, _ROWS_HINT), reorder(w.t().contiguous(), _ROWS_HINT))
        if cache is not None:
            cache[key] = entry
    return entry[2], entry[3]


def _product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


class _FrozenLinear(torch.autograd.Function):
    """``x @ W^T + b`` with frozen ``W, b``: the backward returns the input gradient only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, packed: torch.Tensor, packed_t: torch.Tensor, bias: torch.Tensor | None):
        ctx.packed_t = packed_t
        return _product(x, packed, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _product(grad, ctx.packed_t, None), None, None, None


def frozen_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight.flatten(1), bias)``, as packed oneDNN products where they apply (see the module
    docstring), else ``F.linear`` itself."""
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    if (
        not frozen
        or x.device.type != "cpu"
        or x.ndim < 2
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
    ):
        return F.linear(x, weight.flatten(1), bias)
    packed, packed_t = _packed(weight)
    # 2-D in and out of the Function: its output is then no view, so a caller may change it in place (timm's
    # NaFlexViT adds its position embedding with ``add_``)
    flat = _FrozenLinear.apply(x.reshape(-1, x.shape[-1]), packed, packed_t, None if bias is None else bias.detach())
    return flat.reshape(*x.shape[:-1], flat.shape[-1])


def _plain_linears(model) -> list[nn.Linear]:
    return [
        m
        for m in model.backend.vision_root.modules()
        if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward and "forward" not in m.__dict__
    ]


@contextmanager
def linears_as_onednn(model, enabled: bool = True) -> Iterator[int]:
    """Run the vision tower's ``nn.Linear`` layers as ``frozen_linear`` inside the block (their hooks still
    fire); yields how many were switched (0 where oneDNN is missing or ``enabled`` is false)."""
    linears = _plain_linears(model) if enabled and onednn_available() else []
    with forwards_replaced(linears, _module_forward) as count:
        yield count


@contextmanager
def packing_kept() -> Iterator[None]:
    """Inside the block, each weight is packed once (per in-place version) and reused; outside, every product
    packs afresh. ``optimise`` holds one block over a rendering's steps, so no packing outlives a rendering."""
    outer = _PACKED.get()
    token = _PACKED.set({} if outer is None else outer)  # a block inside another shares its packing
    try:
        yield
    finally:
        _PACKED.reset(token)


def _module_forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return frozen_linear(x, module.weight, module.bias)


def onednn_linear_is_faster(device: torch.device) -> bool:
    """Where the packed oneDNN products were measured faster: the CPU (not measured elsewhere; they apply only
    to CPU float32 anyway)."""
    return torch.device(device).type == "cpu" and onednn_available()
