"""``HookedVisionModel``: one surface over every backend, with TransformerLens-style hooks.

Images go in as float tensors ``(B, 3, H, W)`` in ``[0, 1]``; the model's own normalisation (and a resize to
its input size, if needed) happens inside, so callers never deal with mean/std.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from clipviz.errors import ClipvizError
from clipviz.model.architecture import BlockParts, find_blocks
from clipviz.model.backends.base import Backend
from clipviz.model.hooks import HookFn, HookPoint, HookRegistry, StopForward, installed
from clipviz.model.layout import TokenLayout


class ActivationCache(dict):
    """Activations by hook name; ``stopped_early`` tells whether the forward pass was cut short."""

    stopped_early: bool = False


class HookedVisionModel(nn.Module):
    """A vision transformer from any backend with named hook points.

    >>> import clipviz, torch
    >>> model = clipviz.load("world-clip")
    >>> images = torch.rand(2, 3, 64, 64)
    >>> _, cache = model.run_with_cache(images, ["blocks.2.mlp.hook_post"])  # stops after block 2
    >>> cache["blocks.2.mlp.hook_post"].shape
    torch.Size([2, 65, 512])
    """

    def __init__(self, backend: Backend):
        super().__init__()
        self.backend = backend
        self.native = backend.native
        self.native.requires_grad_(False)
        prefix = f"{backend.vision_path}." if backend.vision_path else ""
        self.blocks: list[BlockParts] = find_blocks(backend.vision_root, prefix=prefix.rstrip("."))
        self.registry = HookRegistry(self.native, self.blocks, seq_first=backend.seq_first)
        self.register_buffer("_mean", torch.tensor(backend.mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("_std", torch.tensor(backend.std, dtype=torch.float32).view(1, -1, 1, 1), False)

    @classmethod
    def from_pretrained(cls, spec: str, **kwargs) -> HookedVisionModel:
        """``clipviz.load(spec, **kwargs)``, by the name transformers and TransformerLens users reach for."""
        from clipviz.model.loading import load

        return load(spec, **kwargs)

    # ---------------------------------------------------------------- facts
    @property
    def spec(self) -> str:
        return self.backend.spec

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return self.blocks[-1].d_model

    @property
    def d_mlp(self) -> int:
        return self.blocks[-1].d_mlp

    @property
    def n_heads(self) -> int:
        return self.blocks[-1].n_heads

    @property
    def image_size(self) -> tuple[int, int]:
        return self.backend.image_size

    @property
    def prefix_tokens(self) -> tuple[str, ...]:
        return self.backend.prefix_tokens

    @property
    def is_clip(self) -> bool:
        """True for models with a text tower sharing the image embedding space."""
        return self.backend.text is not None and self.backend.output_kind == "image_embedding"

    @property
    def device(self) -> torch.device:
        return next(self.native.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.native.parameters()).dtype

    def layout(self, block: int) -> TokenLayout:
        """Token layout of block ``block``'s activations."""
        h, w = (s // p for s, p in zip(self.image_size, self.backend.patch_size, strict=True))
        if self.backend.hierarchical:
            stage = self.blocks[block].stage
            return TokenLayout(prefix=(), grid=(h >> stage, w >> stage))
        return TokenLayout(prefix=self.prefix_tokens, grid=(h, w))

    def hook_layout(self, name: str) -> TokenLayout:
        """Token layout of the activation at hook ``name`` (native module paths outside the blocks: the last
        block's)."""
        point = self.registry.resolve(name)
        return self.layout(point.block if point.block is not None else self.n_blocks - 1)

    def hook_width(self, name: str) -> int:
        """Size of the last axis of the activation at hook ``name`` (its neurons): read from the weights where
        they say it, else measured with one forward pass."""
        point = self.registry.resolve(name)
        if point.block is not None:
            parts = self.blocks[point.block]
            point_name = point.name.split(".", 2)[2]
            if point_name in ("mlp.hook_pre", "mlp.hook_post"):
                return parts.d_mlp
            if point_name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
                return parts.d_model
        with torch.no_grad():
            _, cache = self.run_with_cache(torch.zeros(1, 3, *self.image_size), [point.name])
        return int(cache[point.name].shape[-1])

    def check_neurons(self, name: str, neurons: Sequence[int]) -> list[int]:
        """``neurons`` as a list if every index exists at hook ``name``, else a one-line error with the range."""
        width = self.hook_width(name)
        neurons = [int(n) for n in neurons]
        bad = next((n for n in neurons if not 0 <= n < width), None)
        if bad is not None:
            raise ClipvizError(
                f"neuron index {bad} out of range for hook '{name}': it has {width} neurons (0..{width - 1})"
            )
        return neurons

    def hook_names(self, block: int | None = None) -> list[str]:
        """Every hook name (of one block, if given) in the order they fire."""
        if block is not None and not 0 <= block < self.n_blocks:
            raise ClipvizError(f"layer {block} out of range: this model has blocks 0..{self.n_blocks - 1}")
        return self.registry.names(block)

    def hook_point(self, name: str) -> HookPoint:
        return self.registry.resolve(name)

    def summary(self) -> dict:
        """The model's facts as plain data (what ``clipviz info`` prints)."""
        b = self.backend
        layout = self.layout(0)
        return {
            "spec": b.spec,
            "backend": b.kind,
            "architecture": b.architecture,
            "n_blocks": self.n_blocks,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "n_heads": self.n_heads,
            "stages": sorted({blk.stage for blk in self.blocks}) if b.hierarchical else None,
            "prefix_tokens": list(self.prefix_tokens),
            "patch_grid": list(layout.grid),
            "patch_size": list(b.patch_size),
            "image_size": list(b.image_size),
            "mean": list(b.mean),
            "std": list(b.std),
            "preprocessing": b.preprocessing_source,
            "output": b.output_kind,
            "clip_like": self.is_clip,
            "direct_projection": b.projection is not None,
            "parameters": sum(p.numel() for p in self.native.parameters()),
        }

    # ---------------------------------------------------------------- forward
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3 or 1, H, W) -> the model's normalised input at its native size."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ClipvizError(f"images must be a (B, 3, H, W) tensor in [0, 1] (1 channel is repeated); got {shape}")
        x = images.to(device=self._mean.device, dtype=torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != tuple(self.image_size):
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return ((x - self._mean) / self._std).to(self.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The model's head output: image embedding (CLIP-like), logits (classifiers) or pooled features."""
        return self.backend.forward(self.prepare(images))

    def _points(self, names: Iterable[str]) -> list[HookPoint]:
        return [self.registry.resolve(n) for n in names]

    def run_with_hooks(
        self,
        images: torch.Tensor,
        fwd_hooks: Sequence[tuple[str, HookFn]] = (),
        *,
        stop_after: Sequence[str] | None = None,
    ) -> torch.Tensor | None:
        """Forward with ``(name, fn)`` hooks; ``fn(activation, point)`` may return a replacement.

        With ``stop_after``, the pass stops as soon as those hooks have fired and returns ``None``: the work
        after the deepest of them is never done.
        """
        pairs = [(self.registry.resolve(n), fn) for n, fn in fwd_hooks]
        stop = {self.registry.resolve(n).name for n in stop_after} if stop_after else None
        if stop:
            pairs += [(p, _noop) for p in self._points(stop_after) if all(p.name != q.name for q, _ in pairs)]
        with installed(pairs, stop_after=stop):
            try:
                return self(images)
            except StopForward:
                return None

    def run_with_cache(
        self,
        images: torch.Tensor,
        names: Sequence[str] | None = None,
        *,
        stop_early: bool = True,
        detach: bool = True,
    ) -> tuple[torch.Tensor | None, ActivationCache]:
        """Run and keep the activations at ``names`` (all block hooks if ``None``).

        With ``stop_early`` (the default) the pass stops once the deepest requested hook has fired, and the
        returned output is ``None``. ``detach=False`` keeps the autograd graph (for optimisation).
        """
        names = list(self.hook_names() if names is None else names)
        cache = ActivationCache()

        def keep(value: torch.Tensor, point: HookPoint) -> None:
            cache[point.name] = value.detach() if detach else value

        points = self._points(names)
        if not points:
            raise ClipvizError("no hook names given")
        with installed([(p, keep) for p in points], stop_after={p.name for p in points} if stop_early else None):
            try:
                out = self(images)
            except StopForward:
                out = None
                cache.stopped_early = True
        for asked, point in zip(names, points, strict=True):
            if asked != point.name and point.name in cache:
                cache[asked] = cache[point.name]
        return out, cache

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[HookedVisionModel]:
        """Keep editing hooks installed for every forward pass inside the ``with`` block."""
        with installed([(self.registry.resolve(n), fn) for n, fn in fwd_hooks]):
            yield self

    # ---------------------------------------------------------------- CLIP
    def _require_text(self) -> None:
        if not self.is_clip:
            raise ClipvizError(f"model '{self.spec}' has no text tower: text features need a CLIP-like model")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (unnormalised), equal to the backend's ``get_image_features`` / ``encode_image``."""
        self._require_text()
        return self(images)

    def tokenize(self, texts: Sequence[str]):
        self._require_text()
        return self.backend.text.tokenize(list(texts))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Text embeddings (unnormalised) in the image embedding space."""
        self._require_text()
        if isinstance(texts, str):
            texts = [texts]
        return self.backend.text.encode_tokens(self.tokenize(texts))


def _noop(value: torch.Tensor, point: HookPoint) -> None:
    return None
