"""Conversions between PIL images and tensors, grids of images and heat-map overlays.

>>> import torch
>>> img = tensor_to_pil(torch.ones(3, 4, 4))
>>> img.size, img.getpixel((0, 0))
((4, 4), (255, 255, 255))
>>> float(pil_to_tensor(img).min())
1.0
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An image -> a float (3, H, W) tensor in [0, 1] at its own size (``fit_pil`` first for another size)."""
    array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def has_alpha(img: Image.Image) -> bool:
    """Whether ``img`` carries transparency (an alpha channel or a transparent palette / colour key)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def eight_bit(img: Image.Image) -> Image.Image:
    """``img`` with 8-bit channels. 16-bit greyscale (PIL mode ``I;16``, as 16-bit PNGs open) is scaled to 8 bits:
    PIL's ``convert`` would clip it at 255 and turn most of it white. 32-bit integer (``I``) and floating-point
    (``F``) images are refused: their value range is not known, and a guess would be a silently wrong picture.

    >>> ramp = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    >>> np.asarray(eight_bit(ramp)).tolist()
    [[0, 128, 255]]
    """
    from clipviz.errors import ClipvizError

    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):  # older PIL: a 16-bit PNG is "I"
        values = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.round(values / 257.0).astype(np.uint8), "L")
    if img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise ClipvizError(
            f"a {kind} image (PIL mode {img.mode}) has no agreed value range: save it with 8 or 16 bits per channel"
        )
    return img


def decoded(img: Image.Image) -> Image.Image:
    """A freshly opened image as clipviz keeps it: 8-bit (``eight_bit``), RGBA where it carries transparency (each
    backend flattens that its own way, ``to_rgb``), else RGB."""
    img = eight_bit(img)
    return img.convert("RGBA") if has_alpha(img) else img.convert("RGB")


def open_image(path: str | os.PathLike | BinaryIO) -> Image.Image:
    """The image file at ``path`` as clipviz keeps it (``decoded``), upright: its EXIF orientation applied, as
    image viewers, ``datasets`` and ``transformers.image_utils.load_image`` do, so a photo reads the same from a
    folder and from a dataset. Raises what PIL raises for a file it cannot read."""
    from PIL import ImageOps

    with Image.open(path) as img:
        img.load()
        return decoded(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image, on_white: bool = False) -> Image.Image:
    """``img`` as RGB: transparent pixels composited on white where ``on_white`` (what transformers' image
    processors do), else their colour channels kept (PIL's ``convert``, what timm users do; open_clip's transform
    is given the image as it is, since it converts after resizing).

    >>> clear = Image.new("RGBA", (1, 1), (0, 0, 0, 0))
    >>> to_rgb(clear).getpixel((0, 0)), to_rgb(clear, on_white=True).getpixel((0, 0))
    ((0, 0, 0), (255, 255, 255))
    """
    img = eight_bit(img)
    if not on_white or not has_alpha(img):
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def fit_pil(img: Image.Image, size: tuple[int, int], resample: int = Image.BICUBIC) -> Image.Image:
    """``img`` at exactly ``size`` (rows, columns), its aspect ratio kept: the shortest side resized to fit, then
    the centre cropped (a mask given the same call, with ``Image.NEAREST``, stays aligned with its image).

    >>> fit_pil(Image.new("RGB", (90, 30)), (16, 16)).size
    (16, 16)
    """
    h, w = size
    scale = max(h / img.height, w / img.width)
    rh, rw = max(h, round(img.height * scale)), max(w, round(img.width * scale))
    img = img.resize((rw, rh), resample)
    top, left = (rh - h) // 2, (rw - w) // 2
    return img.crop((left, top, left + w, top + h))


#: The weights of R, G and B in a grey level (ITU-R BT.601, PIL's ``convert("L")``).
LUMA = (0.299, 0.587, 0.114)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (..., 1, H, W): the grey level of each pixel (``LUMA``). A grey image (R = G = B) keeps its
    value, whatever weights a model's own conversion uses, as long as they sum to 1.

    >>> round(luminance(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)).item(), 6)
    0.299
    """
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * weights).sum(dim=-3, keepdim=True)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] -> an 8-bit RGB image."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(array)


#: Height in pixels of the caption strip under each image of a labelled grid.
LABEL_HEIGHT = 12


def grid(
    images: Sequence[Image.Image], columns: int = 8, pad: int = 2, labels: Sequence[str] | None = None
) -> Image.Image:
    """Images side by side in rows of ``columns`` (all resized to the first one's size), each with its label
    (e.g. its neuron id) written in a strip under it when ``labels`` are given.

    >>> g = grid([tensor_to_pil(torch.zeros(3, 8, 8))] * 3, columns=2, labels=["#1", "#2", "#3"])
    >>> strip = g.crop((2, 10, 10, 22))  # under the first image: its label, black on white
    >>> g.size, g.getpixel((2, 2)), min(lo for lo, _ in strip.getextrema()) < 128
    ((22, 46), (0, 0, 0), True)
    """
    if not images:
        raise ValueError("no images for a grid")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    from PIL import ImageDraw

    w, h = images[0].size
    cell = h + (LABEL_HEIGHT if labels is not None else 0)
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    canvas = Image.new("RGB", (cols * (w + pad) + pad, rows * (cell + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        x, y = pad + c * (w + pad), pad + r * (cell + pad)
        canvas.paste(img.convert("RGB").resize((w, h)), (x, y))
        if labels is not None:
            draw.text((x, y + h), labels[k], fill=(0, 0, 0))
    return canvas


#: The heat-map colour: cyan, which is none of the bundled world's colours, so a heat map is never read as an object.
HEAT_RGB = (0, 255, 255)


def overlay(image: Image.Image, heat: torch.Tensor, size: int = 128) -> Image.Image:
    """``image`` (what the model saw) with its patch activation map (normalised per image) as a cyan
    (``HEAT_RGB``) overlay, its longest side ``size`` and its aspect ratio kept: the map covers the whole image."""
    import torch.nn.functional as F

    scale = size / max(image.size)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    base = np.asarray(image.convert("RGB").resize((width, height), Image.NEAREST), dtype=np.float32) / 255
    h = heat.float()
    h = (h - h.min()) / (h.max() - h.min() + 1e-8)
    h = F.interpolate(h[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    tint = np.zeros_like(base)
    tint[...] = np.asarray(HEAT_RGB, dtype=np.float32) / 255
    mixed = base * (1 - 0.55 * h[..., None]) + tint * 0.55 * h[..., None]
    return Image.fromarray((mixed * 255).astype(np.uint8))
