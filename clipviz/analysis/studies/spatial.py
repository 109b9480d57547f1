"""Study ``spatial``: is a patch token's position still in it after each block?

Claim tested (arXiv:2212.06727, Sec. 4 "ViTs preserve spatial information in every layer but the last"): patch tokens
keep their spatial position through the network; feature visualizations of a patch-position objective put their
pattern at that position in every layer but the last, where the pattern spreads over the image, "the last layer
acting as a learned global pooling".

Two measurements per block:

* ``position_accuracy``: a linear probe (ridge classifier, one-hot targets) reads a patch's index from its token at
  ``blocks.{i}.hook_resid_post``; trained on the tokens of half of the images, scored on the other half (so it must
  generalise across image content). Chance is ``1 / patches``. Row ``-1`` is the block-0 input (the embeddings).
* the spatial objective test: images are optimised to excite one MLP neuron (``mlp.hook_post``) *at one patch*
  (``reduce=("patch", r, c)``, no jitter so positions stay put); then each patch of the result is occluded in turn
  (filled with the image's mean colour) and the change of the objective says where the pattern that drives it
  lies. ``objective_hit``: the share of images whose largest change (in absolute value) is at the target patch
  (chance ``1 / patches``); ``objective_share``: the mean share of the absolute changes that falls on the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from clipviz.analysis.studies.common import (
    StreamingRidgeClassifier,
    StudyResult,
    chunks,
    hook_layout,
    new_figure,
    progress,
)
from clipviz.errors import ClipvizError

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel


@dataclass
class SpatialResult(StudyResult):
    study = "spatial"
    claim = (
        "ViTs preserve spatial information in every block but the last, which acts as a learned global "
        "pooling (a patch-position objective lands at its position except in the last block)"
    )
    blocks: list[int]  # -1: the embeddings (input of block 0)
    position_accuracy: list[float]
    chance: float
    objective_blocks: list[int]
    objective_hit: list[float]
    objective_share: list[float]

    def summary(self) -> dict:
        acc = dict(zip(self.blocks, self.position_accuracy, strict=True))
        last = max(self.blocks)
        inner = [a for b, a in acc.items() if 0 <= b < last]
        out = {
            "chance": self.chance,
            "last_block_accuracy": acc[last],
            "min_accuracy_before_last": min(inner) if inner else None,
            "position_kept_before_last": bool(inner) and min(inner) > 0.5 + 0.5 * self.chance,
            "position_lost_in_last": acc[last] < 0.5 * min(inner) if inner else None,
        }
        if self.objective_hit:
            out["objective_hit_last"] = self.objective_hit[-1]
            out["objective_hit_before_last"] = (
                sum(self.objective_hit[:-1]) / (len(self.objective_hit) - 1) if len(self.objective_hit) > 1 else None
            )
        return out

    def figure(self):
        fig, (ax, bx) = new_figure(1, 2)
        ax.plot(self.blocks, self.position_accuracy, "o-", label="linear probe (held-out)")
        ax.axhline(self.chance, color="grey", ls="--", label="chance")
        ax.set(
            xlabel="block (-1: embeddings)",
            ylabel="position accuracy",
            ylim=(0, 1.05),
            title="patch position decodable from its token",
        )
        ax.legend(fontsize=8)
        if self.objective_blocks:
            bx.plot(self.objective_blocks, self.objective_hit, "o-", label="hit: largest occlusion change at target")
            bx.plot(self.objective_blocks, self.objective_share, "s-", label="share of change at target")
            bx.axhline(self.chance, color="grey", ls="--", label="chance")
            bx.legend(fontsize=8)
        bx.set(xlabel="block", ylabel="fraction", ylim=(0, 1.05), title="patch-position objective: where it lands")
        ax.set_xticks(self.blocks)
        bx.set_xticks(self.objective_blocks or self.blocks[1:])
        fig.suptitle(f"spatial: {self.model} on {self.dataset}", fontsize=10)
        return fig


def position_probe(
    model: HookedVisionModel, images: torch.Tensor, batch: int = 64, bar=None
) -> tuple[list[int], list[float], float]:
    """Held-out accuracy of a linear read-out of the patch index from each block's patch tokens: fitted on the
    tokens of the first half of the images, scored on the second half (one pass over each half, tokens never
    stored)."""
    n = images.shape[0]
    if n < 2:
        raise ClipvizError("the position probe needs at least 2 images")
    layout = hook_layout(model, 0)
    n_patch = layout.grid[0] * layout.grid[1]
    hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(model.n_blocks)]
    half = n // 2
    probes: dict[str, StreamingRidgeClassifier] = {}
    correct = dict.fromkeys(hooks, 0)

    def tokens(lo: int, hi: int):
        for part in chunks(hi - lo, batch):
            with torch.no_grad():
                _, cache = model.run_with_cache(images[lo + part.start : lo + part.stop].to(model.device), hooks)
            if bar is not None:
                bar.update(1)
            yield {h: cache[h][:, layout.patches].float().flatten(0, 1) for h in hooks}

    labels = torch.arange(n_patch)
    for acts in tokens(0, half):
        for h, x in acts.items():
            probe = probes.setdefault(h, StreamingRidgeClassifier(x.shape[1], n_patch))
            probe.update(x, labels.repeat(x.shape[0] // n_patch))
    for probe in probes.values():
        probe.fit()
    for acts in tokens(half, n):
        for h, x in acts.items():
            correct[h] += int((probes[h].predict(x) == labels.repeat(x.shape[0] // n_patch)).sum())
    accuracy = [correct[h] / ((n - half) * n_patch) for h in hooks]
    return list(range(-1, model.n_blocks)), accuracy, 1.0 / n_patch


def _occlusion_drops(
    model, hook: str, neurons: torch.Tensor, target: tuple[int, int], images: torch.Tensor, layout
) -> torch.Tensor:
    """(n, P): drop of neuron ``neurons[i]`` at the target patch when each patch of image ``i`` is occluded."""
    gh, gw = layout.grid
    ph, pw = images.shape[-2] // gh, images.shape[-1] // gw
    t = layout.n_prefix + target[0] * gw + target[1]
    drops = []
    for i in range(images.shape[0]):
        img = images[i]
        fill = img.mean((1, 2), keepdim=True)
        batch = img.expand(gh * gw + 1, -1, -1, -1).clone()
        for k in range(gh * gw):
            r, c = divmod(k, gw)
            batch[k + 1, :, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = fill
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.to(model.device), [hook])
        value = cache[hook][:, t, int(neurons[i])].float().cpu()
        drops.append(value[0] - value[1:])
    return torch.stack(drops)


def objective_test(
    model, targets: int = 2, neurons: int = 4, steps: int = 64, seed: int = 0, bar=None
) -> tuple[list[int], list[float], list[float]]:
    """The paper's spatial objective test per block (see the module docstring)."""
    from clipviz.visualization.objectives import Neuron
    from clipviz.visualization.optimise import optimise
    from clipviz.visualization.recipes import get_recipe

    layout = hook_layout(model, 0)
    gh, gw = layout.grid
    recipe = get_recipe("vit-paper", steps=steps, copies=1, jitter=0, offset_noise=0.0)
    g = torch.Generator().manual_seed(seed)
    hits, shares, blocks = [], [], []
    for block in range(model.n_blocks):
        hook = f"blocks.{block}.mlp.hook_post"
        d_mlp = model.blocks[block].d_mlp
        block_hits, block_shares = [], []
        cells = torch.randperm(gh * gw, generator=g)[:targets]
        for cell in cells.tolist():
            target = divmod(cell, gw)
            idx = torch.randperm(d_mlp, generator=g)[:neurons]
            objective = Neuron(hook, idx.tolist(), reduce=("patch", *target))
            seeds = [seed * 100_003 + block * 1009 + cell * 31 + int(i) for i in idx]
            result = optimise(model, objective, seeds, recipe)
            drops = _occlusion_drops(model, hook, idx, target, result.images, layout)
            size = drops.abs()
            block_hits += (size.argmax(1) == cell).float().tolist()
            block_shares += (size[:, cell] / size.sum(1).clamp(min=1e-12)).tolist()
            if bar is not None:
                bar.update(1)
        blocks.append(block)
        hits.append(sum(block_hits) / len(block_hits))
        shares.append(sum(block_shares) / len(block_shares))
    return blocks, hits, shares


