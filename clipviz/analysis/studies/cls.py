"""Study ``cls``: is the CLS token isolated from the patch tokens until the last blocks?

Claim tested (arXiv:2212.06727, Sec. 4): the CLS token plays a minor role until the last layers; ViTs "use the
CLS token only in the last layers" (in their experiment, keeping CLS alone after block ``l`` is useless until the
final blocks).

Per block, from ``attn.hook_pattern`` (mean over heads, images):

* ``cls_isolation``: the attention mass of the CLS query on prefix tokens (itself, and registers or distillation
  tokens if any), i.e. one minus its attention to patches; 1 means the CLS token reads nothing from the patches.
* ``cls_self``: its attention to itself; ``patch_to_cls``: the mean attention patch queries give the CLS token.

And the effect of ablating the CLS token at each block: the CLS token at ``blocks.{i}.hook_resid_pre`` is
replaced by its mean over the probe images (a mean ablation, so no out-of-distribution value enters); we report
the relative change ``||patches' - patches|| / ||patches||`` of the patch tokens at the same block's output
(``ablation_effect_block``) and at the last block's output (``ablation_effect_final``). Block 0's effect is 0 by
construction: the CLS token entering block 0 is the same learned vector for every image.

And the paper's own experiment, when the probe set has labelled tasks and the model has a head that reads the CLS
token (CLIP-like models, classifiers): ``cls_alone_accuracy[l]`` is the mean accuracy over the tasks when the patch
tokens are dropped at the input of block ``l`` (the hook returns the prefix tokens only, so blocks ``l..`` see the
CLS token alone); ``full_accuracy`` is the accuracy of the unchanged model. Low values until the last blocks mean the
CLS token gathers the image's information only there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from clipviz.analysis.studies.common import (
    Predictor,
    StudyResult,
    accuracies,
    chunks,
    hook_layout,
    new_figure,
    progress,
)
from clipviz.errors import ClipvizError

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel


@dataclass
class ClsResult(StudyResult):
    study = "cls"
    claim = "the CLS token is isolated from the patch tokens until the last blocks"
    blocks: list[int]
    cls_isolation: list[float | None]
    cls_self: list[float | None]
    patch_to_cls: list[float | None]
    ablation_effect_block: list[float]
    ablation_effect_final: list[float]
    cls_alone_accuracy: list[float] | None = None
    full_accuracy: float | None = None
    chance_accuracy: float | None = None

    def summary(self) -> dict:
        iso = [v for v in self.cls_isolation if v is not None]
        out = {}
        if iso:
            out.update(
                cls_isolation_first=iso[0],
                cls_isolation_last=iso[-1],
                cls_isolation_max=max(iso),
                cls_isolation_min=min(iso),
                isolated_until_last=bool(len(iso) > 1 and min(iso[:-1]) > 0.5 and iso[-1] < min(iso[:-1])),
            )
        out["ablation_effect_final_max"] = max(self.ablation_effect_final)
        if self.cls_alone_accuracy:
            out.update(
                full_accuracy=self.full_accuracy,
                chance_accuracy=self.chance_accuracy,
                cls_alone_from_last_block=self.cls_alone_accuracy[-1],
                cls_alone_from_first_block=self.cls_alone_accuracy[0],
            )
        return out

    def figure(self):
        fig, (ax, bx, cx) = new_figure(1, 3, width=4.4)
        nan = float("nan")
        ax.plot(
            self.blocks,
            [nan if v is None else v for v in self.cls_isolation],
            "o-",
            label="CLS attention to prefix (isolation)",
        )
        ax.plot(self.blocks, [nan if v is None else v for v in self.cls_self], "s--", label="CLS attention to itself")
        ax.plot(
            self.blocks, [nan if v is None else v for v in self.patch_to_cls], "^-", label="patches' attention to CLS"
        )
        ax.set(xlabel="block", ylabel="attention mass", ylim=(0, 1.05), title="CLS token vs patches")
        ax.legend(fontsize=8)
        bx.plot(self.blocks, self.ablation_effect_block, "o-", label="at that block's output")
        bx.plot(self.blocks, self.ablation_effect_final, "s-", label="at the last block's output")
        bx.set(
            xlabel="block where CLS is mean-ablated",
            ylabel="relative change of patch tokens",
            title="effect of ablating CLS on the patches",
        )
        bx.legend(fontsize=8)
        if self.cls_alone_accuracy:
            cx.plot(self.blocks, self.cls_alone_accuracy, "o-", label="CLS alone from this block on")
            cx.axhline(self.full_accuracy, color="k", lw=0.8, label="full model")
            cx.axhline(self.chance_accuracy, color="grey", ls="--", label="chance")
            cx.legend(fontsize=8)
        cx.set(
            xlabel="block where the patch tokens are dropped",
            ylabel="mean accuracy over tasks",
            ylim=(0, 1.05),
            title="CLS token alone (paper's test)",
        )
        for axis in (ax, bx, cx):
            axis.set_xticks(self.blocks)
        fig.suptitle(f"cls: {self.model} on {self.dataset}", fontsize=10)
        return fig


@torch.no_grad()
def cls_attention(model: HookedVisionModel, images: torch.Tensor, batch: int = 32, bar=None):
    layout = hook_layout(model, 0)
    c, p0 = layout.prefix.index("cls"), layout.n_prefix
    iso, own, back = [], [], []
    for block in range(model.n_blocks):
        hook = f"blocks.{block}.attn.hook_pattern"
        if hook not in model.hook_names(block):
            iso.append(None), own.append(None), back.append(None)
            continue
        s_iso = s_self = s_back = 0.0
        n = 0
        for part in chunks(images.shape[0], batch):
            _, cache = model.run_with_cache(images[part].to(model.device), [hook])
            a = cache[hook].float().mean(1)  # (B, N, N)
            s_iso += float(a[:, c, :p0].sum())
            s_self += float(a[:, c, c].sum())
            s_back += float(a[:, p0:, c].mean(1).sum())
            n += a.shape[0]
        iso.append(s_iso / n), own.append(s_self / n), back.append(s_back / n)
        if bar is not None:
            bar.update(1)
    return iso, own, back


@torch.no_grad()
def cls_ablation(model: HookedVisionModel, images: torch.Tensor, batch: int = 32, bar=None):
    """Relative change of the patch tokens (at the block's output and at the last block's) when CLS is
    mean-ablated at the input of each block."""
    layout = hook_layout(model, 0)
    c, patches = layout.prefix.index("cls"), layout.patches
    last = f"blocks.{model.n_blocks - 1}.hook_resid_post"
    pre = [f"blocks.{i}.hook_resid_pre" for i in range(model.n_blocks)]
    post = [f"blocks.{i}.hook_resid_post" for i in range(model.n_blocks)]
    base: dict[str, list[torch.Tensor]] = {h: [] for h in pre + post}
    for part in chunks(images.shape[0], batch):
        _, cache = model.run_with_cache(images[part].to(model.device), pre + post)
        for h in pre:
            base[h].append(cache[h][:, c].float().cpu())
        for h in post:
            base[h].append(cache[h][:, patches].float().cpu())
    base = {h: torch.cat(v) for h, v in base.items()}
    local, final = [], []
    for block in range(model.n_blocks):
        mean_cls = base[pre[block]].mean(0)
        num_local = num_final = 0.0

        def ablate(act, point, mean_cls=mean_cls):
            act = act.clone()
            act[:, c] = mean_cls.to(act)
            return act

        changed: dict[str, list[torch.Tensor]] = {post[block]: [], last: []}
        for part in chunks(images.shape[0], batch):
            with model.hooks([(pre[block], ablate)]):
                _, cache = model.run_with_cache(images[part].to(model.device), [post[block], last])
            for h in changed:
                changed[h].append(cache[h][:, patches].float().cpu())
        num_local = float((torch.cat(changed[post[block]]) - base[post[block]]).norm() / base[post[block]].norm())
        num_final = float((torch.cat(changed[last]) - base[last]).norm() / base[last].norm())
        local.append(num_local)
        final.append(num_final)
        if bar is not None:
            bar.update(1)
    return local, final


def cls_alone(model: HookedVisionModel, probe, batch: int = 32, bar=None) -> tuple[list[float], float, float]:
    """Mean accuracy over the probe's tasks with the patch tokens dropped at the input of each block, the full
    model's, and chance."""
    n_prefix = hook_layout(model, 0).n_prefix
    predictors = [Predictor(model, t) for t in probe.tasks]

    def mean(acc: dict) -> float:
        return sum(acc.values()) / len(acc)

    full = mean(accuracies(model, predictors, probe.images, batch))
    alone = []
    for block in range(model.n_blocks):
        with model.hooks([(f"blocks.{block}.hook_resid_pre", lambda act, point: act[:, :n_prefix])]):
            alone.append(mean(accuracies(model, predictors, probe.images, batch)))
        if bar is not None:
            bar.update(1)
    return alone, full, sum(t.chance for t in probe.tasks) / len(probe.tasks)


