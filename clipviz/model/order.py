"""The token order the probe measured, checked on the model itself: a change to one patch of the image must move
the token of block 0's input that the measured layout places there.

The probe reads a layout from shapes: ``(B, H, W, C)`` activations are taken as a row-major grid, and a token count
is split into prefix tokens and a grid that fits it. A count can fit while the order is another (NesT's blocks of
tokens, detection tokens or registers that make ``n`` look like a square), and then every patch-wise result would be
silently wrong. So at load time small squares of pixels are set to random colours, one at a time, at three patches
that no transposition or flip of the grid leaves in place, and block 0's input must change most at the token the
layout says: exactly there for a patchifying stem (one token changes), or a neighbour of it for an
overlapping convolutional stem (several change, and a token's centre depends on padding). A model that fails is
refused with what moved where.
"""

from __future__ import annotations

import torch

from clipviz.errors import UnsupportedModelError
from clipviz.model.evaluation import evaluating
from clipviz.model.probe import native_failures

POINT = "blocks.0.hook_resid_pre"


def _probes(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Up to three patches that every symmetry of the grid moves: off both diagonals, off the middle row and
    column (a transposed, anti-transposed or flipped order cannot leave them in place).

    >>> _probes((4, 4)), _probes((14, 14))
    ([(3, 1), (1, 3), (0, 1)], [(13, 3), (3, 13), (0, 1)])
    """
    gh, gw = grid
    candidates = [(gh * 2 // 3, gw // 3), (gh - 1, gw // 4), (gh // 4, gw - 1), (0, 1), (1, 0), (gh - 1, gw - 2)]
    candidates += [(r, c) for r in range(gh) for c in range(gw)]

    def moved_by_every_symmetry(r: int, c: int) -> bool:
        square = gh == gw
        return 2 * r != gh - 1 and 2 * c != gw - 1 and not (square and (r == c or r + c == gh - 1))

    picked = [p for p in dict.fromkeys(candidates) if 0 <= p[0] < gh and 0 <= p[1] < gw and moved_by_every_symmetry(*p)]
    return picked[:3] or [(gh - 1, 0)]


@torch.no_grad()
def check_token_order(model) -> None:
    """Refuse ``model`` (a ``HookedVisionModel`` under construction) when its block 0's input does not follow the
    layout the probe measured; a model whose block 0 input has no layout has nothing to check."""
    layout = model.token_layouts.hooks.get(POINT)
    if layout is None:
        return
    gh, gw = layout.grid
    h, w = model.backend.image_size
    if gh * gw < 2 or h < gh or w < gw:
        return
    probes = _probes((gh, gw))
    images = torch.full((1 + len(probes), 3, h, w), 0.5)
    patch = tuple(model.backend.patch_size or (0, 0))
    padded = all(patch) and (gh, gw) == (-(-h // patch[0]), -(-w // patch[1]))  # whole patches, the last padded
    ph, pw = patch if padded else (h // gh, w // gw)
    dy, dx = (1 if ph >= 3 else 0), (1 if pw >= 3 else 0)
    sy, sx = (2 if ph >= 4 else 1), (2 if pw >= 4 else 1)
    generator = torch.Generator().manual_seed(0)
    for k, (r, c) in enumerate(probes, start=1):
        y0, x0 = (r * ph, c * pw) if padded else (r * h // gh, c * w // gw)
        y0, x0 = min(y0 + dy, h - sy), min(x0 + dx, w - sx)  # inside the image, in a padded last patch too
        # random colours, not white: a stem may be blind to a change of brightness alone (a colour detector)
        images[k, :, y0 : y0 + sy, x0 : x0 + sx] = torch.rand(3, sy, sx, generator=generator)
    checking = f"the token-order check's {len(images)} images"
    with evaluating(model.native), native_failures(model.backend.architecture, checking):
        _, cache = model.run_with_cache(images, [POINT])
    tokens = cache[POINT].float()
    n_prefix = layout.n_prefix
    for k, (r, c) in enumerate(probes, start=1):
        change = (tokens[k] - tokens[0]).norm(dim=-1)
        if not float(change.max()) > 0:
            raise UnsupportedModelError(
                f"unsupported architecture {model.backend.architecture.split('/')[-1]}: a change to patch {(r, c)} "
                "of the image changed no token of block 0's input, so clipviz cannot check where its tokens are"
            )
        top = int(change.argmax())
        moved = int((change > 0.05 * change.max()).sum())
        where = "a prefix token" if top < n_prefix else f"grid token {divmod(top - n_prefix, gw)}"
        if top >= n_prefix:
            tr, tc = divmod(top - n_prefix, gw)
            exact = (tr, tc) == (r, c)
            if exact or (moved > 1 and abs(tr - r) <= 1 and abs(tc - c) <= 1):
                continue
        raise UnsupportedModelError(
            f"unsupported architecture {model.backend.architecture.split('/')[-1]}: a change to patch {(r, c)} of "
            f"the image moved {where} of block 0's input most, not the token its measured layout "
            f"({n_prefix} prefix tokens and a {gh}x{gw} row-major grid) puts there, so clipviz cannot place its tokens"
        )
