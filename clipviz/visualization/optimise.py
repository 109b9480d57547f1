"""The optimisation loop: images that maximise a batched objective under a recipe.

Every image in the batch has its own seed, its own initialisation and its own stream of random augmentations;
the model has no batch-coupled layers and Adam is element-wise, so an image does not depend on the others in
its batch (a ``Diversity`` term is the one deliberate exception).

>>> import clipviz, torch
>>> from clipviz.visualization.objectives import Neuron
>>> from clipviz.visualization.recipes import get_recipe
>>> model = clipviz.load("world-clip")
>>> result = optimise(model, Neuron("blocks.1.mlp.hook_post", [3, 7]), seeds=[3, 7],
...                   recipe=get_recipe("vit-paper", steps=5, copies=2))
>>> result.images.shape
torch.Size([2, 3, 64, 64])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from clipviz.errors import ClipvizError, check_int
from clipviz.model.compiled import blocks_compiled
from clipviz.model.onednn import linears_as_onednn, packing_kept
from clipviz.model.stem import stem_as_matmul
from clipviz.visualization.objectives import L2, Context, Objective, TotalVariation
from clipviz.visualization.param import PixelImage, make_param
from clipviz.visualization.recipes import Recipe
from clipviz.visualization.sliced import plan_sliced
from clipviz.visualization.speedups import SpeedUps, augmentations
from clipviz.visualization.transforms import Jitter

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel


class RenderError(ClipvizError, RuntimeError):
    """The optimisation broke down (a loss that is not finite), naming the image and the step; ``index`` is the
    image's position in its batch."""

    def __init__(self, message: str, index: int = 0, label: object = None, step: int = 0):
        super().__init__(message)
        self.index, self.label, self.step = index, label, step


#: The largest image side accepted, as a multiple of the model's input size.
MAX_SIZE_FACTOR = 4


def check_size(model: HookedVisionModel, size: int | None) -> int:
    """The image height to render (the model's input height by default; the width follows its aspect ratio, see
    ``canvas``): at least one patch, at most
    ``MAX_SIZE_FACTOR`` times the model's input size (images are resized to the input size inside the model)."""
    native = max(model.image_size)
    if size is None:
        return int(model.image_size[0])
    patch = max(model.backend.patch_size)
    high = MAX_SIZE_FACTOR * native
    try:
        return check_int(size, "size", patch, high)
    except ClipvizError:
        raise ClipvizError(
            f"image size {str(size)[:20]} is not accepted for '{model.spec}': use {patch} to {high} pixels (from its "
            f"patch size to {MAX_SIZE_FACTOR}x its input size of {native})"
        ) from None


@dataclass
class RenderResult:
    images: torch.Tensor  # (n, 3, H, W) in [0, 1], on the CPU
    start: torch.Tensor  # (n,) objective on the clean initial images
    end: torch.Tensor  # (n,) objective on the clean final images


def forward_objective(
    model: HookedVisionModel,
    objective: Objective,
    images: torch.Tensor,
    copies: int,
    clean: torch.Tensor,
    autocast=contextlib.nullcontext,
    speedups: SpeedUps | None = None,
) -> torch.Tensor:
    """Evaluate ``objective`` on ``images`` ``(n * copies, 3, H, W)``; ``clean`` are the images before augmentation.

    ``speedups`` (default: all on) may compute only the neurons the objective reads, run the stem as a matrix
    product and the linear layers as packed oneDNN products: the same values to float rounding
    (``clipviz.visualization.speedups``)."""
    speedups = speedups or SpeedUps()
    hooks = objective.hooks
    picked: dict = {}
    onednn = speedups.linear_on(model.device)
    plan = plan_sliced(model, objective) if speedups.sliced_mlp else None
    with (
        autocast(),
        stem_as_matmul(model, speedups.stem_on(model.device), onednn),
        linears_as_onednn(model, onednn),
        blocks_compiled(model, _first_hooked_block(model, objective), speedups.compiled_blocks),
    ):
        if plan is not None:
            output, (picked, cache) = None, plan.run(model, images, copies)
        elif hooks:
            output, cache = model.run_with_cache(
                images, list(hooks), stop_early=not objective.needs_output, detach=False
            )
        else:
            output, cache = model(images), {}
    return objective(Context(model=model, cache=cache, output=output, images=clean, copies=copies, picked=picked))


