"""Writing results to disk atomically (temporary name, then rename) and reading them back."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def write_png(path: Path, image: Image.Image) -> None:
    _atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] -> an 8-bit RGB image."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(array)


def grid(images: Sequence[Image.Image], columns: int = 8, pad: int = 2) -> Image.Image:
    """Images side by side in rows of ``columns`` (all resized to the first one's size)."""
    if not images:
        raise ValueError("no images for a grid")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    canvas = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        canvas.paste(img.convert("RGB").resize((w, h)), (pad + c * (w + pad), pad + r * (h + pad)))
    return canvas


def settings_id(settings: dict) -> str:
    """A short hash of the settings that determine a result (to skip finished work only when nothing changed)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("clipviz", "torch", "transformers", "open-clip-torch", "timm", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def overlay(image: Image.Image, heat: torch.Tensor, size: int = 128) -> Image.Image:
    """``image`` with its patch activation map (normalised per image) as a red overlay."""
    import torch.nn.functional as F

    base = np.asarray(image.convert("RGB").resize((size, size), Image.NEAREST), dtype=np.float32) / 255
    h = heat.float()
    h = (h - h.min()) / (h.max() - h.min() + 1e-8)
    h = F.interpolate(h[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    tint = np.zeros_like(base)
    tint[..., 0] = 1.0
    mixed = base * (1 - 0.55 * h[..., None]) + tint * 0.55 * h[..., None]
    return Image.fromarray((mixed * 255).astype(np.uint8))
