"""Feature accentuation (after Hamblin, Fel, Saha, Konkle and Alvarez, 2024): start from a natural image and change
it as little as possible so that the neuron fires more, to show *what in this image* the neuron responds to.

The optimisation starts from the seed image itself (``optimise(..., init=...)``; the Fourier parameterisation is
inverted, so step 0 is the seed) and the objective adds anchors that keep the image close to it: in pixel space
(mean squared difference of the clean images) and, optionally, in the model's feature space at a hook (mean
squared difference of the patch activations of the augmented copies from the seed's, per channel in units of the
seed's standard deviation).

>>> import torch
>>> seed = torch.rand(2, 3, 8, 8)
>>> pixel_distance(seed, seed).tolist()
[0.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from clipviz.errors import ClipvizError
from clipviz.visualization.objectives import Context, Objective, PatchTokens

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel


def pixel_distance(images: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Root mean squared difference per image, in [0, 1] pixel units: (n,)."""
    return (images - seed.to(images)).pow(2).flatten(1).mean(1).sqrt()


@dataclass(frozen=True, eq=False)
class PixelAnchor(Objective):
    """Minus the mean squared pixel difference of each clean image from its seed image (n, 3, H, W), the seed
    resized to the image's size where they differ (``--size``, multi-stage recipes)."""

    seed: torch.Tensor

    def __call__(self, ctx: Context) -> torch.Tensor:
        seed = self.seed.to(ctx.images)
        if seed.shape[-2:] != ctx.images.shape[-2:]:
            seed = F.interpolate(seed, size=ctx.images.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        return -(ctx.images - seed).pow(2).flatten(1).mean(1)

    def __str__(self) -> str:
        return "pixel_anchor"


@dataclass(frozen=True, eq=False)
class FeatureAnchor(PatchTokens):
    """Minus the mean squared difference of the patch activations at ``hook`` from the seed's ``reference``
    (n, T, C), in units of the seed's per-channel standard deviation ``scale`` (n, C)."""

    hook: str
    reference: torch.Tensor
    scale: torch.Tensor

    def __call__(self, ctx: Context) -> torch.Tensor:
        patches = self.patches(ctx)
        diff = (patches - self.reference.to(patches)[:, None]) / self.scale.to(patches)[:, None, None]
        return -diff.pow(2).mean(dim=(1, 2, 3))

    def __str__(self) -> str:
        return f"feature_anchor({self.hook})"


@torch.no_grad()
def feature_anchor(model: HookedVisionModel, hook: str, seed: torch.Tensor) -> FeatureAnchor:
    """The feature-space anchor of seed images ``seed`` (n, 3, H, W) at ``hook``."""
    _, cache = model.run_with_cache(seed.to(model.device).float(), [hook])
    act = cache[hook]
    if act.ndim != 3:
        raise ClipvizError(f"a feature anchor needs (B, N, C) activations; hook '{hook}' gives {tuple(act.shape)}")
    patches = act[:, model.hook_layout(hook).n_prefix :].float()
    return FeatureAnchor(hook, patches, patches.std(dim=1).clamp(min=1e-6))  # on the model's device


__all__ = ["FeatureAnchor", "PixelAnchor", "feature_anchor", "pixel_distance"]
