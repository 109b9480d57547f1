"""Each backend's own PIL preprocessing (resize + centre crop), without the normalisation clipviz applies itself.

Example mining, probe sets and zero-shot checks feed real photos through these, so a non-square photo is resized
and cropped exactly as the library would (``transformers`` image processor, ``open_clip`` or ``timm`` transform),
never stretched to a square. Visualization inputs are generated at the model's size and only normalised.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from clipviz.images import fit_pil, pil_to_tensor


def fallback_transform(size: tuple[int, int]) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shortest side to fit ``size`` (bicubic), then centre-crop: the common default."""
    return lambda image: pil_to_tensor(fit_pil(image, size))


def centre_fit(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` (3, h, w) at exactly ``size``, its aspect ratio kept: resized only if it does not cover ``size``, then
    centre-cropped. For processors whose output follows the photo's shape (a shortest-edge resize without a crop,
    DPT's ``keep_aspect_ratio``): clipviz runs at one fixed size and never stretches a photo to it."""
    h, w = size
    if tuple(x.shape[-2:]) == (h, w):
        return x
    scale = max(h / x.shape[-2], w / x.shape[-1])
    if scale > 1 or min(x.shape[-2] - h, x.shape[-1] - w) > 0:
        rh, rw = max(h, round(x.shape[-2] * scale)), max(w, round(x.shape[-1] * scale))
        x = torch.nn.functional.interpolate(x[None], size=(rh, rw), mode="bicubic", antialias=True)[0].clamp(0, 1)
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[:, top : top + h, left : left + w]


#: Image-processor switches that split one photo into tiles (GOT-OCR2 / Aya / InternVL ``crop_to_patches``,
#: Idefics3 / SmolVLM ``do_image_splitting``): turned off, so that the processor gives one image per photo.
_TILING = ("crop_to_patches", "do_image_splitting")


def hf_transform(processor, size: tuple[int, int]) -> tuple[Callable[[Image.Image], torch.Tensor] | None, str | None]:
    """The transformers image processor's own resize / crop / rescale, with its normalisation (and any tiling,
    ``_TILING``) switched off, and a note on how clipviz departs from it (``None`` where it does not).

    The processor is tried once on a plain 3:2 photo. Where its output follows the photo's shape (a shortest-edge
    resize without a crop, DPT's ``keep_aspect_ratio``), the output is fitted to the model's fixed ``size`` by
    ``centre_fit``, never stretched. Where it cannot give one image for a photo alone (ViTPose's needs person
    boxes; LLaVA-OneVision's any-resolution grid returns several crops), there is no transform and clipviz resizes
    and centre-crops photos itself: it never picks one of several crops."""
    if processor is None or not callable(processor):
        return None, None
    switches = {name: False for name in _TILING if getattr(processor, name, False)}

    def images(image: Image.Image) -> torch.Tensor:
        out = processor(images=image, do_normalize=False, return_tensors="pt", **switches)["pixel_values"]
        return out[0] if out.ndim == 5 else out  # (images, 3, H, W) for the one photo

    photo = Image.new("RGB", (3 * max(size), 2 * max(size)), (128, 128, 128))
    fallback = "clipviz resizes the shortest side and centre-crops photos itself"
    try:
        probe = images(photo)
    except Exception as error:  # noqa: BLE001 - any failure means the processor cannot be used on photos alone
        first = (str(error).splitlines() or [""])[0][:120]
        return (
            None,
            f"the image processor cannot preprocess a photo alone ({type(error).__name__}: {first}); {fallback}",
        )
    if probe.ndim != 4 or probe.shape[0] != 1 or probe.shape[1] != 3:
        return None, f"the image processor turns one photo into {tuple(probe.shape)} pixel values; {fallback}"

    def fn(image: Image.Image) -> torch.Tensor:
        return images(image.convert("RGB"))[0].float()

    shape = tuple(probe.shape[-2:])
    if shape == tuple(size):
        if not _stretches(fn, size):
            return fn, None
        note = (
            f"the image processor resizes every photo to {size[1]}x{size[0]} without cropping (a stretch); clipviz "
            "centre-crops each photo to the model's aspect ratio first"
        )
        return (lambda image: fn(crop_to_aspect(image, size))), note
    note = (
        f"the image processor keeps a photo's aspect ratio (a {photo.width}x{photo.height} photo becomes "
        f"{shape[1]}x{shape[0]}); clipviz runs at a fixed {size[1]}x{size[0]} and centre-crops its output"
    )
    return (lambda image: centre_fit(fn(image), size)), note


def crop_to_aspect(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The centre of ``image`` with the aspect ratio of ``size`` (rows, columns), not resized."""
    h, w = size
    if image.width * h > image.height * w:  # wider than the model: keep the middle columns
        width = max(1, round(image.height * w / h))
        left = (image.width - width) // 2
        return image.crop((left, 0, left + width, image.height))
    height = max(1, round(image.width * h / w))
    top = (image.height - height) // 2
    return image.crop((0, top, image.width, top + height))


def _stretches(fn: Callable[[Image.Image], torch.Tensor], size: tuple[int, int]) -> bool:
    """Whether ``fn`` squeezes a whole photo of another aspect ratio into ``size``: a photo three times wider than
    the model, white in its leftmost eighth, comes out white at the left of both its top and its middle rows
    (a centre crop cuts the white band off; a letterbox shows it in the middle rows only)."""
    h, w = size
    photo = np.zeros((2 * h, 6 * w, 3), dtype=np.uint8)
    photo[:, : (6 * w) // 8] = 255
    out = fn(Image.fromarray(photo))
    left = out[:, :, : max(1, out.shape[-1] // 16)]
    return bool(left[:, out.shape[-2] // 20].mean() > 0.5 and left[:, out.shape[-2] // 2].mean() > 0.5)


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
    """timm's own eval transform (resize by ``crop_pct``, centre crop or pad, interpolation) with its normalisation
    undone. It runs with the model's own mean and std, which also set the colour timm pads with (``crop_mode=
    "border"``), then ``x * std + mean`` gives the [0, 1] image back."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config(model=model)
    if image_size is not None:
        config["input_size"] = (3, *image_size)
    transform = create_transform(**config, is_training=False)
    mean = torch.tensor(config["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config["std"], dtype=torch.float32).view(3, 1, 1)
    return lambda image: (transform(image.convert("RGB")) * std + mean).clamp(0, 1)
