"""Robustness transforms applied to each image's ensemble of copies at every optimisation step.

A transform maps ``x`` of shape ``(n, copies, 3, H, W)`` to a tensor of the same layout (size may change for
``RandomScale``). Its random draws come from one generator per image, so an image's augmentations do not depend
on the other images in the batch. ``progress`` runs from 0 (first step) to 1 (last step).

>>> import torch
>>> rngs = [torch.Generator().manual_seed(0)]
>>> Jitter(4)(torch.rand(1, 8, 3, 16, 16), rngs, 0.0).shape
torch.Size([1, 8, 3, 16, 16])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _per_image(rngs: Sequence[torch.Generator], draw) -> torch.Tensor:
    return torch.stack([draw(g) for g in rngs])


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` (drawn on the CPU) on ``x``'s device and dtype without waiting for the device's queue to drain."""
    return t.to(device=x.device, dtype=x.dtype if t.is_floating_point() else t.dtype, non_blocking=True)


@dataclass(frozen=True)
class ColorShift:
    """Random per-copy, per-channel affine colour shift.

    ``mode="vit"``: ``(x - mu) / sigma`` (the ViT paper); ``mode="pii"``: ``sigma * x + mu`` (Plug-In Inversion);
    ``mu ~ U(-shift, shift)``, ``sigma = exp(U(-log_scale, log_scale))``.
    """

    shift: float = 1.0
    log_scale: float = 1.0
    mode: str = "vit"

    def draw(self, rngs, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu, sigma`` of shape ``(n, copies, 3)``, on the CPU."""
        mu = _per_image(rngs, lambda g: (torch.rand(copies, 3, generator=g) * 2 - 1) * self.shift)
        sigma = _per_image(rngs, lambda g: torch.exp((torch.rand(copies, 3, generator=g) * 2 - 1) * self.log_scale))
        return mu, sigma

    def __call__(self, x: torch.Tensor, rngs, progress: float) -> torch.Tensor:
        mu, sigma = self.draw(rngs, x.shape[1])
        mu, sigma = _like(mu[..., None, None], x), _like(sigma[..., None, None], x)
        return (x - mu) / sigma if self.mode == "vit" else sigma * x + mu


@dataclass(frozen=True)
class OffsetNoise:
    """A constant offset per copy and channel, ``N(0, s^2)``, with ``s`` annealed linearly from ``start`` to ``end``."""

    start: float = 0.5
    end: float = 0.0

    def draw(self, rngs, copies: int, progress: float) -> tuple[float, torch.Tensor]:
        """The noise's scale ``s`` at ``progress`` and the unit noise ``(n, copies, 3)``, on the CPU."""
        s = self.start + (self.end - self.start) * progress
        return s, _per_image(rngs, lambda g: torch.randn(copies, 3, generator=g))

    def __call__(self, x: torch.Tensor, rngs, progress: float) -> torch.Tensor:
        s, noise = self.draw(rngs, x.shape[1], progress)
        return x + s * _like(noise[..., None, None], x)


def _rolled(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``x`` (n, ..., H, W) with image ``i`` rolled by ``shifts[i] = (dy, dx)`` as ``torch.roll`` rolls it, in one
    gather over the flattened pixels (the same bits: every output element is a copy of one input element)."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    rows = (torch.arange(h, device=x.device) - shifts[:, :1]) % h  # (n, H): the source row of each output row
    cols = (torch.arange(w, device=x.device) - shifts[:, 1:]) % w
    index = (rows[:, :, None] * w + cols[:, None, :]).view(n, *[1] * (x.ndim - 3), h * w)
    flat = x.reshape(*x.shape[:-2], h * w)
    return flat.gather(-1, index.expand(flat.shape)).view(x.shape)


class _Roll(torch.autograd.Function):
    """Per-image circular shifts; the gradient is the gather of the inverse shifts (a permutation's transpose: the
    same bits as ``torch.roll``'s backward, and no scatter, so it is deterministic on every device)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(shifts)
        return _rolled(x, shifts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (shifts,) = ctx.saved_tensors
        return _rolled(grad, -shifts), None


@dataclass(frozen=True)
class Jitter:
    """Circular roll by ``U{-max_shift..max_shift}`` pixels in x and y, one offset per image and step (drawn from
    each image's own generator; applied to the whole batch in one gather)."""

    max_shift: int = 32

    def __call__(self, x: torch.Tensor, rngs, progress: float) -> torch.Tensor:
        shifts = _per_image(rngs, lambda g: torch.randint(-self.max_shift, self.max_shift + 1, (2,), generator=g))
        return _Roll.apply(x, _like(shifts, x))


@dataclass(frozen=True)
class Flip:
    """Horizontal flip of each copy with probability ``p``."""

    p: float = 0.5

    def __call__(self, x: torch.Tensor, rngs, progress: float) -> torch.Tensor:
        flip = _like(_per_image(rngs, lambda g: torch.rand(x.shape[1], generator=g) < self.p), x)
        return torch.where(flip[:, :, None, None, None], x.flip(-1), x)


@dataclass(frozen=True)
class RandomScale:
    """Zoom each copy by ``U(low, high)`` about a random centre, keeping the size (reflect-padding when shrinking)."""

    low: float = 0.9
    high: float = 1.1

    def __call__(self, x: torch.Tensor, rngs, progress: float) -> torch.Tensor:
        n, c = x.shape[:2]
        scale = _per_image(rngs, lambda g: self.low + (self.high - self.low) * torch.rand(c, generator=g))
        shift = _per_image(rngs, lambda g: torch.rand(c, 2, generator=g) * 2 - 1)
        scale, shift = _like(scale, x), _like(shift, x)
        inv = 1.0 / scale.reshape(-1)
        theta = torch.zeros(n * c, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = inv
        theta[:, 1, 1] = inv
        theta[:, :, 2] = shift.reshape(-1, 2) * (1 - inv.clamp(max=1.0))[:, None]
        flat = x.reshape(n * c, *x.shape[2:])
        grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
        out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return out.reshape(x.shape)


@dataclass(frozen=True)
class RandomAffine:
    """Rotation, translation and scale per copy (CLIPInversion's augmentation)."""

    degrees: float = 30.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.7, 1.2)

    def __call__(self, x: torch.Tensor, rngs, progress: float) -> torch.Tensor:
        n, c = x.shape[:2]
        draws = _like(_per_image(rngs, lambda g: torch.rand(c, 4, generator=g)), x)
        angle = (draws[..., 0] * 2 - 1) * math.radians(self.degrees)
        scale = self.scale[0] + (self.scale[1] - self.scale[0]) * draws[..., 1]
        tx, ty = (draws[..., 2] * 2 - 1) * self.translate * 2, (draws[..., 3] * 2 - 1) * self.translate * 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # a rotation of the pixels, in the grid's coordinates normalised per axis: on a non-square image the
        # off-diagonal terms carry the aspect ratio, else the rotation would shear it
        aspect = x.shape[-2] / x.shape[-1]  # height / width
        theta = torch.stack([torch.stack([cos, -sin * aspect, tx], -1), torch.stack([sin / aspect, cos, ty], -1)], -2)
        flat = x.reshape(n * c, *x.shape[2:])
        grid = F.affine_grid(theta.reshape(-1, 2, 3), list(flat.shape), align_corners=False)
        return F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False).reshape(x.shape)
