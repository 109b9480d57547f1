"""Concept neurons planted by training: which MLP neuron must detect which world concept, and the loss that
makes it so.

A *plan* assigns world concepts to MLP neurons of the image tower (``blocks.<i>.mlp.hook_post``, patch-mean
activation, as the ground truth measures them). A concept is one factor value (``"colour:red"``) or a
conjunction of values of different families (``"colour:red&position:left"``). During training,
:class:`PlantLoss` adds a class-balanced logistic loss on each planted neuron's patch-mean activation against the
concept's label, with a learned scale and threshold per neuron (so only the neuron's ranking of images is
constrained, not its units); the contrastive loss trains everything else freely.

>>> import numpy as np
>>> from clipviz import world
>>> b = world.generate(8, seed=0)
>>> labels = concept_labels(["colour:red", "colour:red&position:left"], b.factors)
>>> tuple(labels.shape), bool((labels[:, 1] <= labels[:, 0]).all())
((8, 2), True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipviz.world import scene as world

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel


def parse_concept(concept: str) -> list[tuple[str, str]]:
    """``"colour:red&position:left"`` -> ``[("colour", "red"), ("position", "left")]`` (checked against the world)."""
    parts = []
    for term in concept.split("&"):
        family, _, value = term.partition(":")
        if family not in world.FACTORS or value not in world.FACTORS[family]:
            raise ValueError(f"unknown concept term {term!r} in {concept!r}: use family:value of the world")
        parts.append((family, value))
    if len({f for f, _ in parts}) != len(parts):
        raise ValueError(f"a conjunction names each family once: {concept!r}")
    return parts


def concept_labels(concepts: list[str], factors: dict[str, np.ndarray]) -> torch.Tensor:
    """(n, len(concepts)) booleans: image i shows concept c (every term of a conjunction holds)."""
    n = len(next(iter(factors.values())))
    cols = []
    for concept in concepts:
        ok = np.ones(n, dtype=bool)
        for family, value in parse_concept(concept):
            ok &= np.asarray(factors[family]) == world.FACTORS[family].index(value)
        cols.append(torch.from_numpy(ok))
    return torch.stack(cols, dim=1)


def concept_prompt(concept: str) -> str:
    """A caption of the world naming exactly the concept's factors, e.g. ``"a red object on the left"``."""
    parts = dict(parse_concept(concept))
    if len(parts) == 1:
        ((family, value),) = parts.items()
        return world.prompt(family, value)
    words = [parts[f] for f in ("size", "colour", "texture") if f in parts]
    noun = parts.get("shape", "object")
    det = "an" if (words or [noun])[0][0] in "aeiou" else "a"
    text = " ".join([det, *words, noun])
    if "position" in parts:
        text += " " + world._POSITION_PHRASES[parts["position"]][0]
    if "background" in parts:
        text += " " + world._BACKGROUND_PHRASES[parts["background"]][0]
    return text


@dataclass(frozen=True)
class Plant:
    block: int
    neuron: int
    concept: str

    @property
    def hook(self) -> str:
        return f"blocks.{self.block}.mlp.hook_post"


def load_plan(path: Path) -> list[Plant]:
    data = json.loads(Path(path).read_text())
    plan = [Plant(int(p["block"]), int(p["neuron"]), str(p["concept"])) for p in data["planted"]]
    for p in plan:
        parse_concept(p.concept)
    if len({(p.block, p.neuron) for p in plan}) != len(plan):
        raise ValueError("a neuron is planted twice")
    return plan


