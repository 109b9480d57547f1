"""Ground truth for models of the synthetic world: zero-shot accuracy and each neuron's selectivity.

A neuron's selectivity for a factor value is the AUROC of its patch-mean activation for telling images with that
value from images without it, over a fixed held-out world sample. A neuron's concept is *clear* when its best
AUROC reaches ``CLEAR_AUROC``.

>>> import clipviz
>>> from clipviz.world.groundtruth import zero_shot_accuracy
>>> acc = zero_shot_accuracy(clipviz.load("world-clip"), n=64)
>>> sorted(acc)[:3]
['background', 'colour', 'position']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from clipviz.errors import ClipvizError
from clipviz.world import scene as world

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

#: A planted neuron is a known answer when its held-out AUROC for its concept reaches this (``Selectivity.known``).
PLANTED_AUROC = 0.98
HELDOUT_SEED = 2_000_000_011  # far from the training stream's seeds (seed * 1_000_003 + step)
CLEAR_AUROC = 0.95
CONCEPTS: list[tuple[str, str]] = [(fam, v) for fam, values in world.FACTORS.items() for v in values]


def world_images(
    n: int, seed: int = HELDOUT_SEED, single_object: bool = False, size: int = 64
) -> tuple[torch.Tensor, dict]:
    """``n`` world images as a float tensor in [0, 1] (n, 3, size, size) and their factor indices."""
    batch = world.generate(n, seed=seed, single_object=single_object, size=size)
    images = torch.from_numpy(batch.images).permute(0, 3, 1, 2).float() / 255.0
    return images, batch.factors


def world_size(model: HookedVisionModel) -> int:
    """The side of the world images ``model`` is measured on: its own input size, so that the world is rendered
    at the resolution the model sees rather than rendered at 64 px and resized. Refuses a non-square input.

    >>> import clipviz
    >>> world_size(clipviz.load("world-clip"))
    64
    """
    height, width = model.image_size
    if height != width:
        raise ClipvizError(f"the world's images are square; this model takes {height}x{width} images")
    return int(height)


@torch.no_grad()
def image_embeddings(model: HookedVisionModel, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Unit image embeddings (n, d) as float32 on the CPU, whatever the model's device, ``batch`` images a pass."""
    rows = [model.encode_image(images[i : i + batch]).float().cpu() for i in range(0, images.shape[0], batch)]
    return F.normalize(torch.cat(rows), dim=-1)


