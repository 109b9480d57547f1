"""Image priors, one value per image: what ``TotalVariation`` and ``L2`` objectives subtract.

>>> import torch
>>> flat, noisy = torch.full((1, 3, 8, 8), 0.5), torch.rand(1, 3, 8, 8)
>>> float(total_variation(flat)), bool(total_variation(noisy) > 0), float(l2_penalty(flat))
(0.0, True, 0.0)
"""

from __future__ import annotations

import torch


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """The ViT paper's TV, per image: sum over 4 directions (h, v, two diagonals) of the mean over channels of the
    unsquared L2 norm of the difference. ``images`` is ``(n, 3, H, W)``; returns ``(n,)``."""
    diffs = (
        images[..., 1:, :] - images[..., :-1, :],
        images[..., :, 1:] - images[..., :, :-1],
        images[..., 1:, 1:] - images[..., :-1, :-1],
        images[..., 1:, :-1] - images[..., :-1, 1:],
    )
    return sum(d.flatten(-2).norm(dim=-1).mean(dim=-1) for d in diffs)


def l2_penalty(images: torch.Tensor, centre: float = 0.5) -> torch.Tensor:
    """Mean squared distance of each image from mid-grey, ``(n,)``."""
    return ((images - centre) ** 2).flatten(1).mean(dim=1)
