"""How many colour channels a model reads, and what clipviz hands a model that reads one (a grey model).

clipviz renders and reads RGB images. A model whose stem takes 3 channels gets them as they are; a model whose
stem takes 1 (a ViT trained on X-rays, on grey scans) gets each image's luminance (``clipviz.images.LUMA``), and
everything it is shown is made grey first: photos as they are read (``HookedVisionModel.preprocess_pil``), so that
example thumbnails are what the model saw, and feature visualizations as they are rendered, so that no colour
appears in a picture that the model never saw. Any other count (an image plus a trimap, a multispectral tower) is
refused: what its extra channels mean is not something clipviz can know.

The count is the model's own: its configuration's ``num_channels`` (transformers), else measured, as the channels
of the first convolution a pass on an RGB image reaches, where that convolution is handed the image itself.

>>> import torch
>>> from torch import nn
>>> stem = nn.Sequential(nn.Conv2d(1, 8, 4, stride=4), nn.Conv2d(8, 8, 1))
>>> input_channels(stem, stem, (16, 16))
1
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from clipviz.errors import UnsupportedModelError

#: The input channel counts clipviz can show a model images with.
READABLE = (1, 3)


class _Reached(Exception):
    """Raised by the first convolution a measuring pass reaches: the rest of the pass is not needed."""


def input_channels(root: nn.Module, forward: Callable, image_size: tuple[int, int]) -> int:
    """The channels of the model's input: ``root``'s configuration's ``num_channels`` where it states one (its
    vision configuration for a CLIP-like model), else those of the first convolution that ``forward`` on a blank
    RGB image of ``image_size`` hands the image itself (a patch embedding, a hybrid's stem); 3 where no convolution
    is handed the image (a linear patch embedding reads the RGB patches its processor makes, a stem that transforms
    the image first reads what it is given)."""
    config = getattr(root, "config", None)
    declared = getattr(getattr(config, "vision_config", None) or config, "num_channels", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    parameter = next(root.parameters(), None)
    image = torch.zeros(1, 3, *image_size, device=getattr(parameter, "device", None))
    image = image.to(getattr(parameter, "dtype", image.dtype))
    reached: list[int] = []

    def stop(module: nn.Conv2d, args) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].shape == image.shape:
            reached.append(int(module.in_channels))
        raise _Reached

    handles = [m.register_forward_pre_hook(stop) for m in root.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            forward(image)
    except _Reached:
        pass
    except Exception:  # noqa: BLE001 - a pass that fails before any convolution is the probe's to report
        pass
    finally:
        for handle in handles:
            handle.remove()
    return reached[0] if reached else 3


def readable_channels(root: nn.Module, forward: Callable, image_size: tuple[int, int]) -> int:
    """``input_channels``, refused in one line unless clipviz can show the model images with that many."""
    channels = input_channels(root, forward, image_size)
    if channels not in READABLE:
        raise UnsupportedModelError(
            f"the model takes {channels} input channels; clipviz shows models RGB images (3 channels) or grey ones "
            "(1 channel), and cannot know what the other channels hold"
        )
    return channels


def channel_statistics(
    channels: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation ``(mean, std)`` of a model with ``channels`` input channels, one value per channel, refused
    in one line where the model's preprocessing does not give one: a grey model whose processor states three
    different means was normalised with a value that cannot be told from them (timm's own resolver averages them,
    ``clipviz.model.backends.timm``; a transformers processor has no such rule)."""
    if channels == 3:
        return tuple(mean), tuple(std)
    out = []
    for name, values in (("mean", mean), ("std", std)):
        if len(set(values)) != 1:
            shown = ", ".join(f"{v:g}" for v in values)
            raise UnsupportedModelError(
                f"the model takes 1 input channel (grey images), but its preprocessing normalises 3 with {name} "
                f"({shown}): which value its grey input was normalised with cannot be told; give its processor one "
                "image_mean and image_std (timm: create_model(..., pretrained_cfg_overlay=dict(mean=(m,), "
                "std=(s,))))"
            )
        out.append((float(values[0]),))
    return out[0], out[1]


__all__ = ["READABLE", "channel_statistics", "input_channels", "readable_channels"]
