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

It applies when every term that reads the objective's deepest MLP hook is a ``Neuron`` there, the objective
needs no head output, the hook sits on an activation module that acts element by element (checked once per
module), and no user hook is installed on that MLP's modules (it would be bypassed). Other terms may read hooks
that fire before that MLP's input in the same truncated pass (a data-guided recipe's ``SortMatch`` at
``blocks.0.hook_resid_pre`` and at the block's own ``hook_resid_mid``): they are captured on the way
(``HookedVisionModel.run_to_mlp_input``) and read from the cache as in the full pass, so their values are the
full pass's bit for bit. Which hooks qualify is checked by position: by name only points of earlier blocks and of
the block's own before its MLP (resid_pre, attention, resid_mid) are candidates, and then one probe pass (an
image of zeros, once per model, hooks and grad mode) confirms that each fires before the MLP input as this model
resolves it (e.g. Swinv2's ``hook_resid_mid`` is the MLP's own input). Otherwise the full pass runs.

>>> import clipviz, torch
>>> from clipviz.visualization.objectives import Neuron
>>> model = clipviz.load("world-clip")
>>> plan = plan_sliced(model, Neuron("blocks.1.mlp.hook_post", [3, 7]))
>>> plan.block, plan.activation
(1, True)
>>> values, cache = plan.run(model, torch.rand(2, 3, 64, 64), copies=1)
>>> next(iter(values.values())).shape  # (images, tokens)
torch.Size([2, 65])
>>> plan_sliced(model, Neuron("blocks.1.mlp.hook_post", 3) + Neuron("blocks.0.hook_resid_mid", 1)).keep
('blocks.0.hook_resid_mid',)
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from clipviz.errors import ClipvizError
from clipviz.model.layout import BLOCK_POINTS
from clipviz.visualization.objectives import Neuron, Objective, Sum, _indices

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

_MLP_HOOK = re.compile(r"^blocks\.(\d+)\.mlp\.hook_(pre|post)$")
_BLOCK_POINT = re.compile(r"^blocks\.(\d+)\.(.+)$")
# the points of a block that its MLP reads after: the residual stream in, attention, the MLP's residual input
_BEFORE_MLP = BLOCK_POINTS[: BLOCK_POINTS.index("hook_resid_mid") + 1]
_ELEMENTWISE: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
_FIRES_BEFORE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()
# id(weight) -> (a weak reference to it, its in-place version, its float32 copy); an entry goes with its weight
_FLOAT32: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}


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
    keep: tuple[str, ...] = ()  # the other terms' hooks, all firing before the MLP's input

    def run(
        self, model: HookedVisionModel, images: torch.Tensor, copies: int
    ) -> tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]:
        """``id(term) -> (n * copies, N)``: each ``Neuron`` term's own neuron per image, for ``images``
        ``(n * copies, 3, H, W)``; and the activations at ``keep`` from the same pass, by name."""
        parts = model.blocks[self.block]
        x, cache = model.run_to_mlp_input(images, self.block, self.keep)  # x: (B, N, d_model)
        n = x.shape[0] // copies
        weight, bias = _float32(parts.fc1.weight), parts.fc1.bias
        bias = None if bias is None else _float32(bias)
        out = {}
        for term in self.terms:
            idx = _indices(term.index, n, weight.shape[0], f"neuron (hook '{term.hook}')", x.device)
            rows = idx[:, None].expand(-1, copies).reshape(-1)  # image i's neuron for each of its copies
            w = weight[rows]  # (B, d_model)
            z = (x.float() * w[:, None, :]).sum(-1)
            if bias is not None:
                z = z + bias[rows][:, None]
            z = z.to(x.dtype)
            out[id(term)] = parts.act(z) if self.activation else z
        return out, cache


def _float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32: a frozen low-precision weight is cast once per in-place version (and kept while the weight
    lives), not at every step; the rows gathered from it are the bits of the rows gathered and then cast."""
    if t.dtype == torch.float32 or t.requires_grad:
        return t.float()
    key = id(t)
    entry = _FLOAT32.get(key)
    if entry is None or entry[0]() is not t or entry[1] != t._version:
        entry = (weakref.ref(t, lambda _ref: _FLOAT32.pop(key, None)), t._version, t.detach().float())
        _FLOAT32[key] = entry
    return entry[2]


def fires_before_mlp_input(model: HookedVisionModel, hooks: tuple[str, ...], block: int) -> bool:
    """Whether every hook of ``hooks`` fires before block ``block``'s MLP input in the pass that stops there: a
    point of an earlier block or one of the block's own before its MLP by name, and then in one probe pass of an
    image of zeros (once per model, hooks, block and grad mode: a module may be skipped without gradients)."""
    for hook in hooks:
        point = model.hook_point(hook)
        m = _BLOCK_POINT.match(point.name)
        if point.block is None or m is None or m.group(2) not in BLOCK_POINTS:
            return False  # a native module path: its place in the forward pass is not known
        if int(m.group(1)) > block or (int(m.group(1)) == block and m.group(2) not in _BEFORE_MLP):
            return False
    points = [model.hook_point(h) for h in hooks]
    key = (block, tuple((id(p.module), p.on_input) for p in points), torch.is_grad_enabled())
    seen = _FIRES_BEFORE.setdefault(model, {})
    if key not in seen:
        try:
            model.run_to_mlp_input(torch.zeros(1, 3, *model.image_size, device=model.device), block, hooks)
            seen[key] = True
        except ClipvizError:
            seen[key] = False
    return seen[key]


def plan_sliced(model: HookedVisionModel, objective: Objective) -> SlicedMLP | None:
    """The sliced computation of ``objective`` on ``model``, or ``None`` where it does not apply."""
    if objective.needs_output or not objective.hooks:
        return None
    names = {h: model.hook_point(h).name for h in objective.hooks}
    mlp = [(int(m.group(1)), name) for name in names.values() if (m := _MLP_HOOK.match(name))]
    if not mlp:
        return None
    block = max(b for b, _ in mlp)
    target = {name for b, name in mlp if b == block}
    if len(target) != 1:
        return None  # hook_pre and hook_post of one MLP
    name = target.pop()
    readers = [t for t in _terms(objective) if any(names[h] == name for h in t.hooks)]
    if any(type(t) is not Neuron for t in readers):
        return None
    activation = name.endswith("hook_post")
    point = model.hook_point(name)
    parts = model.blocks[block]
    if parts.gated or not isinstance(parts.fc1, nn.Linear) or _has_user_hooks(parts.fc1, parts.act):
        return None  # a gated MLP's neuron is act(gate) * up: not one row of fc1
    if not activation and (point.module is not parts.fc1 or point.on_input):
        return None  # hook_pre sits elsewhere (e.g. after SegFormer's depth-wise conv)
    if activation and (parts.act is None or point.module is not parts.act or not acts_elementwise(parts.act)):
        return None
    keep = tuple(h for h in objective.hooks if names[h] != name)
    if keep and not fires_before_mlp_input(model, keep, block):
        return None
    return SlicedMLP(block=block, activation=activation, terms=tuple(readers), keep=keep)