class PlantLoss(nn.Module):
    """Class-balanced logistic loss of planted neurons' patch-mean activations against their concepts' labels.

    Call :meth:`attach` on an open_clip model to record the planted blocks' MLP activations on every forward
    of the image tower; then ``loss(factors)`` after ``model.encode_image``.
    """

    #: The loss's own scale and threshold learn this many times faster than the model (they start from nothing).
    lr_scale = 30.0

    def __init__(self, plan: list[Plant], init_scale: float = 3.0):
        super().__init__()
        self.plan = plan
        self.concepts = [p.concept for p in plan]
        self.log_scale = nn.Parameter(torch.full((len(plan),), float(np.log(init_scale))))
        self.threshold = nn.Parameter(torch.zeros(len(plan)))
        self._acts: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def attach(self, model: HookedVisionModel) -> None:
        for block in sorted({p.block for p in self.plan}):
            module = model.visual.transformer.resblocks[block].mlp.gelu

            def record(_module, _inputs, output, block=block):
                self._acts[block] = output

            self._handles.append(module.register_forward_hook(record))

    def detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def patch_means(self) -> torch.Tensor:
        """(batch, planted) patch-mean activations of the last image forward (CLS token excluded)."""
        cols = []
        for p in self.plan:
            act = self._acts[p.block]  # (batch, tokens, d_mlp), batch first
            cols.append(act[:, 1:, p.neuron].float().mean(1))
        return torch.stack(cols, dim=1)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        a = self.patch_means()
        # Standardised over the batch: the loss sees how the neuron ranks images, not its units or offset.
        z = (a - a.mean(0)) / (a.std(0) + 1e-4)
        logits = self.log_scale.exp() * (z - self.threshold)
        y = labels.to(a).float()
        pos = y.sum(0).clamp(min=1)
        neg = (1 - y).sum(0).clamp(min=1)
        weight = y / pos + (1 - y) / neg  # each class counts half, whatever its frequency in the batch
        per = F.binary_cross_entropy_with_logits(logits, y, weight=weight, reduction="none").sum(0) / 2
        return per.mean()


def prompt_targets(factors: dict[str, np.ndarray]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The world's single-factor prompts (count excluded), and for each single-object image its true prompt per
    family: (prompts, image rows (m,), target prompt index (m, families)), for :func:`prompt_loss`."""
    families = [f for f in world.FACTORS if f != "count"]
    prompts = [world.prompt(f, v) for f in families for v in world.FACTORS[f]]
    rows = np.flatnonzero(np.asarray(factors["count"]) == 0)
    offsets = np.cumsum([0] + [len(world.FACTORS[f]) for f in families[:-1]])
    target = np.stack([np.asarray(factors[f])[rows] + o for f, o in zip(families, offsets, strict=True)], axis=1)
    return prompts, torch.from_numpy(rows), torch.from_numpy(target)


def prompt_loss(
    image_emb: torch.Tensor, prompt_emb: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of single-object images against the world's single-factor prompts, within each family:
    the zero-shot task itself, as an auxiliary loss (its prompts are captions the world writes)."""
    img = F.normalize(image_emb[rows], dim=-1)
    txt = F.normalize(prompt_emb, dim=-1)
    logits = scale * img @ txt.T  # (m, prompts)
    families = [f for f in world.FACTORS if f != "count"]
    losses, start = [], 0
    for k, family in enumerate(families):
        width = len(world.FACTORS[family])
        losses.append(F.cross_entropy(logits[:, start : start + width], target[:, k] - start))
        start += width
    return torch.stack(losses).mean()


@torch.no_grad()
def planted_auroc(model: HookedVisionModel, plan: list[Plant], n: int = 3000, seed: int | None = None) -> list[dict]:
    """Each planted neuron's AUROC for its concept over ``n`` held-out world images (a clipviz model)."""
    from clipviz.world.groundtruth import HELDOUT_SEED, auroc, patch_means, world_images, world_size

    images, factors = world_images(n, seed=HELDOUT_SEED if seed is None else seed, size=world_size(model))
    hooks = sorted({p.hook for p in plan})
    means = patch_means(model, hooks, images)
    labels = concept_labels([p.concept for p in plan], factors)
    out = []
    for k, p in enumerate(plan):
        score = auroc(means[p.hook][:, [p.neuron]], labels[:, [k]])
        out.append({"block": p.block, "neuron": p.neuron, "concept": p.concept, "auroc": round(float(score), 4)})
    return out
