"""transformers families that need more than ``pixel_values -> hidden states``: generative models with a vision
tower inside (LLaVA), SigLIP2 NaFlex (patches, mask and grid), ViTMAE (random masking), the timm wrapper (its own
image size) and configs without ``image_size`` (the image processor's size)."""

from __future__ import annotations

import torch
from torch import nn

from clipviz.model.backends.base import pair as _pair


def _is_generative(model: nn.Module) -> bool:
    """A vision-language generator (LLaVA & co., BLIP's captioning and question answering): clipviz runs only
    its vision tower."""
    return any(hasattr(model, a) for a in ("language_model", "lm_head", "text_decoder")) or hasattr(
        getattr(model, "model", None), "language_model"
    )


def _pooled(out, cls: bool = True):
    """The model's pooled output: its ``pooler_output``, the mean of a backbone's last feature map, or, from the
    last hidden state, the class token where the tower has one (``cls``) and the mean of its tokens where it has
    none (I-JEPA, a SigLIP or AIMv2 tower without its head): never a patch token taken for the image."""
    if getattr(out, "pooler_output", None) is not None:
        return out.pooler_output
    if getattr(out, "feature_maps", None):  # a backbone (DINOv2 / ViTPose ``*Backbone``): its last feature map
        last = out.feature_maps[-1]
        return last.mean((-2, -1)) if last.ndim == 4 else last.mean(1)
    hidden = getattr(out, "last_hidden_state", None)
    if not isinstance(hidden, torch.Tensor):
        from clipviz.errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"the output of the model ({type(out).__name__}) has no pooled output, hidden state or feature maps "
            "clipviz can read"
        )
    if hidden.ndim == 4:
        return hidden.mean((-2, -1))
    return hidden[:, 0] if cls else hidden.mean(1)


def _processor_size(processor) -> tuple[int, int] | None:
    """The input size the image processor produces: its crop where it crops, its resize where that is to a fixed
    height and width, else ``None`` (a shortest-edge resize without a crop follows the photo's shape). A
    ``crop_size`` a processor carries but does not apply (``do_center_crop=False``) is not its output."""
    crops = getattr(processor, "do_center_crop", True) is not False
    for attr in ("crop_size", "size") if crops else ("size",):
        size = getattr(processor, attr, None)
        size = size if isinstance(size, dict) else getattr(size, "__dict__", None)
        if size and size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
    return None


def _timm_wrapper(model: nn.Module, timm_model: nn.Module, facts: dict, processor) -> None:
    """transformers' TimmWrapper: image size, patch size and preprocessing come from the timm model, not 224, and
    its processor's ``data_config`` (the repo's saved ``pretrained_cfg``: mean, std, crop) is what the library
    feeds it, where the timm model's registry entry may say otherwise."""
    from clipviz.model.backends.preprocessing import timm_transform

    embed = getattr(timm_model, "patch_embed", None)
    cfg = getattr(timm_model, "pretrained_cfg", {}) or {}
    data = getattr(processor, "data_config", None)
    facts["image_size"] = _pair(getattr(embed, "img_size", None) or cfg.get("input_size", (3, 224, 224))[1:])
    facts["patch_size"] = _pair(getattr(embed, "patch_size", 16))
    facts["pil_transform"], stretch = timm_transform(timm_model, facts["image_size"], config=data)
    kept = tuple(note for note in facts["notes"] if not note.startswith("the image processor"))
    facts["notes"] = (*kept, stretch) if stretch else kept
    if data is not None:
        facts["mean"], facts["std"] = tuple(map(float, data["mean"])), tuple(map(float, data["std"]))
    facts["forward"] = lambda x: (
        _pooled(model(pixel_values=x)) if not hasattr(model, "classifier") else model(pixel_values=x).logits
    )


def _naflex(model: nn.Module, vision: nn.Module, vcfg, facts: dict) -> None:
    """SigLIP2 NaFlex takes patches with ``pixel_attention_mask`` and ``spatial_shapes``: clipviz feeds it one
    fixed square grid of ``num_patches`` patches (row-major, channels last within a patch, as its processor does).
    ``vision`` is the tower a vision-language model holds it as (LFM2-VL), whose pooled output is then clipviz's
    output; a SigLIP2 model of its own gives its image embedding."""
    import math

    p = int(vcfg.patch_size)
    side = math.isqrt(int(vcfg.num_patches))
    facts["image_size"], facts["patch_size"] = (side * p, side * p), (p, p)
    if vision is model:
        vision = getattr(model, "vision_model", model)

    def patches(x: torch.Tensor):
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), -1)
        mask = torch.ones(b, flat.shape[1], dtype=torch.long, device=x.device)
        shapes = torch.tensor([[h // p, w // p]] * b, dtype=torch.long, device=x.device)
        return {"pixel_values": flat, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    if hasattr(model, "get_image_features") and not _is_generative(model):

        def embed(x):
            out = model.get_image_features(**patches(x))
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        facts["forward"] = embed
    else:
        facts["forward"] = lambda x: _pooled(vision(**patches(x)))
    facts["pil_transform"] = None  # its processor returns patches at a varying size: clipviz resizes + crops
    # replaces any note on the processor's output: its transform is not used
    facts["notes"] = (f"NaFlex: run on a fixed {side}x{side} grid of patches (all patches valid)",)


def _no_masking(model: nn.Module, vision: nn.Module, facts: dict) -> None:
    """ViTMAE masks and shuffles patches at random on every call: clipviz's forward passes run with masking off
    (mask ratio 0) and the identity order, so the tokens are CLS then every patch in row-major order. The user's
    model keeps its own mask ratio outside them."""
    configs = list({id(c): c for c in (model.config, getattr(vision, "config", model.config))}.values())
    target = vision

    def forward(x: torch.Tensor):
        n = (x.shape[-2] // facts["patch_size"][0]) * (x.shape[-1] // facts["patch_size"][1])
        noise = torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], -1)
        ratios = [cfg.mask_ratio for cfg in configs]
        try:
            for cfg in configs:
                cfg.mask_ratio = 0.0
            return _pooled(target(pixel_values=x, noise=noise))
        finally:
            for cfg, ratio in zip(configs, ratios, strict=True):
                cfg.mask_ratio = ratio

    facts["forward"] = forward
    facts["notes"] = (*facts["notes"], "ViTMAE: random masking turned off (mask ratio 0, patches in their own order)")
