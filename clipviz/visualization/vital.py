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


#: The colour directions of ``ColourMatch``: the 13 directions of a 3x3x3 lattice of RGB (axes, face and cube
#: diagonals), each once up to sign, unit length: every colour axis and every pair and triple of channels.
COLOUR_DIRECTIONS = torch.nn.functional.normalize(
    torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1]]
        + [[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]],
        dtype=torch.float32,
    ),
    dim=1,
)
#: Quantiles of each colour direction that ``ColourMatch`` compares.
COLOUR_QUANTILES = 4096  # a 64-px image exactly: its side is a plain sort


def colour_quantiles(images: torch.Tensor, count: int = COLOUR_QUANTILES) -> torch.Tensor:
    """``images`` (B, 3, H, W) -> (B, count, 13): each image's pixels projected on ``COLOUR_DIRECTIONS``, sorted
    and read at ``count`` evenly spaced quantiles (differentiable: the generated images' side of ``ColourMatch``).
    Pass the references as one image of all their pixels side by side to pool them."""
    pixels = images.flatten(2).transpose(1, 2)  # (B, H*W, 3)
    d = COLOUR_DIRECTIONS.to(pixels)
    # element by element, not a matrix product: a batched product's rounding depends on the batch's size, and an
    # image must not depend on its batch-mates
    projected = pixels[..., 0:1] * d[:, 0] + pixels[..., 1:2] * d[:, 1] + pixels[..., 2:3] * d[:, 2]
    return reference_quantiles(projected, count)


@dataclass(frozen=True, eq=False)
class ColourMatch(Objective):
    """Minus the sliced 1-D optimal transport cost between each clean image's colours and its reference's: the
    squared difference of their quantiles along each of ``COLOUR_DIRECTIONS``, averaged, in units of the
    reference's spread (``scale``, (n,)). Zero when the image's pixels have the reference images' colour
    distribution, whatever their places: the neuron objective decides where each colour goes.

    ``quantiles`` (n, COLOUR_QUANTILES, 13): ``colour_quantiles`` of each neuron's reference images, pooled."""

    quantiles: torch.Tensor
    scale: torch.Tensor

    def __call__(self, ctx: Context) -> torch.Tensor:
        generated = colour_quantiles(ctx.images, self.quantiles.shape[1])
        diff = (generated - self.quantiles.to(generated)) / self.scale.to(generated)[:, None, None]
        return -diff.pow(2).mean(dim=(1, 2))

    def __str__(self) -> str:
        return "colour_match"


def colour_reference(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One neuron's reference images (k, 3, H, W) -> (``quantiles`` (COLOUR_QUANTILES, 13), ``scale`` ()) of
    ``ColourMatch``: the pooled pixels' quantiles and the root mean square of their spread along the directions."""
    pooled = images.detach().float().transpose(0, 1).flatten(1)[None, :, :, None]  # (1, 3, k*H*W, 1): all pixels
    quantiles = colour_quantiles(pooled)[0]
    spread = (pooled.flatten(2)[0].T @ COLOUR_DIRECTIONS.T).std(dim=0)  # once per neuron, on its own images
    return quantiles, spread.pow(2).mean().sqrt().clamp(min=1e-3)


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
    colour: float = 0.0,
) -> Objective:
    """The neuron objective plus ``weight`` times minus the sort-matching loss at each matched hook, each neuron
    against its own reference images ``guides[i]`` (k, 3, H, W), and ``colour`` times ``ColourMatch`` against
    the same images.

    >>> import clipviz, torch
    >>> model = clipviz.load("world-clip")
    >>> refs = [torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)]
    >>> str(guided_objective(model, "blocks.1.mlp.hook_post", [3, 7], refs, ["hook_resid_mid"], 1.0))
    '1*neuron(blocks.1.mlp.hook_post, [3, 7], patches) + 1*sort_match(blocks.1.hook_resid_mid, C=128)'
    """
    if len(guides) != len(neurons):
        raise ClipvizError(f"one reference set per neuron: {len(neurons)} neurons, {len(guides)} sets")
    names = [match_hook(model, hook, where) for where in match] if weight else []
    objective: Objective = Neuron(hook, list(neurons), reduce)
    if names:
        per_neuron = [references(model, hook, int(n), g, names, reduce) for n, g in zip(neurons, guides, strict=True)]
        objective = objective_from_references(model, hook, neurons, per_neuron, weight, reduce)
    if colour:
        objective = objective + colour * colour_objective(guides, model.device)
    return objective


def colour_objective(guides: Sequence[torch.Tensor], device: torch.device | str = "cpu") -> ColourMatch:
    """``ColourMatch`` of each image against its own reference images ``guides[i]`` (k, 3, H, W), on ``device``."""
    quantiles, scales = zip(*(colour_reference(g) for g in guides), strict=True)
    return ColourMatch(torch.stack(quantiles).to(device), torch.stack(scales).to(device))


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
    "COLOUR_DIRECTIONS",
    "ColourMatch",
    "Reference",
    "SortMatch",
    "colour_objective",
    "colour_quantiles",
    "colour_reference",
    "guided_objective",
    "match_hook",
    "objective_from_references",
    "reference_quantiles",
    "references",
    "sort_match",
]
