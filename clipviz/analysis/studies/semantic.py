"""Study ``semantic``: do the neurons respond to semantic concepts or to low-level visual statistics?

Claim tested (arXiv:2212.06727, Sec. 5): neurons of language-supervised ViTs (CLIP) respond to semantic concepts
("features ... that correspond to semantic concepts" such as morbidity or music) rather than to visual features,
unlike ViTs trained on class labels.

Per MLP neuron (``blocks.{i}.mlp.hook_post``, mean over patch tokens), over the probe images:

* ``r2_semantic``: cross-validated R^2 of a ridge regression of the neuron's response on the images' *semantic*
  features: the data set's concepts (for ``world:N`` the true factors, one-hot: colour, shape, texture, size,
  position, background), else the words of their captions, else their class labels;
* ``r2_visual``: the same on *low-level visual statistics* of the images: colour histograms (per channel and
  joint), channel means and spreads, the radial power spectrum (frequency content), gradient-magnitude and
  orientation histograms (texture) and the coarse layout (on a 4x4 grid, how far the pixels depart from the image's
  mean colour: where the content is).

A neuron is ``semantic`` when ``r2_semantic`` exceeds ``r2_visual`` by ``margin``, ``visual`` in the opposite
case, ``mixed`` when both explain it (at least ``min_r2``) within the margin, ``unexplained`` otherwise. Each
neuron also gets the concept most over-represented among its ``top_k`` examples (``top_concept``: the semantic
feature with the largest excess of its mean over the top examples above its mean over all images). On the world,
colour is both a factor and a pixel statistic, so colour neurons are expected to be ``mixed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from clipviz.analysis.studies.common import StudyResult, chunks, collect, cv_r2, new_figure, progress
from clipviz.errors import ClipvizError

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

LABELS = ("semantic", "visual", "mixed", "unexplained")


def visual_statistics(images: torch.Tensor, batch: int = 256) -> tuple[np.ndarray, list[str]]:
    """Low-level statistics (n, f) of images (n, 3, H, W) in [0, 1]: colour, frequency and texture."""
    rows = [_visual(images[part].float()) for part in chunks(images.shape[0], batch)]
    names = (
        [f"hist_{c}{b}" for c in "rgb" for b in range(8)]
        + [f"joint_{k}" for k in range(64)]
        + [f"mean_{c}" for c in "rgb"]
        + [f"std_{c}" for c in "rgb"]
        + [f"power_band{k}" for k in range(8)]
        + [f"gradient_mag{k}" for k in range(8)]
        + [f"gradient_orient{k}" for k in range(8)]
        + ["local_variance"]
    )
    return torch.cat(rows).numpy(), names


def _visual(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    flat = x.flatten(2)  # (n, 3, HW)
    bins = (flat * 8).long().clamp(0, 7)
    hist = F.one_hot(bins, 8).float().mean(2).flatten(1)  # (n, 24)
    q = (flat * 4).long().clamp(0, 3)
    joint = F.one_hot(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], 64).float().mean(1)  # (n, 64)
    stats = torch.cat([flat.mean(2), flat.std(2)], 1)  # (n, 6)
    grey = x.mean(1)
    power = torch.fft.fftshift(torch.fft.fft2(grey - grey.mean((1, 2), keepdim=True)).abs() ** 2, dim=(-2, -1))
    h, w = grey.shape[-2:]
    fy = torch.fft.fftshift(torch.fft.fftfreq(h))[:, None]
    fx = torch.fft.fftshift(torch.fft.fftfreq(w))[None, :]
    radius = (fx**2 + fy**2).sqrt() / 0.5
    band = (radius.clamp(max=0.999) * 8).long().flatten()
    spectrum = torch.zeros(n, 8).index_add_(1, band, power.flatten(1))
    spectrum = torch.log(spectrum / spectrum.sum(1, keepdim=True).clamp(min=1e-12) + 1e-6)
    gx = grey[:, 1:-1, 2:] - grey[:, 1:-1, :-2]
    gy = grey[:, 2:, 1:-1] - grey[:, :-2, 1:-1]
    mag = (gx**2 + gy**2).sqrt().flatten(1)
    mag_hist = F.one_hot((mag / 0.1).long().clamp(0, 7), 8).float().mean(1)
    angle = torch.atan2(gy, gx).flatten(1) % np.pi
    orient = torch.zeros(n, 8).scatter_add_(1, (angle / np.pi * 8).long().clamp(0, 7), mag)
    orient = orient / orient.sum(1, keepdim=True).clamp(min=1e-12)
    local = F.avg_pool2d(grey[:, None] ** 2, 3, 1) - F.avg_pool2d(grey[:, None], 3, 1) ** 2
    # Where the image departs from its mean colour, on a 4x4 grid: the coarse spatial layout of its content.
    deviation = (x - x.mean((2, 3), keepdim=True)).abs().mean(1, keepdim=True)
    layout = F.adaptive_avg_pool2d(deviation, 4).flatten(1)
    return torch.cat(
        [hist, joint, stats, spectrum, mag_hist, orient, local.flatten(1).mean(1, keepdim=True), layout], 1
    )


def classify(r2_sem: torch.Tensor, r2_vis: torch.Tensor, margin: float, min_r2: float) -> list[str]:
    out = []
    for s, v in zip(r2_sem.tolist(), r2_vis.tolist(), strict=True):
        if max(s, v) < min_r2:
            out.append("unexplained")
        elif s >= v + margin:
            out.append("semantic")
        elif v >= s + margin:
            out.append("visual")
        else:
            out.append("mixed")
    return out


@dataclass
class SemanticResult(StudyResult):
    study = "semantic"
    claim = (
        "neurons of language-supervised ViTs (CLIP) respond to semantic concepts rather than to low-level "
        "visual features"
    )
    blocks: list[int]
    semantic_features: str  # what the semantic features were: concepts, caption words or labels
    fractions: list[dict]  # per block: label -> share of neurons
    mean_r2_semantic: list[float]
    mean_r2_visual: list[float]
    neurons: list[dict]  # block, neuron, r2_semantic, r2_visual, label, top_concept, top_concept_rate

    def summary(self) -> dict:
        total = {k: sum(f[k] for f in self.fractions) / len(self.fractions) for k in LABELS}
        last = self.fractions[-1]
        return {
            "fraction_all_blocks": total,
            "fraction_last_block": last,
            "semantic_over_visual_last_block": last["semantic"] > last["visual"],
            "semantic_features": self.semantic_features,
        }

    def label_of(self, block: int, neuron: int) -> str:
        for row in self.neurons:
            if row["block"] == block and row["neuron"] == neuron:
                return row["label"]
        raise KeyError((block, neuron))

    def figure(self):
        fig, (ax, bx) = new_figure(1, 2)
        bottom = np.zeros(len(self.blocks))
        colours = {"semantic": "C0", "visual": "C3", "mixed": "C4", "unexplained": "0.8"}
        for label in LABELS:
            share = np.array([f[label] for f in self.fractions])
            ax.bar(self.blocks, share, bottom=bottom, color=colours[label], label=label)
            bottom += share
        ax.set(xlabel="block", ylabel="share of MLP neurons", ylim=(0, 1), title="what explains each neuron")
        ax.legend(fontsize=8, loc="lower left")
        for block in self.blocks:
            rows = [r for r in self.neurons if r["block"] == block]
            bx.scatter(
                [r["r2_visual"] for r in rows], [r["r2_semantic"] for r in rows], s=4, alpha=0.5, label=f"block {block}"
            )
        bx.plot([0, 1], [0, 1], color="grey", lw=0.8)
        bx.set(
            xlabel="R² from visual statistics",
            ylabel=f"R² from {self.semantic_features}",
            xlim=(-0.05, 1),
            ylim=(-0.05, 1),
            title="per neuron (cross-validated)",
        )
        bx.legend(fontsize=7, markerscale=3)
        ax.set_xticks(self.blocks)
        fig.suptitle(f"semantic: {self.model} on {self.dataset}", fontsize=10)
        return fig


def semantic(
    model: HookedVisionModel,
    probe,
    *,
    neurons: int | None = None,
    top_k: int = 16,
    margin: float = 0.1,
    min_r2: float = 0.25,
    folds: int = 3,
    batch: int = 64,
    seed: int = 0,
    hooks: list[str] | None = None,
    progress_bar: bool = True,
) -> SemanticResult:
    """Run the ``semantic`` study (see the module docstring) on the first ``neurons`` of every block (all by
    default) or on the MLP hooks ``hooks``."""
    sem, sem_names, kind = probe.semantic_features()
    if sem.shape[1] == 0:
        raise ClipvizError(f"probe set '{probe.name}' gives no semantic features (captions too short or too few)")
    if len(probe) < 3 * folds:
        raise ClipvizError(f"the semantic study needs at least {3 * folds} images, got {len(probe)}")
    hooks = hooks or [f"blocks.{i}.mlp.hook_post" for i in range(model.n_blocks)]
    layouts = {h: model.layout(model.hook_point(h).block) for h in hooks}  # any layout: only the patch mean
    bar = progress(-(-len(probe) // batch) + len(hooks) + 1, "semantic", progress_bar)
    vis, _ = visual_statistics(probe.images)
    bar.update(1)

    def patch_mean(h, act):
        act = act[:, layouts[h].patches].mean(1)
        return act[:, :neurons] if neurons else act

    responses = collect(model, probe.images, hooks, batch, reduce=patch_mean, bar=bar)
    rows, fractions, mean_sem, mean_vis, blocks = [], [], [], [], []
    sem_t = torch.from_numpy(sem)
    for h in hooks:
        y = responses[h]
        r2_s = cv_r2(sem, y, folds=folds, seed=seed).clamp(min=0)
        r2_v = cv_r2(vis, y, folds=folds, seed=seed).clamp(min=0)
        labels = classify(r2_s, r2_v, margin, min_r2)
        k = min(top_k, y.shape[0])
        top = y.topk(k, dim=0).indices  # (k, neurons)
        lift = sem_t[top].mean(0) - sem_t.mean(0)  # (neurons, c)
        best = lift.argmax(1)
        rate = sem_t[top].mean(0).gather(1, best[:, None])[:, 0]
        block = model.hook_point(h).block
        blocks.append(block)
        for j in range(y.shape[1]):
            rows.append(
                {
                    "block": block,
                    "neuron": j,
                    "r2_semantic": float(r2_s[j]),
                    "r2_visual": float(r2_v[j]),
                    "label": labels[j],
                    "top_concept": sem_names[int(best[j])] if sem_names else int(best[j]),
                    "top_concept_rate": float(rate[j]),
                }
            )
        fractions.append({lab: labels.count(lab) / len(labels) for lab in LABELS})
        mean_sem.append(float(r2_s.mean()))
        mean_vis.append(float(r2_v.mean()))
        bar.update(1)
    bar.close()
    return SemanticResult(
        model=model.spec,
        dataset=probe.name,
        settings={
            "images": len(probe),
            "neurons_per_block": neurons,
            "top_k": top_k,
            "margin": margin,
            "min_r2": min_r2,
            "folds": folds,
            "seed": seed,
            "semantic_dims": int(sem.shape[1]),
            "visual_dims": int(vis.shape[1]),
            "response": "mean over patch tokens of mlp.hook_post",
        },
        blocks=blocks,
        semantic_features=kind,
        fractions=fractions,
        mean_r2_semantic=mean_sem,
        mean_r2_visual=mean_vis,
        neurons=rows,
    )