def spatial(
    model: HookedVisionModel,
    probe,
    *,
    batch: int = 64,
    objective_targets: int = 2,
    objective_neurons: int = 4,
    objective_steps: int = 64,
    seed: int = 0,
    progress_bar: bool = True,
) -> SpatialResult:
    """Run the ``spatial`` study (see the module docstring). ``objective_targets=0`` skips the objective test."""
    n_batches = -(-(len(probe) // 2) // batch) + -(-(len(probe) - len(probe) // 2) // batch)
    bar = progress(n_batches + model.n_blocks * objective_targets, "spatial", progress_bar)
    blocks, accuracy, chance = position_probe(model, probe.images, batch, bar)
    ob, hit, share = ([], [], [])
    if objective_targets:
        ob, hit, share = objective_test(model, objective_targets, objective_neurons, objective_steps, seed, bar)
    bar.close()
    return SpatialResult(
        model=model.spec,
        dataset=probe.name,
        settings={
            "images": len(probe),
            "batch": batch,
            "objective_targets": objective_targets,
            "objective_neurons": objective_neurons,
            "objective_steps": objective_steps,
            "seed": seed,
            "probe": "ridge classifier, alpha 1e-3, half the images held out",
            "objective_recipe": "vit-paper, 1 copy, no jitter, no offset noise",
        },
        blocks=blocks,
        position_accuracy=accuracy,
        chance=chance,
        objective_blocks=ob,
        objective_hit=hit,
        objective_share=share,
    )
