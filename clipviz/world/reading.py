"""A person's reading of an image in the world's terms: which world colour it shows and where what stands out is.

Used to score visualizations of colour and position neurons (``scripts/score_recipes.py``,
``scripts/method_figures.py``) without a model in the loop.

* ``dominant_colour``: the world colour that covers the most pixels, counting only pixels within
  ``tolerance`` (RGB distance) of a world colour: a plurality vote, as a person names the colour of a picture.
* ``salient_reading``: the 10% of pixels farthest from the image's median colour; their mean's nearest world
  colour, and the region where their centroid lies (``center`` within 8% of the middle, else the side along the
  larger offset). Stricter for colour: a picture that is green all over has green as its median, so its salient
  pixels are the others.

>>> import torch
>>> green = torch.tensor(COLOURS["green"]).view(3, 1, 1).expand(3, 16, 16).clone()
>>> dominant_colour(green)["colour"]
'green'
>>> green[:, 12:, 4:12] = torch.tensor(COLOURS["red"]).view(3, 1, 1)  # a red band at the bottom
>>> r = salient_reading(green)
>>> r["colour"], r["position"]
('red', 'bottom')
"""

from __future__ import annotations

import torch

from clipviz.world.scene import COLOURS

_PALETTE = torch.tensor(list(COLOURS.values()))
_NAMES = list(COLOURS)


def dominant_colour(image: torch.Tensor, tolerance: float = 0.35) -> dict:
    """``image`` (3, H, W) in [0, 1] -> {"colour": name or None, "share": share of all pixels it covers}."""
    x = image.float().permute(1, 2, 0).reshape(-1, 3)
    distance = torch.cdist(x, _PALETTE.to(x))  # (pixels, colours)
    nearest = distance.min(dim=1)
    counted = nearest.values <= tolerance
    if not bool(counted.any()):
        return {"colour": None, "share": 0.0}
    votes = torch.bincount(nearest.indices[counted], minlength=len(_NAMES))
    best = int(votes.argmax())
    return {"colour": _NAMES[best], "share": round(float(votes[best]) / x.shape[0], 4)}


def salient_reading(image: torch.Tensor, share: float = 0.1, floor: float = 0.0) -> dict:
    """``image`` (3, H, W) in [0, 1] -> {"colour", "position", "offset"} of its most salient pixels: the ``share``
    farthest from the median colour, of those at least ``floor`` times as far as the farthest one (with a floor, a
    small object is all of what stands out, not a tenth of the image)."""
    x = image.float().permute(1, 2, 0).reshape(-1, 3)
    h, w = image.shape[-2:]
    distance = (x - x.median(dim=0).values).norm(dim=1)
    top = distance.topk(max(1, int(share * x.shape[0])))
    salient = top.indices[top.values >= floor * top.values[0]]
    colour = _NAMES[int((_PALETTE - x[salient].mean(dim=0)).norm(dim=1).argmin())]
    yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
    dx, dy = float(xx.flatten()[salient].mean()), float(yy.flatten()[salient].mean())
    if max(abs(dx), abs(dy)) < 0.08:
        position = "center"
    elif abs(dx) >= abs(dy):
        position = "right" if dx > 0 else "left"
    else:
        position = "bottom" if dy > 0 else "top"
    return {"colour": colour, "position": position, "offset": [round(dx, 3), round(dy, 3)]}


__all__ = ["dominant_colour", "salient_reading"]
