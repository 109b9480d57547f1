"""The blocks before the hooked one as ``torch.compile`` graphs, with the early exit outside any graph.

A pass that stops at block ``l`` (``HookedVisionModel.run_to_mlp_input``, ``run_with_cache(stop_early=True)``)
runs blocks ``0 .. l-1`` whole and block ``l`` up to the hook, which raises ``StopForward``. Here each of the
blocks ``0 .. l-1`` runs its ``forward`` through one compiled function (inductor: LayerNorm, GELU, the residual
adds and the casts fused around the matrix products); block ``l``, its hooks and the exception stay eager, so no
graph holds an exit and the hooks installed per pass never enter a graph (which would recompile it every pass). A
block is left eager where any of its modules carries a hook when the pass starts (an editing hook must run as
written; ``nn.MultiheadAttention`` blocks, as in open_clip, carry the pre-hook that keeps them batch-independent
and stay eager). The compiled function is shared by all blocks and models: blocks of one structure reuse one graph
(``torch._dynamo`` inlines the modules and takes their weights as inputs).

Values equal the eager pass to float rounding (inductor's fused reductions sum in another order):
``tests/test_speedups.py`` checks objective values and input gradients with ``rtol=1e-4, atol=1e-5`` on the CPU.
Measured on the CPU (ViT-S/16 size, blocks 0-5 and block 6 to its MLP, 4 images, one thread): 42 s to compile
the forward and backward graphs, then within noise of the eager pass without oneDNN (0.58 vs 0.61 s, 0.88 vs
0.84 s in two runs) and slower than the eager pass with it (docs/benchmarks.md), so a 256-step run would lose; it
is off by default (``SpeedUps.compiled_blocks``) and meant for GPUs, where fusing the element-wise kernels is what
the profile asks for (not measured: no GPU was available).

>>> import clipviz, torch
>>> model = clipviz.load("world-clip")
>>> with blocks_compiled(model, upto=1) as compiled:
...     pass
>>> compiled  # its attention carries the batch-invariance hook (``hooked._seq_first_storage``): left eager
0
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from clipviz.model.hooks import forwards_replaced


def _forward(module: nn.Module, *args, **kwargs):
    return type(module).forward(module, *args, **kwargs)


_compiled_forward = torch.compile(_forward)


def _hooked(module: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in module.modules()
    )


@contextmanager
def blocks_compiled(model, upto: int, enabled: bool = True) -> Iterator[int]:
    """Run blocks ``0 .. upto-1`` of ``model`` through the compiled forward inside the ``with`` block (the
    hooks on a block module itself still run eagerly around it); yields how many blocks were switched."""
    blocks = [model.blocks[i].block for i in range(min(upto, model.n_blocks))] if enabled else []
    switched = [b for b in blocks if "forward" not in b.__dict__ and not _hooked(b)]
    with forwards_replaced(switched, _compiled_forward) as count:
        yield count
