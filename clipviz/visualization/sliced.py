"""Compute only what a neuron objective needs: per image, its own MLP neuron, not the whole MLP.

A ``Neuron`` objective at ``blocks.l.mlp.hook_post`` (or ``hook_pre``) reads one column of the MLP's hidden
layer per image, yet a full pass computes all ``d_mlp`` of them. Here the forward pass stops at the MLP's input
``x`` (the second norm's output, ``(B, N, d_model)``) and, for image ``i`` with neuron ``n_i``, computes

    ``act(x_i . W1[n_i] + b1[n_i])``  (``(B, N)``)

so the MLP's first matrix product (forward and input gradient) shrinks ``d_mlp``-fold and the activation runs on
one column. The product is an element-wise multiply and a sum over ``d_model`` in float32, image by image, so an
image's value does not depend on its batch-mates. It equals the full pass to float rounding (the sum runs in a
different order than the matrix product's): within ``rtol=1e-5, atol=1e-6`` in float32
(``tests/test_speedups.py`` checks values and input gradients on every tiny architecture).

It applies when every term of the objective that reads a hook is a ``Neuron`` at one MLP hook, the objective
needs no head output, the hook sits on an activation module that acts element by element (checked once per
module), and no user hook is installed on that MLP's modules (it would be bypassed). Otherwise the full pass runs.

>>> import clipviz, torch
>>> from clipviz.visualization.objectives import Neuron
>>> model = clipviz.load("world-clip")
>>> plan = plan_sliced(model, Neuron("blocks.1.mlp.hook_post", [3, 7]))
>>> plan.block, plan.activation
(1, True)
>>> values = plan.run(model, torch.rand(2, 3, 64, 64), copies=1)
>>> next(iter(values.values())).shape  # (images, tokens)
torch.Size([2, 65])
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from clipviz.visualization.objectives import Neuron, Objective, Sum, _indices

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

_MLP_HOOK = re.compile(r"^blocks\.(\d+)\.mlp\.hook_(pre|post)$")
_ELEMENTWISE: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _terms(objective: Objective) -> list[Objective]:
    return [t for _, t in objective.terms] if isinstance(objective, Sum) else [objective]


def acts_elementwise(module: nn.Module) -> bool:
    """Whether ``module`` maps each element on its own (GELU, QuickGELU, ReLU, ...): one column in, that column's
    values out. Probed once per module on a small random tensor."""
    if module not in _ELEMENTWISE:
        try:
            p = next(module.parameters(), None)
            p = next(module.buffers(), None) if p is None else p
            z = torch.randn(2, 5, 9, device=p.device if p is not None else None)
            with torch.no_grad():
                full = module(z)
                cols = [module(z[..., j].contiguous()) for j in (0, 4, 8)]
            ok = full.shape == z.shape and all(
                c.shape == z.shape[:-1] and torch.allclose(c, full[..., j], rtol=1e-6, atol=1e-7)
                for c, j in zip(cols, (0, 4, 8), strict=True)
            )
        except Exception:  # noqa: BLE001 - any failure means "not element-wise": the full pass runs
            ok = False
        _ELEMENTWISE[module] = ok
    return _ELEMENTWISE[module]


def _has_user_hooks(*modules: nn.Module | None) -> bool:
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in modules)


@dataclass(frozen=True, eq=False)
class SlicedMLP:
    """How to compute an objective's neurons of one MLP from that MLP's input (see the module docstring)."""

    block: int
    activation: bool  # hook_post: apply the activation; hook_pre: fc1's output itself
    terms: tuple[Neuron, ...]

    def run(self, model: HookedVisionModel, images: torch.Tensor, copies: int) -> dict[int, torch.Tensor]:
        """``id(term) -> (n * copies, N)``: each ``Neuron`` term's own neuron per image, for ``images``
        ``(n * copies, 3, H, W)``."""
        parts = model.blocks[self.block]
        x = model.run_to_mlp_input(images, self.block)  # (B, N, d_model)
        n = x.shape[0] // copies
        weight, bias = parts.fc1.weight, parts.fc1.bias
        out = {}
        for term in self.terms:
            idx = _indices(term.index, n, weight.shape[0], f"neuron (hook '{term.hook}')", x.device)
            rows = idx[:, None].expand(-1, copies).reshape(-1)  # image i's neuron for each of its copies
            w = weight[rows].float()  # (B, d_model)
            z = (x.float() * w[:, None, :]).sum(-1)
            if bias is not None:
                z = z + bias[rows].float()[:, None]
            z = z.to(x.dtype)
            out[id(term)] = parts.act(z) if self.activation else z
        return out


def plan_sliced(model: HookedVisionModel, objective: Objective) -> SlicedMLP | None:
    """The sliced computation of ``objective`` on ``model``, or ``None`` where it does not apply."""
    if objective.needs_output or len(objective.hooks) != 1:
        return None
    readers = [t for t in _terms(objective) if t.hooks]
    if not readers or any(type(t) is not Neuron for t in readers):
        return None
    point = model.hook_point(objective.hooks[0])
    m = _MLP_HOOK.match(point.name)
    if m is None:
        return None
    block, activation = int(m.group(1)), m.group(2) == "post"
    parts = model.blocks[block]
    if parts.gated or not isinstance(parts.fc1, nn.Linear) or _has_user_hooks(parts.fc1, parts.act):
        return None  # a gated MLP's neuron is act(gate) * up: not one row of fc1
    if not activation and (point.module is not parts.fc1 or point.on_input):
        return None  # hook_pre sits elsewhere (e.g. after SegFormer's depth-wise conv)
    if activation and (parts.act is None or point.module is not parts.act or not acts_elementwise(parts.act)):
        return None
    return SlicedMLP(block=block, activation=activation, terms=tuple(readers))