@torch.no_grad()
def prompt_embeddings(model: HookedVisionModel, prompts: list[str]) -> torch.Tensor:
    """Unit text embeddings (len(prompts), d) as float32 on the CPU, whatever the model's device."""
    return F.normalize(model.encode_text(prompts).float().cpu(), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(
    model: HookedVisionModel, n: int = 1000, seed: int = HELDOUT_SEED + 1, batch: int = 250
) -> dict[str, float]:
    """Accuracy per factor family of zero-shot classification with single-factor prompts (``world.prompt``),
    on held-out single-object images (count is left out: it is always one)."""
    images, factors = world_images(n, seed=seed, single_object=True, size=world_size(model))
    emb = image_embeddings(model, images, batch)
    out = {}
    for family, values in world.FACTORS.items():
        if family == "count":
            continue
        text = prompt_embeddings(model, [world.prompt(family, v) for v in values])
        pred = (emb @ text.T).argmax(1).numpy()
        out[family] = float((pred == factors[family]).mean())
    return out


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AUROC of each column of ``scores`` (n, k) for each column of boolean ``labels`` (n, c): (k, c).

    Mann-Whitney with average ranks for ties.
    """
    n = scores.shape[0]
    order = scores.argsort(dim=0)
    ranks = torch.empty_like(scores, dtype=torch.float64)
    ranks.scatter_(0, order, torch.arange(1, n + 1, dtype=torch.float64).unsqueeze(1).expand_as(scores).contiguous())
    # average ranks over ties
    sorted_scores = scores.gather(0, order)
    for j in range(scores.shape[1]):
        col = sorted_scores[:, j]
        if torch.unique(col).numel() < n:
            uniq, inverse = torch.unique(col, return_inverse=True)
            mean_rank = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(
                0, inverse, torch.arange(1, n + 1, dtype=torch.float64)
            )
            mean_rank /= torch.bincount(inverse).double()
            ranks[order[:, j], j] = mean_rank[inverse]
    pos = labels.double()
    n_pos = pos.sum(0)
    n_neg = n - n_pos
    rank_sum = ranks.T @ pos  # (k, c)
    return ((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg).clamp(min=1)).float()


def concept_labels(factors: dict[str, np.ndarray]) -> torch.Tensor:
    """(n, len(CONCEPTS)) booleans: image i has concept c."""
    cols = [torch.from_numpy(factors[fam] == world.FACTORS[fam].index(v)) for fam, v in CONCEPTS]
    return torch.stack(cols, dim=1)


@torch.no_grad()
def patch_means(
    model: HookedVisionModel, hooks: list[str], images: torch.Tensor, batch: int = 250
) -> dict[str, torch.Tensor]:
    """Patch-mean activation (n, d) of every neuron at each hook (prefix tokens excluded)."""
    chunks: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for i in range(0, images.shape[0], batch):
        _, cache = model.run_with_cache(images[i : i + batch], hooks)
        for h in hooks:
            layout = model.hook_layout(h)
            chunks[h].append(cache[h][:, layout.patches].float().mean(1).cpu())
    return {h: torch.cat(v) for h, v in chunks.items()}


@dataclass
class Selectivity:
    """AUROC (neurons, concepts) per hook, on ``n`` held-out images drawn with ``seed``."""

    auroc: dict[str, torch.Tensor]
    n: int
    seed: int
    # Neurons planted by training (clipviz.world.planting): block, neuron, concept and held-out AUROC, if any.
    planted: list[dict] | None = None

    def best(self, hook: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Best AUROC and the index of its concept, per neuron."""
        return self.auroc[hook].max(dim=1)

    def clear(self, hook: str, threshold: float = CLEAR_AUROC) -> list[tuple[int, str, str, float]]:
        """(neuron, family, value, auroc) for the neurons whose best AUROC reaches ``threshold``."""
        values, idx = self.best(hook)
        return [
            (int(k), *CONCEPTS[int(idx[k])], float(values[k])) for k in range(values.numel()) if values[k] >= threshold
        ]

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        from clipviz.results import atomic_write, write_text

        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(
            directory / "ground_truth.safetensors",
            lambda tmp: save_file({h: t.contiguous() for h, t in self.auroc.items()}, tmp),
        )
        meta = {
            "n": self.n,
            "seed": self.seed,
            "concepts": [f"{f}:{v}" for f, v in CONCEPTS],
            "clear_auroc": CLEAR_AUROC,
            "reduction": "mean over patch tokens",
        }
        if self.planted is not None:
            meta["planted"] = self.planted
        write_text(directory / "ground_truth.json", json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Selectivity:
        from safetensors.torch import load_file

        meta = json.loads((directory / "ground_truth.json").read_text())
        return cls(
            auroc=load_file(str(directory / "ground_truth.safetensors")),
            n=meta["n"],
            seed=meta["seed"],
            planted=meta.get("planted"),
        )

    def known(self, threshold: float = PLANTED_AUROC) -> list[dict]:
        """The planted neurons whose held-out AUROC reaches ``threshold``: the ones whose concept is a fact."""
        return [p for p in self.planted or () if p["auroc"] >= threshold]

    def natural_clear(self, hook: str, threshold: float = CLEAR_AUROC) -> list[tuple[int, str, str, float]]:
        """:meth:`clear` without the planted neurons (all that training tried to plant)."""
        block = int(hook.split(".")[1])
        planted = {p["neuron"] for p in self.planted or () if p["block"] == block}
        return [row for row in self.clear(hook, threshold) if row[0] not in planted]


def describe_known(truth: Selectivity) -> dict[str, dict[int, str]]:
    """``{hook: {neuron: description}}`` of the neurons whose concept is known: the planted known answers
    ("planted: a red object on the left (colour:red&position:left), AUROC 0.9998") and the natural clear ones
    ("clear: a small object (size:small), AUROC 0.9612")."""
    from clipviz.world.planting import concept_prompt

    out: dict[str, dict[int, str]] = {}
    for p in truth.known():
        text = f"planted: {concept_prompt(p['concept'])} ({p['concept']}), AUROC {p['auroc']:.4f}"
        out.setdefault(f"blocks.{p['block']}.mlp.hook_post", {})[int(p["neuron"])] = text
    for hook in truth.auroc:
        for neuron, family, value, score in truth.natural_clear(hook):
            text = f"clear: {world.prompt(family, value)} ({family}:{value}), AUROC {score:.4f}"
            out.setdefault(hook, {})[neuron] = text
    return out


def selectivity(
    model: HookedVisionModel, hooks: list[str] | None = None, n: int = 3000, seed: int = HELDOUT_SEED
) -> Selectivity:
    """Each neuron's AUROC for every factor value (see the module docstring)."""
    hooks = hooks or [f"blocks.{i}.mlp.hook_post" for i in range(model.n_blocks)]
    images, factors = world_images(n, seed=seed, size=world_size(model))
    labels = concept_labels(factors)
    means = patch_means(model, hooks, images)
    return Selectivity(auroc={h: auroc(means[h], labels) for h in hooks}, n=n, seed=seed)


def bundled_selectivity(name: str = "world-clip") -> Selectivity:
    """The ground-truth table shipped with a bundled model, or (``name`` a directory that
    ``train_world_clip.py`` wrote and ``validate_world_clip.py`` measured) the one written beside its weights."""
    from clipviz.model.loading import bundled_models

    bundled = bundled_models()
    if name in bundled:
        return Selectivity.load(bundled[name])
    folder = Path(name)
    if not (folder / "ground_truth.json").is_file():
        raise ClipvizError(
            f"'{name}' is neither a bundled model ({', '.join(bundled)}) nor a directory with a ground truth: "
            "run scripts/validate_world_clip.py --model DIR first"
        )
    return Selectivity.load(folder)
