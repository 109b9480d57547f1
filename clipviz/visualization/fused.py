"""One fused pass for the chain of per-channel affine steps of an augmentation pipeline.

The ViT paper's pipeline applies, to each copy and channel, ``ColorShift`` (``(x - mu) / sigma``), then a
constant offset (``+ s * noise``), then jitter, and the model normalises (``(x - mean) / std``). Every step
but the jitter is ``x -> a * x + b`` with ``a, b`` constant per copy and channel, and the jitter (a circular
roll, like a flip) only moves pixels, so the whole chain is one ``a * x + b`` per copy and channel, applied in
one pass (``torch.addcmul``) to the image broadcast over its copies, followed by the moves. The random draws are
the same, in the same order, from the same per-image generators, so the images are those of the unfused
pipeline up to float rounding (``tests/test_speedups.py``: max |diff| within ``1e-5`` on normalised inputs).

The model's normalisation is folded in only when nothing after the affine steps resamples the image (a warp with
zero padding does not commute with an offset) and the image is at the model's input size; the model then takes
the images as they are (``HookedVisionModel.prenormalised``).

>>> import torch
>>> from clipviz.visualization.transforms import ColorShift, Jitter, OffsetNoise
>>> mean_std = (torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.5, 0.5, 0.5]))
>>> fused, rest, folds = fuse_affine([ColorShift(), OffsetNoise(), Jitter(4)], mean_std)
>>> [type(t).__name__ for t in rest], folds
(['Jitter'], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clipviz.visualization.transforms import ColorShift, Flip, Jitter, OffsetNoise, _like

_AFFINE = (ColorShift, OffsetNoise)
_MOVES = (Jitter, Flip)  # pixel permutations: they commute with a per-channel affine map


@dataclass(frozen=True)
class AffineChain:
    """Leading per-channel affine transforms, and optionally the model's normalisation, as one ``a * x + b``."""

    steps: tuple[ColorShift | OffsetNoise, ...]
    mean: torch.Tensor | None = None  # (3,) on the CPU: the model's normalisation, folded in when given
    std: torch.Tensor | None = None

    def coefficients(self, rngs, copies: int, progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``a, b`` of shape ``(n, copies, 3)``, drawn as the unfused steps draw them (same generators, order)."""
        n = len(rngs)
        a, b = torch.ones(n, copies, 3), torch.zeros(n, copies, 3)
        for step in self.steps:
            if isinstance(step, ColorShift):
                mu, sigma = step.draw(rngs, copies)
                a, b = (a / sigma, (b - mu) / sigma) if step.mode == "vit" else (sigma * a, sigma * b + mu)
            else:
                s, noise = step.draw(rngs, copies, progress)
                b = b + s * noise
        if self.mean is not None:
            a, b = a / self.std, (b - self.mean) / self.std
        return a, b

    def __call__(self, x: torch.Tensor, rngs, progress: float) -> torch.Tensor:
        """``x`` ``(n, copies, 3, H, W)`` (an image broadcast over its copies is fine) -> ``a * x + b``."""
        a, b = self.coefficients(rngs, x.shape[1], progress)
        return torch.addcmul(_like(b[..., None, None], x), x, _like(a[..., None, None], x))


def fuse_affine(transforms: Sequence, normalisation=None) -> tuple[AffineChain | None, list, bool]:
    """Split ``transforms`` into the fused leading affine chain, the transforms left, and whether the model's
    ``normalisation`` (``mean, std``; ``None``: not to be folded) was folded in: only if every transform left
    only moves pixels. The coefficients are made on the CPU (no device synchronisation per step)."""
    k = 0
    while k < len(transforms) and type(transforms[k]) in _AFFINE:
        k += 1
    if k == 0:
        return None, list(transforms), False
    rest = list(transforms[k:])
    folds = normalisation is not None and all(type(t) in _MOVES for t in rest)
    mean, std = (t.detach().float().cpu() for t in normalisation) if folds else (None, None)
    return AffineChain(tuple(transforms[:k]), mean, std), rest, folds
