"""Each backend's own PIL preprocessing (resize + centre crop), without the normalisation clipviz applies itself.

Example mining, probe sets and zero-shot checks feed real photos through these, so a non-square photo is resized
and cropped exactly as the library would (``transformers`` image processor, ``open_clip`` or ``timm`` transform),
never stretched to a square. Visualization inputs are generated at the model's size and only normalised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from clipviz.images import pil_to_tensor


def fallback_transform(size: tuple[int, int]) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shortest side to fit ``size`` (bicubic), then centre-crop: the common default."""
    h, w = size

    def fn(image: Image.Image) -> torch.Tensor:
        scale = max(h / image.height, w / image.width)
        rh, rw = max(h, round(image.height * scale)), max(w, round(image.width * scale))
        image = image.resize((rw, rh), Image.BICUBIC)
        top, left = (rh - h) // 2, (rw - w) // 2
        return pil_to_tensor(image.crop((left, top, left + w, top + h)))

    return fn


def hf_transform(processor) -> Callable[[Image.Image], torch.Tensor] | None:
    """The transformers image processor's own resize / crop / rescale, with its normalisation switched off."""
    if processor is None or not callable(processor):
        return None

    def fn(image: Image.Image) -> torch.Tensor:
        out = processor(images=image.convert("RGB"), do_normalize=False, return_tensors="pt")
        return out["pixel_values"][0].float()

    return fn


def open_clip_transform(model) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's own eval transform (its resize mode, interpolation and crop) with mean 0 and std 1."""
    import open_clip
    from open_clip.transform import image_transform

    cfg = open_clip.get_model_preprocess_cfg(model)
    transform = image_transform(
        model.visual.image_size,
        is_train=False,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        resize_mode=cfg.get("resize_mode", "shortest"),
        interpolation=cfg.get("interpolation", "bicubic"),
        fill_color=cfg.get("fill_color", 0),
    )
    return lambda image: transform(image.convert("RGB"))


def timm_transform(model, image_size: tuple[int, int] | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """timm's own eval transform (resize by ``crop_pct``, centre crop, interpolation) with mean 0 and std 1."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config(model=model)
    config.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    if image_size is not None:
        config["input_size"] = (3, *image_size)
    transform = create_transform(**config, is_training=False)
    return lambda image: transform(image.convert("RGB"))