def _has_head(model: HookedVisionModel) -> bool:
    return model.is_clip or model.backend.output_kind == "logits"


def cls(
    model: HookedVisionModel, probe, *, batch: int = 32, ablation_images: int = 128, progress_bar: bool = True
) -> ClsResult:
    """Run the ``cls`` study (see the module docstring); the model needs a CLS token."""
    layout = hook_layout(model, 0)
    if "cls" not in layout.prefix:
        raise ClipvizError(
            f"model '{model.spec}' has no CLS token (prefix tokens: {list(layout.prefix) or 'none'}): "
            "the cls study needs one"
        )
    with_head = bool(probe.tasks) and _has_head(model)
    bar = progress((3 if with_head else 2) * model.n_blocks, "cls", progress_bar)
    iso, own, back = cls_attention(model, probe.images, batch, bar)
    local, final = cls_ablation(model, probe.images[:ablation_images], batch, bar)
    alone, full, chance = cls_alone(model, probe, batch, bar) if with_head else (None, None, None)
    bar.close()
    return ClsResult(
        model=model.spec,
        dataset=probe.name,
        settings={
            "images": len(probe),
            "ablation_images": min(ablation_images, len(probe)),
            "ablation": "CLS at hook_resid_pre replaced by its probe mean",
            "batch": batch,
        },
        blocks=list(range(model.n_blocks)),
        cls_isolation=iso,
        cls_self=own,
        patch_to_cls=back,
        ablation_effect_block=local,
        ablation_effect_final=final,
        cls_alone_accuracy=alone,
        full_accuracy=full,
        chance_accuracy=chance,
    )
