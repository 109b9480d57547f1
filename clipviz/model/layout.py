"""Token layouts and token reductions: which tokens of an activation are prefix tokens and which are patches.

One home for every reduction over tokens (objectives, example mining and probe sets all use ``reduce_tokens``).

>>> import torch
>>> layout = TokenLayout(prefix=("cls",), grid=(2, 2))
>>> values = torch.tensor([[10.0, 1.0, 2.0, 3.0, 4.0]])
>>> [float(reduce_tokens(values, r, layout)[0]) for r in ("patches", "cls", "max", "all")]
[2.5, 10.0, 4.0, 4.0]
>>> float(reduce_tokens(values, ("patch", 1, 0), layout)[0])
3.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch

from clipviz.errors import ClipvizError

#: Hook points of every block, in the order they fire in a forward pass.
BLOCK_POINTS = (
    "hook_resid_pre",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)

#: A named reduction over tokens; ``("patch", row, col)`` and ``("region", r0, r1, c0, c1)`` are the others.
NamedReduce = Literal["patches", "cls", "all", "max"]
Reduce = Union[NamedReduce, tuple]  # noqa: UP007 (a runtime alias; ``|`` between Literal and type fails on 3.10)
NAMED_REDUCTIONS: tuple[str, ...] = ("patches", "cls", "all", "max")
ACCEPTED_REDUCTIONS = "patches, cls, all, max, ('patch', r, c), ('region', r0, r1, c0, c1)"


@dataclass(frozen=True)
class TokenLayout:
    """Where the patch tokens sit in a block's sequence: ``prefix`` tokens first, then a row-major patch grid."""

    prefix: tuple[str, ...]  # kinds of the tokens before the patches
    grid: tuple[int, int]  # patch grid (rows, columns)

    @property
    def n_prefix(self) -> int:
        return len(self.prefix)

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.grid[0] * self.grid[1]

    @property
    def patches(self) -> slice:
        return slice(self.n_prefix, None)

    def check(self, n_tokens: int, where: str) -> None:
        """Refuse (one line) an activation whose token count does not match this layout."""
        if n_tokens != self.n_tokens:
            raise ClipvizError(
                f"{where} has {n_tokens} tokens but its layout says {self.n_tokens} ({self.n_prefix} prefix + "
                f"{self.grid[0]}x{self.grid[1]} patches): clipviz cannot tell which tokens are patches here"
            )


def check_reduce(reduce: object) -> Reduce:
    """``reduce`` if it is a reduction clipviz knows, else a one-line error listing the accepted ones."""
    if isinstance(reduce, str) and reduce in NAMED_REDUCTIONS:
        return reduce
    if isinstance(reduce, (tuple, list)) and reduce and reduce[0] in ("patch", "region"):
        size = 3 if reduce[0] == "patch" else 5
        if len(reduce) == size and all(isinstance(v, int) for v in reduce[1:]):
            return tuple(reduce)
    raise ClipvizError(f"unknown reduction {reduce!r}; accepted: {ACCEPTED_REDUCTIONS}")


def reduce_tokens(values: torch.Tensor, reduce: Reduce, layout: TokenLayout, dim: int = -1) -> torch.Tensor:
    """Reduce the token axis ``dim`` of ``values``: the mean over patches, the CLS token, a patch or a region, ...

    The token count must match ``layout`` (else a one-line error: a wrong token would give a wrong answer).
    """
    reduce = check_reduce(reduce)
    v = values.movedim(dim, -1)
    layout.check(v.shape[-1], "the activation")
    prefix = layout.n_prefix
    if reduce == "patches":
        return v[..., prefix:].mean(-1)
    if reduce == "all":
        return v.mean(-1)
    if reduce == "max":
        return v[..., prefix:].amax(-1)
    if reduce == "cls":
        if "cls" not in layout.prefix:
            raise ClipvizError("reduce='cls' needs a model with a CLS token; this one has none")
        return v[..., layout.prefix.index("cls")]
    gh, gw = layout.grid
    if reduce[0] == "patch":
        _, r, c = reduce
        if not (0 <= r < gh and 0 <= c < gw):
            raise ClipvizError(f"patch ({r}, {c}) is outside the {gh}x{gw} patch grid")
        return v[..., prefix + r * gw + c]
    _, r0, r1, c0, c1 = reduce
    if not (0 <= r0 < r1 <= gh and 0 <= c0 < c1 <= gw):
        raise ClipvizError(f"region rows {r0}:{r1}, columns {c0}:{c1} is empty or outside the {gh}x{gw} patch grid")
    grid = v[..., prefix:].reshape(*v.shape[:-1], gh, gw)
    return grid[..., r0:r1, c0:c1].flatten(-2).mean(-1)


def patch_grid(values: torch.Tensor, layout: TokenLayout, dim: int = 1) -> torch.Tensor:
    """The patch tokens of token axis ``dim`` laid out as the grid: ``(..., N, ...) -> (..., gh, gw, ...)``."""
    layout.check(values.shape[dim], "the activation")
    patches = values.narrow(dim, layout.n_prefix, layout.grid[0] * layout.grid[1])
    return patches.unflatten(dim, layout.grid)