def _first_hooked_block(model: HookedVisionModel, objective: Objective) -> int:
    """The first block that a hook of this pass sits in (0 where one sits before the blocks): the blocks before
    it may be compiled."""
    blocks = [model.hook_point(h).block for h in objective.hooks]
    return 0 if None in blocks else min(blocks, default=model.n_blocks)


@torch.no_grad()
def evaluate(
    model, objective: Objective, images: torch.Tensor, autocast=contextlib.nullcontext, speedups: SpeedUps | None = None
) -> torch.Tensor:
    """Objective values ``(n,)`` on clean, unaugmented images ``(n, 3, H, W)``."""
    x = images.to(model.device)
    return forward_objective(model, objective, x, 1, x, autocast, speedups).float().cpu()


def _rngs(seeds: Sequence[int], stream: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed((int(s) * 1_000_003 + stream) % (2**63)) for s in seeds]


def canvas(model: HookedVisionModel, side: int) -> tuple[int, int]:
    """The rendered image's (height, width): ``side`` rows, and the model's own aspect ratio, so that a
    non-square model (ViTPose's 256x192) is never fed a stretched square."""
    h, w = model.image_size
    return int(side), max(1, round(side * w / h))


def _resized(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ClipvizError(f"start images must be (n, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    if tuple(images.shape[-2:]) == shape:
        return images.float()
    (h, w), (th, tw) = images.shape[-2:], shape
    if abs(h * tw - w * th) > max(th, tw):
        raise ClipvizError(
            f"start images are {h}x{w} (height x width) but the rendering is {th}x{tw}: resizing them would "
            "stretch them; crop them to the model's aspect ratio first (model.preprocess_pil does)"
        )
    return F.interpolate(images.float(), size=shape, mode="bilinear", align_corners=False, antialias=True)


def _paste_previous(param: PixelImage, previous: torch.Tensor, pad: float) -> None:
    """PII's zoom: the previous stage's image, resized to (size - pad), pasted in the centre of a fresh canvas."""
    h, w = param.size
    ih, iw = max(1, round(h * (1 - pad))), max(1, round(w * (1 - pad)))
    small = F.interpolate(
        previous.to(param.pixels), size=(ih, iw), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0, 1)
    top, left = (h - ih) // 2, (w - iw) // 2
    with torch.no_grad():
        param.pixels[:, :, top : top + ih, left : left + iw] = small


# How often the loop looks at the finiteness flags: each look waits for the GPU, so it is not done every step;
# the step reported is still the exact first one at which the loss broke.
_CHECK_EVERY = 25


def _raise_if_not_finite(first_bad: torch.Tensor, labels: Sequence[object], total: int) -> None:
    broken = first_bad.cpu()
    if bool((broken >= 0).any()):
        steps = torch.where(broken >= 0, broken, torch.iinfo(torch.long).max)
        i = int(steps.argmin())
        raise RenderError(
            f"the loss is not finite for {labels[i]} at step {int(broken[i])} of {total}; "
            "try a lower learning rate or full precision",
            index=i,
            label=labels[i],
            step=int(broken[i]),
        )


def _clip_per_image(parameters, max_norm: float) -> None:
    for p in parameters:
        if p.grad is None:
            continue
        norms = p.grad.flatten(1).norm(dim=1).clamp(min=1e-12)
        factor = (max_norm / norms).clamp(max=1.0)
        p.grad.mul_(factor.view(-1, *([1] * (p.grad.ndim - 1))))


@packing_kept()  # the packed oneDNN weights live for one rendering: an edit between renderings is always seen
def optimise(
    model: HookedVisionModel,
    objective: Objective,
    seeds: Sequence[int],
    recipe: Recipe,
    *,
    size: int | None = None,
    autocast: Callable = contextlib.nullcontext,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    labels: Sequence[object] | None = None,
    speedups: SpeedUps | None = None,
    init: torch.Tensor | None = None,
    report: Objective | None = None,
) -> RenderResult:
    """Optimise one image per seed to maximise ``objective`` (a batched objective of ``len(seeds)`` images).

    ``labels`` name the images in error messages (neuron ids, prompts). ``on_step(k, values)`` is called after
    each step with the step count and the objective of each image, detached and still on the device (reading it
    waits for the device, so a progress bar should do so rarely).
    ``speedups``: the exact speed-ups to use (default: all; ``SpeedUps.none()`` for the plain computation).
    ``init`` (n, 3, H, W) in [0, 1]: start from these images instead of the seeded noise (feature accentuation;
    the parameterisation is inverted, so step 0 is the image itself).
    ``report``: the objective whose start and end values are returned (default ``objective``; e.g. the plain
    neuron objective when ``objective`` adds guidance or anchor terms).
    """
    speedups = speedups or SpeedUps()
    report = objective if report is None else report
    n = len(seeds)
    labels = list(labels) if labels is not None else list(range(n))
    shape = canvas(model, check_size(model, size or recipe.size))
    if init is not None and len(init) != n:
        raise ClipvizError(f"one start image per seed: {n} seeds, {len(init)} images")
    if recipe.param != "pixel" and len(recipe.stages) > 1:
        raise ClipvizError(f"recipe '{recipe.name}': multi-stage zoom needs the pixel parameterisation")
    full = objective
    if recipe.tv:
        full = full + recipe.tv * TotalVariation()
    if recipe.l2:
        full = full + recipe.l2 * L2()
    rngs = _rngs(seeds, stream=1)
    pre_jitter = Jitter(recipe.jitter) if recipe.jitter and recipe.jitter_first else None
    device = model.device
    previous, start = None, None
    total, step_no = recipe.total_steps, 0
    for stage, fraction in enumerate(recipe.stages):
        zoom = max(fraction, 8 / min(shape))  # at least 8 pixels a side, the aspect ratio kept
        stage_shape = (round(shape[0] * zoom), round(shape[1] * zoom))
        stage_seeds = [int(s) * 7919 + stage if stage else int(s) for s in seeds]
        param = make_param(recipe.param, stage_seeds, stage_shape, grey=model.input_channels == 1).to(device)
        if init is not None and stage == 0:
            param.set_image(_resized(init, stage_shape).to(device))
        if previous is not None:
            _paste_previous(param, previous, recipe.zoom_pad)
        if start is None:
            start = evaluate(model, report, param().detach(), autocast, speedups)
        transforms, prenormalised = augmentations(recipe, model, stage_shape, speedups)
        opt = torch.optim.Adam(param.parameters(), lr=recipe.lr, betas=recipe.betas, eps=recipe.eps)
        first_bad = torch.full((n,), -1, dtype=torch.long, device=device)  # step at which each loss broke
        for k in range(recipe.steps):
            lr = recipe.lr
            if recipe.schedule == "cosine":
                lr = 0.5 * recipe.lr * (1 + math.cos(math.pi * k / recipe.steps))
            for group in opt.param_groups:
                group["lr"] = lr
            images = param()
            x = images[:, None]
            if pre_jitter is not None:
                x = pre_jitter(x, rngs, step_no / max(1, total - 1))
            x = x.expand(-1, recipe.copies, -1, -1, -1)
            for t in transforms:
                x = t(x, rngs, step_no / max(1, total - 1))
            flat = x.reshape(n * recipe.copies, *x.shape[2:])
            with model.prenormalised() if prenormalised else contextlib.nullcontext():
                values = forward_objective(model, full, flat, recipe.copies, images, autocast, speedups)
            first_bad = torch.where(~torch.isfinite(values.detach()) & (first_bad < 0), step_no, first_bad)
            if (k + 1) % _CHECK_EVERY == 0 or k + 1 == recipe.steps:
                _raise_if_not_finite(first_bad, labels, total)
            opt.zero_grad(set_to_none=True)
            (-values.sum()).backward()
            if recipe.grad_clip:
                _clip_per_image(param.parameters(), recipe.grad_clip)
            opt.step()
            param.after_step()
            step_no += 1
            if on_step is not None:
                on_step(step_no, values.detach())
        previous = param().detach()
    final = previous.clamp(0, 1)
    if tuple(final.shape[-2:]) != shape:
        final = F.interpolate(final, size=shape, mode="bilinear", align_corners=False, antialias=True)
    end = evaluate(model, report, final, autocast, speedups)
    return RenderResult(images=final.float().cpu(), start=start, end=end)
