"""Study ``frequency``: how much does the model's accuracy rely on low versus high spatial frequencies?

Claim tested (arXiv:2212.06727, Sec. 6): ViTs, like CNNs, detect background features, but they rely far less on
high-frequency information than CNNs: their accuracy holds up under low-pass filtering and drops under high-pass
filtering.

The probe images are filtered in the Fourier domain with an ideal radial mask at each ``cutoff`` (a fraction of
the Nyquist frequency, per channel): ``low-pass`` keeps the frequencies at or below it, ``high-pass`` those above
it plus the mean (DC) of each channel, so the image keeps its average colour. Accuracy per task (zero-shot against
the task's class prompts for CLIP-like models, the class logits otherwise) on the clean and filtered images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from clipviz.analysis.studies.common import Predictor, StudyResult, accuracies, accuracy_tasks, new_figure, progress

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

CUTOFFS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)


def radial_filter(images: torch.Tensor, cutoff: float, kind: str) -> torch.Tensor:
    """Ideal low-pass (``kind="low"``) or high-pass (``"high"``, keeping the DC term) filter of (n, 3, H, W)
    images at ``cutoff`` (fraction of the Nyquist frequency); the result is clamped to [0, 1]."""
    h, w = images.shape[-2:]
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.fftfreq(w)[None, :]
    radius = (fx**2 + fy**2).sqrt() / 0.5
    keep = radius <= cutoff if kind == "low" else (radius > cutoff) | (radius == 0)
    spectrum = torch.fft.fft2(images.float())
    return torch.fft.ifft2(spectrum * keep.to(images.device)).real.clamp(0, 1)


@dataclass
class FrequencyResult(StudyResult):
    study = "frequency"
    claim = "ViTs rely far less on high-frequency information than on low frequencies"
    tasks: list[str]
    chance: dict
    clean: dict  # task -> accuracy
    cutoffs: list[float]
    low_pass: list[dict]  # per cutoff: task -> accuracy
    high_pass: list[dict]

    def _mean(self, row: dict) -> float:
        return sum(row.values()) / len(row)

    def summary(self) -> dict:
        low = [self._mean(r) for r in self.low_pass]
        high = [self._mean(r) for r in self.high_pass]
        # Low-pass at c keeps the frequencies <= c, high-pass those > c: at half the Nyquist frequency each keeps
        # one half of the band, so the two accuracies there say which half the model relies on more.
        half = min(range(len(self.cutoffs)), key=lambda k: abs(self.cutoffs[k] - 0.5))
        return {
            "clean_mean": self._mean(self.clean),
            "chance_mean": self._mean(self.chance),
            "low_pass_mean": dict(zip(map(str, self.cutoffs), low, strict=True)),
            "high_pass_mean": dict(zip(map(str, self.cutoffs), high, strict=True)),
            "low_pass_auc": sum(low) / len(low),
            "high_pass_auc": sum(high) / len(high),
            "split_cutoff": self.cutoffs[half],
            "low_half_accuracy": low[half],
            "high_half_accuracy": high[half],
            "relies_more_on_low_frequencies": low[half] > high[half],
        }

    def figure(self):
        fig, axes = new_figure(1, 2)
        ax, bx = axes
        low = [self._mean(r) for r in self.low_pass]
        high = [self._mean(r) for r in self.high_pass]
        ax.plot(self.cutoffs, low, "o-", label="low-pass (keep <= cutoff)")
        ax.plot(self.cutoffs, high, "s-", label="high-pass (keep > cutoff, + DC)")
        ax.axhline(self._mean(self.clean), color="k", lw=0.8, label="clean")
        ax.axhline(self._mean(self.chance), color="grey", ls="--", label="chance")
        ax.set(
            xlabel="cutoff (fraction of Nyquist)",
            ylabel="mean accuracy over tasks",
            ylim=(0, 1.05),
            title="accuracy under frequency filtering",
        )
        ax.legend(fontsize=8)
        for k, task in enumerate(self.tasks):
            bx.plot(self.cutoffs, [r[task] for r in self.low_pass], "-", color=f"C{k}", label=task)
            bx.plot(self.cutoffs, [r[task] for r in self.high_pass], "--", color=f"C{k}")
        bx.set(
            xlabel="cutoff (solid: low-pass, dashed: high-pass)", ylabel="accuracy", ylim=(0, 1.05), title="per task"
        )
        bx.legend(fontsize=7)
        fig.suptitle(f"frequency: {self.model} on {self.dataset}", fontsize=10)
        return fig


def frequency(
    model: HookedVisionModel, probe, *, cutoffs=CUTOFFS, batch: int = 128, progress_bar: bool = True
) -> FrequencyResult:
    """Run the ``frequency`` study (see the module docstring)."""
    tasks = accuracy_tasks(model, probe)
    predictors = [Predictor(model, t) for t in tasks]
    bar = progress(1 + 2 * len(cutoffs), "frequency", progress_bar)
    clean = accuracies(model, predictors, probe.images, batch)
    bar.update(1)
    low, high = [], []
    for c in cutoffs:
        for kind, rows in (("low", low), ("high", high)):
            rows.append(accuracies(model, predictors, radial_filter(probe.images, c, kind), batch))
            bar.update(1)
    bar.close()
    return FrequencyResult(
        model=model.spec,
        dataset=probe.name,
        settings={"images": len(probe), "filter": "ideal radial mask per channel, high-pass keeps DC", "batch": batch},
        tasks=[t.name for t in tasks],
        chance={t.name: t.chance for t in tasks},
        clean=clean,
        cutoffs=list(cutoffs),
        low_pass=low,
        high_pass=high,
    )
