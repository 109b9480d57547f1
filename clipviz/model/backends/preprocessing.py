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
from clipviz.model.backends.base import pair


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


def pixel_scale(processor) -> float:
    """What the image processor multiplies 8-bit pixels by before normalising, relative to clipviz's [0, 1]
    pixels: 1 for the usual ``rescale_factor`` of 1/255, 2 for a factor of 2/255, 255 without rescaling. The
    model's input is ``(pixels * scale - mean) / std``, that is ``(pixels - mean / scale) / (std / scale)``."""
    if processor is None or not hasattr(processor, "do_rescale"):
        return 1.0
    factor = float(getattr(processor, "rescale_factor", 1 / 255)) if processor.do_rescale else 1.0
    return 255.0 * factor


def hf_transform(
    processor, size: tuple[int, int]
) -> tuple[Callable[[Image.Image], torch.Tensor] | None, str | None, tuple[int, int]]:
    """The transformers image processor's own resize / crop, with its normalisation (and any tiling,
    ``_TILING``) switched off and its rescale set to give [0, 1] pixels; a note on how clipviz departs from it
    (``None`` where it does not); and the size the model runs at: the processor's output where that is fixed,
    else ``size``.

    The processor is tried on a wide and a tall photo. Where its output follows the photo's shape (a
    shortest-edge resize without a crop, DPT's ``keep_aspect_ratio``), the output is fitted to the fixed ``size``
    by ``centre_fit``, never stretched; where it is fixed but squeezes a whole photo into it (a plain resize), each
    photo is centre-cropped to the model's aspect ratio first. Where it cannot give one image for a photo alone
    (ViTPose's needs person boxes; LLaVA-OneVision's any-resolution grid returns several crops), there is no
    transform and clipviz resizes and centre-crops photos itself: it never picks one of several crops."""
    if processor is None or not callable(processor):
        return None, None, size
    switches = {name: False for name in _TILING if getattr(processor, name, False)}
    if pixel_scale(processor) != 1.0:  # 0-255 or otherwise scaled pixels: clipviz's data are [0, 1]
        switches.update(do_rescale=True, rescale_factor=1 / 255)

    def images(image: Image.Image) -> torch.Tensor:
        out = processor(images=image, do_normalize=False, return_tensors="pt", **switches)["pixel_values"]
        return out[0] if out.ndim == 5 else out  # (images, 3, H, W) for the one photo

    side = max(size)
    wide, tall = (Image.new("RGB", shape, (128, 128, 128)) for shape in ((3 * side, 2 * side), (2 * side, 3 * side)))
    fallback = "clipviz resizes the shortest side and centre-crops photos itself"
    try:
        probes = [images(wide), images(tall)]
    except Exception as error:  # noqa: BLE001 - any failure means the processor cannot be used on photos alone
        first = (str(error).splitlines() or [""])[0][:120]
        return (
            None,
            f"the image processor cannot preprocess a photo alone ({type(error).__name__}: {first}); {fallback}",
            size,
        )
    for probe in probes:
        if probe.ndim != 4 or probe.shape[0] != 1 or probe.shape[1] != 3:
            return None, f"the image processor turns one photo into {tuple(probe.shape)} pixel values; {fallback}", size

    def fn(image: Image.Image) -> torch.Tensor:
        return images(image.convert("RGB"))[0].float()

    shape = tuple(probes[0].shape[-2:])
    if shape != tuple(probes[1].shape[-2:]):
        note = (
            f"the image processor keeps a photo's aspect ratio (a {wide.width}x{wide.height} photo becomes "
            f"{shape[1]}x{shape[0]}); clipviz runs at a fixed {size[1]}x{size[0]} and centre-crops its output"
        )
        return (lambda image: centre_fit(fn(image), size)), note, size
    fitted, note = keep_aspect(fn, shape, "the image processor")
    return fitted, note, shape


def keep_aspect(
    fn: Callable[[Image.Image], torch.Tensor], size: tuple[int, int], library: str
) -> tuple[Callable[[Image.Image], torch.Tensor], str | None]:
    """``fn`` (a library's transform to ``size``) as it is, or, where it squeezes a whole photo of another aspect
    ratio into ``size`` (a plain resize: transformers' SigLIP processor, open_clip's ``resize_mode="squash"``,
    timm's ``crop_mode="squash"``), with each photo centre-cropped to the model's aspect
    ratio first, and a note saying so: clipviz never stretches a photo, whatever the backend."""
    if not _stretches(fn, size):
        return fn, None
    note = (
        f"{library} resizes every photo to {size[1]}x{size[0]} without cropping (a stretch); clipviz centre-crops "
        "each photo to the model's aspect ratio first"
    )
    return (lambda image: fn(crop_to_aspect(image, size))), note


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
    """Whether ``fn`` squeezes a whole photo of another aspect ratio into ``size``. A photo four times wider than
    the model, white in its leftmost 3/8 and black elsewhere, and its negative: where ``fn`` stretches, the first
    comes out whiter than the second at the left of both the top and the middle rows (even after a crop of half
    the squeezed photo, timm's ``crop_pct`` 0.5). A centre crop cuts the band off (the negative is whiter there),
    a letterbox pads the top rows alike in both, whatever its fill colour."""
    h, w = size
    photo = np.zeros((2 * h, 8 * w, 3), dtype=np.uint8)
    photo[:, : 3 * w] = 255
    difference = fn(Image.fromarray(photo)) - fn(Image.fromarray(255 - photo))
    left = difference[:, :, : max(1, difference.shape[-1] // 16)]
    return bool(left[:, difference.shape[-2] // 20].mean() > 0.5 and left[:, difference.shape[-2] // 2].mean() > 0.5)


def open_clip_transform(model) -> tuple[Callable[[Image.Image], torch.Tensor], str | None]:
    """open_clip's own eval transform (its resize mode, interpolation and crop) with mean 0 and std 1, and
    ``keep_aspect``'s note where its resize would stretch photos. The transform sees the image in its own mode
    (open_clip converts to RGB after resizing: transparent pixels come out as its resize leaves them)."""
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
    return keep_aspect(transform, pair(model.visual.image_size), "open_clip's transform")


def timm_transform(
    model, image_size: tuple[int, int] | None = None, config: dict | None = None
) -> tuple[Callable[[Image.Image], torch.Tensor], str | None]:
    """timm's own eval transform (resize by ``crop_pct``, centre crop or pad, interpolation) with its normalisation
    undone, and ``keep_aspect``'s note where it would stretch photos. It runs with the model's own mean and std,
    which also set the colour timm pads with (``crop_mode="border"``), then ``x * std + mean`` gives the [0, 1]
    image back. ``config`` is a resolved data config to use instead of the model's (a transformers TimmWrapper's
    processor holds the repo's own)."""
    from timm.data import create_transform, resolve_data_config

    config = dict(config) if config is not None else resolve_data_config(model=model)
    if image_size is not None:
        config["input_size"] = (3, *image_size)
    transform = create_transform(**config, is_training=False)
    mean = torch.tensor(config["mean"], dtype=torch.float32).view(-1, 1, 1)  # 3 values, or 1 for all
    std = torch.tensor(config["std"], dtype=torch.float32).view(-1, 1, 1)

    def fn(image: Image.Image) -> torch.Tensor:
        return (transform(image.convert("RGB")) * std + mean).clamp(0, 1)

    return keep_aspect(fn, tuple(config["input_size"][1:]), "timm's transform")
