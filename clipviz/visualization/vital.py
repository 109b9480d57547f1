"""Data-guided feature visualization (after VITAL, Gorgun, Schiele and Fischer, ICCV 2025): a sort-matching loss
that aligns the distribution of the generated image's activations with those of the neuron's own top examples.

For a matched hook with ``C`` channels and ``T`` patch tokens, the generated image's activations of each channel
are sorted over the tokens and compared with the reference's sorted activations (all patch tokens of the
reference images pooled, then read at ``T`` evenly spaced quantiles): 1-D optimal transport per channel,

    loss = sum_c w_c * mean_t ((sort(g)_tc - q_tc) / s)^2,

with ``s`` the root mean square over channels of the reference's per-channel standard deviations (one scale per
reference: the loss does not depend on the hook's units, and a channel that barely varies over the reference
gets no outsized weight) and ``w_c`` the channel's *relevance* for the target neuron: gradient x activation of
the neuron's reduced activation with respect to the matched activations, on the reference images, positive part,
summed over tokens, averaged over images, normalised to sum 1. Only channels that feed the target neuron count.

Every neuron has its own reference and its own weights, so an image's loss depends on nothing else in its batch.

>>> import torch
>>> ref = torch.randn(1, 16, 4)
>>> q = reference_quantiles(ref, 16)
>>> float(sort_match(ref[:, torch.randperm(16)], q, torch.full((1, 4), 0.25), torch.ones(1, 4))[0])
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from clipviz.errors import ClipvizError
from clipviz.model.layout import Reduce, reduce_tokens
from clipviz.visualization.objectives import Context, Neuron, Objective, PatchTokens

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel


def reference_quantiles(values: torch.Tensor, count: int) -> torch.Tensor:
    """``values`` (B, M, C) -> (B, count, C): each channel's sorted values read at ``count`` evenly spaced
    quantiles (linear interpolation; with ``count == M`` exactly the sorted values)."""
    m = values.shape[-2]
    ordered = values.sort(dim=-2).values
    if m == count:
        return ordered
    pos = ((torch.arange(count, dtype=torch.float64) + 0.5) * m / count - 0.5).clamp(0, m - 1)
    lo, hi = pos.floor().long(), pos.ceil().long()
    w = (pos - lo).to(values.dtype).to(values.device).view(-1, 1)
    return ordered[..., lo, :] * (1 - w) + ordered[..., hi, :] * w


def sort_match(
    generated: torch.Tensor, quantiles: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Sort-matching loss per image: ``generated`` (B, T, C), ``quantiles`` (B, T, C), ``weights`` (B, C),
    ``scale`` (B, C) -> (B,). Zero exactly when each weighted channel of ``generated`` is a permutation of the
    quantiles."""
    if generated.shape != quantiles.shape:
        raise ClipvizError(
            f"sort matching needs the same (images, tokens, channels): {tuple(generated.shape)} vs "
            f"{tuple(quantiles.shape)}"
        )
    diff = (generated.sort(dim=-2).values - quantiles) / scale[:, None, :]
    return (diff.pow(2).mean(dim=-2) * weights).sum(dim=-1)


@dataclass(frozen=True, eq=False)
class SortMatch(PatchTokens):
    """Minus the sort-matching loss of the patch tokens at ``hook`` against one reference per image.

    ``quantiles`` (n, T, C) with T the hook's patch-token count, ``weights`` and ``scale`` (n, C).
    """

    hook: str
    quantiles: torch.Tensor
    weights: torch.Tensor
    scale: torch.Tensor

    def __call__(self, ctx: Context) -> torch.Tensor:
        patches = self.patches(ctx)
        n, copies = patches.shape[:2]

        def per_copy(t: torch.Tensor) -> torch.Tensor:
            return t.to(patches).repeat_interleave(copies, dim=0)

        loss = sort_match(patches.flatten(0, 1), per_copy(self.quantiles), per_copy(self.weights), per_copy(self.scale))
        return -loss.view(n, copies).mean(1)

    def __str__(self) -> str:
        return f"sort_match({self.hook}, C={self.weights.shape[-1]})"


def match_hook(model: HookedVisionModel, hook: str, where: str) -> str:
    """The hook to match for a target at ``hook``: ``where`` is a full hook name, or a point of the target's own
    block such as ``hook_resid_mid`` (the MLP's input) or ``hook_resid_pre``."""
    if where.startswith(("blocks.", "stages.")):
        name = where
    else:
        point = model.hook_point(hook)
        if point.block is None:
            raise ClipvizError(
                f"the data-guided recipe matches '{where}' of the target's own block, and '{hook}' is a native "
                "module path, not a block hook: name a block hook (`clipviz info MODEL` lists them) or an unguided "
                "recipe such as 'default'"
            )
        name = f"blocks.{point.block}.{where}"
    model.hook_point(name)  # a one-line error if the model has no such hook
    return name


