"""Study ``background``: how much of the model's accuracy comes from the foreground and how much from the
background?

Claim tested (arXiv:2212.06727, Sec. 6): ViTs detect background features and use them, like CNNs: with only the
background a ViT-B/16 keeps some accuracy on ImageNet (15.7%), with only the foreground nearly all of it (86.6%,
full images 92.4%).

Three versions of each probe image: ``full``; ``foreground`` only (the background replaced); ``background`` only
(the foreground replaced). Removed pixels are filled with the image's mean background colour (per channel), so
neither the object's colour nor its silhouette survives in the background-only image. Masks come from the probe
set (exact for ``world:N``; a mask column for other data sets). Accuracy per task as in the ``frequency`` study.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from clipviz.analysis.studies.common import Predictor, StudyResult, accuracies, accuracy_tasks, new_figure, progress
from clipviz.errors import ClipvizError

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

CONDITIONS = ("full", "foreground", "background")


def split_images(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground-only, background-only) versions of images (n, 3, H, W) with foreground masks (n, H, W)."""
    fg = masks[:, None].to(images.device, torch.float32)
    bg = 1 - fg
    fill = (images * bg).sum((2, 3), keepdim=True) / bg.sum((2, 3), keepdim=True).clamp(min=1)
    return images * fg + fill * bg, images * bg + fill * fg


@dataclass
class BackgroundResult(StudyResult):
    study = "background"
    claim = "ViTs use background features: background-only images keep some accuracy, foreground-only most of it"
    tasks: list[str]
    chance: dict
    conditions: list[str]
    accuracy: dict  # condition -> task -> accuracy
    foreground_fraction: float

    def summary(self) -> dict:
        mean = {c: sum(self.accuracy[c].values()) / len(self.tasks) for c in self.conditions}
        chance = sum(self.chance.values()) / len(self.tasks)
        return {
            "mean": mean,
            "chance_mean": chance,
            "background_above_chance": {t: self.accuracy["background"][t] > self.chance[t] + 0.05 for t in self.tasks},
            "foreground_keeps_most": mean["foreground"] >= 0.8 * mean["full"],
        }

    def figure(self):
        import numpy as np

        fig, (ax,) = new_figure(1, 1, width=7)
        x = np.arange(len(self.tasks) + 1)
        width = 0.8 / len(self.conditions)
        for k, c in enumerate(self.conditions):
            values = [self.accuracy[c][t] for t in self.tasks]
            values.append(sum(values) / len(values))
            ax.bar(x + (k - 1) * width, values, width, label=c)
        chance = [self.chance[t] for t in self.tasks]
        chance.append(sum(chance) / len(chance))
        ax.scatter(x, chance, marker="_", s=400, color="k", label="chance", zorder=3)
        ax.set_xticks(x, [*self.tasks, "mean"])
        ax.set(ylabel="accuracy", ylim=(0, 1.05), title=f"background: {self.model} on {self.dataset}")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig


def background(model: HookedVisionModel, probe, *, batch: int = 128, progress_bar: bool = True) -> BackgroundResult:
    """Run the ``background`` study (see the module docstring); the probe set needs foreground masks."""
    if probe.masks is None:
        raise ClipvizError(
            f"probe set '{probe.name}' has no foreground masks: use world:N or a data set with a mask "
            "column (--mask-column)"
        )
    tasks = accuracy_tasks(model, probe)
    predictors = [Predictor(model, t) for t in tasks]
    fg, bg = split_images(probe.images, probe.masks)
    bar = progress(3, "background", progress_bar)
    acc = {}
    for name, images in zip(CONDITIONS, (probe.images, fg, bg), strict=True):
        acc[name] = accuracies(model, predictors, images, batch)
        bar.update(1)
    bar.close()
    return BackgroundResult(
        model=model.spec,
        dataset=probe.name,
        settings={"images": len(probe), "fill": "mean background colour per image and channel", "batch": batch},
        tasks=[t.name for t in tasks],
        chance={t.name: t.chance for t in tasks},
        conditions=list(CONDITIONS),
        accuracy=acc,
        foreground_fraction=float(probe.masks.float().mean()),
    )
