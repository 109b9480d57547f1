"""Study ``pooling``: how far does each block look, and does the last one pool globally?

Claim tested (arXiv:2212.06727, Sec. 4): the last block of a ViT behaves differently from the others: it mixes
information from all patches ("a learned global pooling"), while earlier blocks keep each patch's output tied to
its own input.

Two measurements per block, both in patch units on the model's patch grid:

* attention distance (``attn.hook_pattern``): for each patch query, the attention-weighted mean distance to the
  patch keys (attention renormalised over the patches), averaged over heads, queries and images;
  ``attention_ratio`` divides it by the distance under uniform attention (0: every patch attends to itself,
  1: uniform over the image). ``attention_to_prefix`` is the attention mass patches put on prefix tokens (CLS...).
* input-gradient locality: the gradient of a fixed random projection of the output token of patch ``q`` at
  ``blocks.{i}.hook_resid_post`` with respect to the input pixels, its squared norm summed per patch;
  ``gradient_self_share`` is the share of that energy inside patch ``q`` itself and ``gradient_ratio`` the
  energy-weighted mean distance from ``q`` divided by the same under a uniform spread (0: only its own pixels
  matter, 1: all pixels matter equally).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from clipviz.analysis.studies.common import StudyResult, chunks, grid_distances, hook_layout, new_figure, progress

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel


@dataclass
class PoolingResult(StudyResult):
    study = "pooling"
    claim = (
        "the last block acts as a learned global pooling: its outputs depend on all patches, while earlier "
        "blocks keep each patch's output local"
    )
    blocks: list[int]
    attention_distance: list[float | None]
    attention_ratio: list[float | None]
    attention_to_prefix: list[float | None]
    gradient_self_share: list[float]
    gradient_ratio: list[float]

    def summary(self) -> dict:
        out = {}
        for name in ("attention_ratio", "gradient_ratio", "gradient_self_share"):
            values = getattr(self, name)
            if values and all(v is not None for v in values):
                rest = values[:-1]
                out[f"{name}_last"] = values[-1]
                out[f"{name}_mean_before_last"] = sum(rest) / len(rest) if rest else None
        if "gradient_ratio_last" in out and out["gradient_ratio_mean_before_last"] is not None:
            out["last_block_most_global"] = bool(self.gradient_ratio[-1] >= max(self.gradient_ratio[:-1]))
        return out

    def figure(self):
        fig, (ax, bx) = new_figure(1, 2)
        if any(v is not None for v in self.attention_ratio):
            ax.plot(
                self.blocks,
                [v if v is not None else float("nan") for v in self.attention_ratio],
                "o-",
                label="attention distance / uniform",
            )
            ax.plot(
                self.blocks,
                [v if v is not None else float("nan") for v in self.attention_to_prefix],
                "s--",
                label="attention of patches to prefix tokens",
            )
        ax.plot(self.blocks, self.gradient_ratio, "^-", label="input-gradient distance / uniform")
        ax.set(xlabel="block", ylabel="ratio (0 local, 1 global)", ylim=(0, 1.05), title="how far each block looks")
        ax.legend(fontsize=8)
        bx.plot(self.blocks, self.gradient_self_share, "o-", color="C3")
        bx.set(
            xlabel="block",
            ylabel="share of input-gradient energy",
            ylim=(0, 1.05),
            title="output patch's dependence on its own input patch",
        )
        ax.set_xticks(self.blocks)
        bx.set_xticks(self.blocks)
        fig.suptitle(f"pooling: {self.model} on {self.dataset}", fontsize=10)
        return fig


@torch.no_grad()
def attention_distances(model: HookedVisionModel, images: torch.Tensor, batch: int = 32, bar=None):
    """Per block: mean attention distance of patch queries to patch keys, its ratio to uniform attention and the
    attention mass patches give to prefix tokens (``None`` where a block's pattern cannot be recomputed)."""
    layout = hook_layout(model, 0)
    dist = grid_distances(layout.grid).to(model.device)
    uniform = float(dist.mean())
    p0 = layout.n_prefix
    distance, ratio, prefix = [], [], []
    for block in range(model.n_blocks):
        hook = f"blocks.{block}.attn.hook_pattern"
        if hook not in model.hook_names(block):
            distance.append(None), ratio.append(None), prefix.append(None)
            continue
        total, mass, count = 0.0, 0.0, 0
        for part in chunks(images.shape[0], batch):
            _, cache = model.run_with_cache(images[part].to(model.device), [hook])
            a = cache[hook].float()[:, :, p0:, :]  # patch queries (B, H, P, N)
            to_patches = a[..., p0:]
            mass += float(a[..., :p0].sum(-1).sum())
            norm = to_patches / to_patches.sum(-1, keepdim=True).clamp(min=1e-12)
            total += float((norm * dist).sum(-1).sum())
            count += a.shape[0] * a.shape[1] * a.shape[2]
        distance.append(total / count)
        ratio.append(total / count / uniform)
        prefix.append(mass / count)
        if bar is not None:
            bar.update(1)
    return distance, ratio, prefix


def gradient_locality(model: HookedVisionModel, images: torch.Tensor, queries: int = 4, seed: int = 0, bar=None):
    """Per block: share of the input-gradient energy of a patch's output inside that patch, and the
    energy-weighted distance ratio (see the module docstring)."""
    layout = hook_layout(model, 0)
    gh, gw = layout.grid
    n_patch = gh * gw
    dist = grid_distances(layout.grid)
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(n_patch, generator=g)[:queries].tolist()
    d = model.d_model
    directions = torch.nn.functional.normalize(torch.randn(model.n_blocks, d, generator=g), dim=-1)
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(model.n_blocks)]
    x = images.to(model.device, dtype=torch.float32)
    ph, pw = x.shape[-2] // gh, x.shape[-1] // gw
    share = torch.zeros(model.n_blocks)
    ratio = torch.zeros(model.n_blocks)
    for cell in cells:
        pixels = x.clone().requires_grad_(True)
        _, cache = model.run_with_cache(pixels, hooks, detach=False)
        for block, hook in enumerate(hooks):
            token = cache[hook][:, layout.n_prefix + cell].float()  # (B, D)
            value = (token @ directions[block].to(token.device)).sum()
            (grad,) = torch.autograd.grad(value, pixels, retain_graph=block < len(hooks) - 1)
            energy = (grad.float() ** 2).sum(1)  # (B, H, W)
            energy = energy[:, : gh * ph, : gw * pw].reshape(-1, gh, ph, gw, pw).sum((2, 4)).flatten(1).cpu()
            energy = energy / energy.sum(1, keepdim=True).clamp(min=1e-30)
            share[block] += float(energy[:, cell].mean())
            ratio[block] += float((energy @ dist[cell]).mean() / dist[cell].mean())
        if bar is not None:
            bar.update(1)
    return (share / len(cells)).tolist(), (ratio / len(cells)).tolist()


def pooling(
    model: HookedVisionModel,
    probe,
    *,
    batch: int = 32,
    gradient_images: int = 16,
    queries: int = 4,
    seed: int = 0,
    progress_bar: bool = True,
) -> PoolingResult:
    """Run the ``pooling`` study (see the module docstring)."""
    bar = progress(model.n_blocks + queries, "pooling", progress_bar)
    distance, ratio, prefix = attention_distances(model, probe.images, batch, bar)
    share, gratio = gradient_locality(model, probe.images[:gradient_images], queries, seed, bar)
    bar.close()
    return PoolingResult(
        model=model.spec,
        dataset=probe.name,
        settings={
            "images": len(probe),
            "gradient_images": min(gradient_images, len(probe)),
            "queries": queries,
            "seed": seed,
            "batch": batch,
        },
        blocks=list(range(model.n_blocks)),
        attention_distance=distance,
        attention_ratio=ratio,
        attention_to_prefix=prefix,
        gradient_self_share=share,
        gradient_ratio=gratio,
    )