@dataclass(frozen=True)
class Reference:
    """One neuron's reference statistics at a matched hook."""

    quantiles: torch.Tensor  # (T, C)
    weights: torch.Tensor  # (C,), sum 1
    scale: torch.Tensor  # (C,)


def references(
    model: HookedVisionModel,
    hook: str,
    neuron: int,
    images: torch.Tensor,
    matches: Sequence[str],
    reduce: Reduce = "patches",
    relevance: bool = True,
) -> dict[str, Reference]:
    """Reference statistics of ``images`` (k, 3, H, W; the neuron's top examples) at each hook of ``matches``,
    with each channel's relevance for neuron ``neuron`` of ``hook`` (uniform weights when ``relevance`` is False,
    at a match point after the target, which cannot feed it, or when no channel raises the neuron on these
    images): one forward and one backward pass for all of them."""
    # a new leaf: the weights may be frozen, and the caller's images keep requires_grad as they had it
    x = images.to(model.device).float().detach().requires_grad_(relevance)
    with torch.enable_grad():
        _, cache = model.run_with_cache(x, [*matches, hook], stop_early=True, detach=False)
    acts = [cache[m] for m in matches]
    for m, a in zip(matches, acts, strict=True):
        if a.ndim != 3:
            raise ClipvizError(f"sort matching needs (B, N, C) activations; hook '{m}' gives {tuple(a.shape)}")
    grads: list[torch.Tensor | None] = [None] * len(acts)
    if relevance:
        target = cache[hook][..., neuron].float()  # (k, N)
        value = reduce_tokens(target, reduce, model.hook_layout(hook)).sum()
        # each image's value depends on that image only; a match point after the target gets no gradient (None)
        grads = list(torch.autograd.grad(value, acts, allow_unused=True))
    out = {}
    for m, a, grad in zip(matches, acts, grads, strict=True):
        prefix = model.hook_layout(m).n_prefix
        patches = a[:, prefix:].detach().float()  # (k, T, C)
        k, t, c = patches.shape
        q = reference_quantiles(patches.reshape(1, k * t, c), t)[0]
        spread = patches.reshape(k * t, c).std(dim=0)
        scale = spread.pow(2).mean().sqrt().clamp(min=1e-6).expand(c).clone()
        rel = torch.ones(c, device=patches.device)
        if grad is not None:
            found = (grad * a).detach()[:, prefix:].float().sum(dim=1).mean(dim=0).clamp(min=0)
            if float(found.sum()) > 0:  # else the neuron is silent on its references: every channel counts alike
                rel = found
        out[m] = Reference(quantiles=q.cpu(), weights=(rel / rel.sum()).cpu(), scale=scale.cpu())
    return out


def guided_objective(
    model: HookedVisionModel,
    hook: str,
    neurons: Sequence[int],
    guides: Sequence[torch.Tensor],
    match: Sequence[str],
    weight: float,
    reduce: Reduce = "patches",
) -> Objective:
    """The neuron objective plus ``weight`` times minus the sort-matching loss at each matched hook, each neuron
    against its own reference images ``guides[i]`` (k, 3, H, W).

    >>> import clipviz, torch
    >>> model = clipviz.load("world-clip")
    >>> refs = [torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)]
    >>> str(guided_objective(model, "blocks.1.mlp.hook_post", [3, 7], refs, ["hook_resid_mid"], 1.0))
    '1*neuron(blocks.1.mlp.hook_post, [3, 7], patches) + 1*sort_match(blocks.1.hook_resid_mid, C=128)'
    """
    if len(guides) != len(neurons):
        raise ClipvizError(f"one reference set per neuron: {len(neurons)} neurons, {len(guides)} sets")
    names = [match_hook(model, hook, where) for where in match]
    per_neuron = [references(model, hook, int(n), g, names, reduce) for n, g in zip(neurons, guides, strict=True)]
    return objective_from_references(model, hook, neurons, per_neuron, weight, reduce)


def objective_from_references(
    model: HookedVisionModel,
    hook: str,
    neurons: Sequence[int],
    per_neuron: Sequence[dict[str, Reference]],
    weight: float,
    reduce: Reduce = "patches",
) -> Objective:
    """The neuron objective plus ``weight`` times minus the sort-matching loss at each matched hook of the
    neurons' references (``references``' output, one per neuron, the same hooks for all)."""
    objective: Objective = Neuron(hook, list(neurons), reduce)
    names = list(per_neuron[0])
    for name in names:
        refs = [r[name] for r in per_neuron]
        stacked = (
            torch.stack([getattr(r, f) for r in refs]).to(model.device) for f in ("quantiles", "weights", "scale")
        )
        term = SortMatch(name, *stacked)  # on the model's device once, not copied there at every step
        objective = objective + (weight / len(names)) * term
    return objective


__all__ = [
    "Reference",
    "SortMatch",
    "guided_objective",
    "match_hook",
    "objective_from_references",
    "reference_quantiles",
    "references",
    "sort_match",
]
