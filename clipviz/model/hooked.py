"""``HookedVisionModel``: one surface over every backend, with TransformerLens-style hooks.

Images go in as float tensors ``(B, 3, H, W)`` in ``[0, 1]``; the model's own normalisation (and a resize to
its input size, if needed) happens inside, so callers never deal with mean/std.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from clipviz.errors import ClipvizError, check_indices
from clipviz.images import LUMA, luminance
from clipviz.model.architecture import BlockParts, find_blocks
from clipviz.model.backends.base import Backend
from clipviz.model.batch import check_batch_independence
from clipviz.model.channels import channel_statistics, readable_channels
from clipviz.model.evaluation import evaluating
from clipviz.model.hooks import HookFn, HookPoint, HookRegistry, StopForward, check_fired, installed
from clipviz.model.layout import TokenLayout
from clipviz.model.order import check_token_order
from clipviz.model.probe import probe_model
from clipviz.model.residual import check_residual_writes


class ActivationCache(dict):
    """Activations by hook name; ``stopped_early`` tells whether the forward pass was cut short."""

    stopped_early: bool = False


#: Inside ``identity_kept()``: model id -> its identity, hashed once (``None`` outside: hashed on every call).
_IDENTITIES: ContextVar[dict | None] = ContextVar("clipviz_identities", default=None)


@contextmanager
def identity_kept() -> Iterator[None]:
    """Inside the block each model's weights are hashed once (``HookedVisionModel.identity``): for a run that
    does not change them, such as a sweep, whose stages all ask."""
    outer = _IDENTITIES.get()
    token = _IDENTITIES.set({} if outer is None else outer)
    try:
        yield
    finally:
        _IDENTITIES.reset(token)


PIXEL_SLACK = 0.25  # resampling overshoots [0, 1] a little; pixels on another scale are far outside it


def _check_pixel_range(images: torch.Tensor) -> None:
    """Refuse images that are clearly not [0, 1] pixels: 0-255 values, or images already normalised (ImageNet
    statistics, [-1, 1]), which ``prepare`` would normalise a second time into a silently wrong input."""
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ClipvizError("images hold NaN or infinite values: give floats in [0, 1]")
    if low >= -PIXEL_SLACK and high <= 1 + PIXEL_SLACK:
        return
    hint = (
        "0-255 pixels: divide by 255 first"
        if low >= -PIXEL_SLACK and high <= 255 + PIXEL_SLACK
        else "already normalised? give the raw [0, 1] pixels: clipviz normalises them with the model's own mean and std"
    )
    raise ClipvizError(f"images must be floats in [0, 1]; these range from {low:.3g} to {high:.3g} ({hint})")


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
        # on the native model's device: a module wrapped on a GPU is probed there (images follow these buffers)
        device = next(self.native.parameters(), torch.empty(0)).device
        # 3, or 1: a grey model (clipviz.model.channels)
        self.input_channels = readable_channels(backend.vision_root, backend.forward, backend.image_size)
        self.statistics = mean, std = channel_statistics(self.input_channels, backend.mean, backend.std)
        self.register_buffer("_mean", torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1), False)
        self.register_buffer("_std", torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1), False)
        _batch_invariant_attention(backend.vision_root)
        self._prenormalised = False
        self._whole_passes = 0  # forward passes run to the end (``hooks`` checks that its hooks ran in one)
        # Measure every hook's token layout (and check attention patterns) on the model itself, once.
        self.token_layouts = probe_model(self)
        check_batch_independence(self)  # one image's activations must not depend on its batch-mates
        self.blocks = self.blocks[: len(self.blocks) - len(self.token_layouts.excluded)]
        self.registry = HookRegistry(self.native, self.blocks, seq_first=backend.seq_first, layout=self.token_layouts)
        check_token_order(self)  # the measured layout, confirmed by moving one patch at a time
        check_residual_writes(self)  # resid_pre + attn_out = resid_mid, and so on, or the hook is left out

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

    def identity(self) -> dict:
        """What decides this model's results beyond its spec: a hash (``weights``) of every weight and buffer of
        the model (of the vision tower alone for a vision-language generator), of its modules (an activation, a
        norm's epsilon) and of its configuration and preprocessing settings; its input size and normalisation.
        Read afresh on each call, so an edit of the weights made in place is seen (the settings are those read at
        load time), except inside ``identity_kept()`` (a sweep's
        run, where the weights do not change), which hashes once. Finished work on disk is reused only for the
        same identity: new weights or settings behind the same spec (a folder overwritten, a config edited, another
        ``--revision``, a clipviz upgrade that ships new bundled weights) are computed anew.

        >>> import clipviz
        >>> model = clipviz.load("world-clip")
        >>> model.identity() == model.identity(), sorted(model.identity())
        (True, ['image_size', 'mean', 'model', 'std', 'weights'])
        """
        from clipviz.model.backends.hf_families import _is_generative
        from clipviz.model.digest import update_with_tensors

        kept = _IDENTITIES.get()
        if kept is not None and id(self) in kept:
            return dict(kept[id(self)])
        native = self.backend.native
        root = self.backend.vision_root if _is_generative(native) else native  # an LLM's tower runs alone
        digest = hashlib.blake2b(digest_size=12)
        update_with_tensors(digest, [*root.named_parameters(), *root.named_buffers()])
        # and what decides the results beyond the weights: the modules themselves (an activation, a norm's epsilon)
        # and the configuration and preprocessing settings the backend read (``Backend.settings``)
        digest.update(repr(root).encode())
        digest.update(self.backend.settings.encode())
        mean, std = self.normalisation()
        found = {
            "model": self.spec,
            "weights": digest.hexdigest(),
            "image_size": list(self.image_size),
            "mean": [round(float(v), 6) for v in mean],
            "std": [round(float(v), 6) for v in std],
        }
        if self.input_channels == 1:  # what it reads of an RGB image decides its results too
            found["grey"] = list(LUMA)
        if kept is not None:
            kept[id(self)] = found
        return dict(found)

    def layout(self, block: int | str) -> TokenLayout:
        """Token layout of block ``block``'s residual stream (``hook_resid_post``), or of a hook given by name.

        Layouts are measured at load time (see ``clipviz.model.probe``): they match the activations' token count and
        order for every hook the model offers.
        """
        if isinstance(block, str):
            return self.hook_layout(block)
        if not 0 <= block < self.n_blocks:
            raise ClipvizError(f"layer {block} out of range: this model has blocks 0..{self.n_blocks - 1}")
        return self.token_layouts.hooks[f"blocks.{block}.hook_resid_post"]

    def hook_layout(self, hook: str) -> TokenLayout:
        """Token layout of the activation at ``hook`` (as clipviz shows it: 4-D activations are flattened)."""
        point = self.registry.resolve(hook)
        if point.block is None:  # a native module path: the layout of the last block, checked where it is used
            return self.layout(self.n_blocks - 1)
        name = point.name
        if name.endswith("attn.hook_pattern") or name.endswith("attn.hook_z"):
            name = name.rsplit(".", 2)[0] + ".hook_resid_pre" if name not in self.token_layouts.hooks else name
        return self.token_layouts.hooks.get(name) or self.layout(point.block)

    def unavailable_hooks(self) -> dict[str, str]:
        """Hook points left out of this model, ``blocks.<i>.<point>`` (grouped over blocks) -> why."""
        out: dict[str, list] = {}
        for name, why in self.token_layouts.unavailable.items():
            _, i, point = name.split(".", 2)
            if int(i) < self.n_blocks:
                out.setdefault(f"{point}: {why}", []).append(int(i))
        grouped = {}
        for key, idx in out.items():
            point, why = key.split(": ", 1)
            span = "all blocks" if len(idx) == self.n_blocks else "blocks " + ",".join(map(str, idx))
            grouped[f"{point} ({span})"] = why
        return grouped

    def hook_width(self, name: str) -> int:
        """Size of the last axis of the activation at hook ``name`` (its neurons): read from the weights where
        they say it, else measured with one forward pass. An attention-pattern hook has no neurons: refused."""
        point = self.registry.resolve(name)
        if point.name.endswith("attn.hook_pattern"):
            raise ClipvizError(
                f"hook '{name}' holds attention patterns, (batch, heads, queries, keys), not neurons over tokens: "
                "use a hook such as blocks.0.mlp.hook_post or hook_resid_post"
            )
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
        if isinstance(neurons, range):  # bounds first: range(0, 30_000_000) is refused without being expanded
            ends = [neurons[0], neurons[-1]] if len(neurons) else []
            bad = next((n for n in ends if not 0 <= n < width), None)
            if bad is None:
                return list(neurons)
        else:
            neurons = check_indices(neurons)
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
        last = self.layout(self.n_blocks - 1)
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
            "last_block_layout": None if last == layout else {"prefix": list(last.prefix), "grid": list(last.grid)},
            "gated_mlp": any(blk.gated for blk in self.blocks) or None,
            "hooks_left_out": self.unavailable_hooks() or None,
            "blocks_left_out": dict(self.token_layouts.excluded) or None,
            "patch_size": list(b.patch_size),
            "image_size": list(b.image_size),
            "input_channels": self.input_channels,
            "mean": list(self.statistics[0]),
            "std": list(self.statistics[1]),
            "preprocessing": b.preprocessing_source,
            "output": b.output_kind,
            "clip_like": self.is_clip,
            "direct_projection": b.projection is not None,
            "parameters": sum(p.numel() for p in self.native.parameters()),
            "data_preprocessing": "backend's own resize + centre crop"
            if b.pil_transform is not None
            else "resize of the shortest side + centre crop (bicubic)",
            "notes": [*b.notes, *self._grey_note()] or None,
        }

    def _grey_note(self) -> list[str]:
        if self.input_channels != 1:
            return []
        r, g, b = LUMA
        return [
            f"it reads one channel: clipviz gives it each image's luminance ({r} R + {g} G + {b} B), shows photos "
            "in grey as it reads them, and renders its visualizations in grey"
        ]

    # ---------------------------------------------------------------- forward
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3 or 1, H, W) -> the model's normalised input at its native size: 3 channels, or for
        a grey model (``input_channels == 1``) the images' luminance.

        Images of the model's aspect ratio are resized to its size; any other shape is refused, never stretched.
        Data (a tensor outside an autograd graph) must be [0, 1] pixels: 0-255 values or already-normalised images
        are refused; images being optimised are not checked (their augmentations leave [0, 1] on purpose)."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ClipvizError(f"images must be a (B, 3, H, W) tensor in [0, 1] (1 channel is repeated); got {shape}")
        if not images.is_floating_point():
            raise ClipvizError(
                f"images must be floats in [0, 1]; got {str(images.dtype).replace('torch.', '')} "
                "(8-bit pixels: divide by 255 first, or load photos with model.preprocess_pil)"
            )
        if images.shape[0] == 0:
            raise ClipvizError("an empty batch of images: give at least one")
        if 0 in images.shape[-2:]:
            raise ClipvizError(f"images of {images.shape[-2]}x{images.shape[-1]} pixels hold nothing: give some")
        if not images.requires_grad and not self._prenormalised:
            _check_pixel_range(images)
        if self._prenormalised:
            c, (h, w) = self.input_channels, self.image_size
            if images.shape[1] != c or tuple(images.shape[-2:]) != (h, w):
                raise ClipvizError(f"pre-normalised images must be (B, {c}, {h}, {w})")
            return images.to(device=self._mean.device, dtype=self.dtype)
        x = images.to(device=self._mean.device, dtype=torch.float32)
        if self.input_channels == 1:
            x = luminance(x) if x.shape[1] == 3 else x
        elif x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != tuple(self.image_size):
            (h, w), (th, tw) = x.shape[-2:], self.image_size
            # a stretch: resizing moves an edge by more than one of the model's pixels from where keeping the aspect
            # would, and the images are not the model's aspect rounded to whole pixels (a small render, 9x14 at 32x48)
            rounded = round(w * th / tw) == h or round(h * tw / th) == w
            if max(abs(tw - w * th / h), abs(th - h * tw / w)) > 1 and not rounded:
                raise ClipvizError(
                    f"images are {h}x{w} (height x width) but the model runs at {th}x{tw}: resizing them would "
                    "stretch them; crop them to its aspect ratio first, or load photos with model.preprocess_pil"
                )
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return ((x - self._mean) / self._std).to(self.dtype)

    def preprocess_pil(self, image) -> torch.Tensor:
        """A PIL image -> a (3, H, W) float tensor in [0, 1] at the model's input size, the backend's own way.

        The resize and centre crop are the backend's (transformers image processor, open_clip or timm transform), so
        ``model(preprocess_pil(img)[None])`` equals the backend's own preprocessing and forward pass; only the
        normalisation is left to ``prepare``. A grey model's images are grey (their luminance in all three
        channels): what it reads, and what thumbnails and reference images then show.
        """
        from PIL import Image

        from clipviz.images import eight_bit, to_rgb
        from clipviz.model.backends.preprocessing import fallback_transform

        if not isinstance(image, Image.Image):
            raise ClipvizError(
                f"preprocess_pil takes a PIL image, got {type(image).__name__} (open a file with "
                "clipviz.images.open_image; give tensors of [0, 1] pixels to the model directly)"
            )
        if self.backend.kind == "open_clip":  # open_clip's transform converts to RGB after resizing, as here
            image = eight_bit(image)
        else:  # transparency as the backend's own pipeline flattens it
            image = to_rgb(image, on_white=self.backend.kind == "hf")
        fn = self.backend.pil_transform or fallback_transform(self.image_size)
        x = fn(image).float()
        return luminance(x).expand_as(x).contiguous() if self.input_channels == 1 else x

    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``prepare``'s per-channel ``mean, std`` (``input_channels``,): the model's input is ``(x - mean) / std``
        (for a grey model, of the images' luminance)."""
        return self._mean.view(-1), self._std.view(-1)

    @contextmanager
    def prenormalised(self) -> Iterator[HookedVisionModel]:
        """Inside the block, images handed to the model are already normalised (the caller applied
        ``normalisation()``, fused into its own per-channel arithmetic) and at the input size: ``prepare`` only
        casts them."""
        previous, self._prenormalised = self._prenormalised, True
        try:
            yield self
        finally:
            self._prenormalised = previous

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The model's head output: image embedding (CLIP-like), logits (classifiers) or pooled features (the
        first of an output tuple: open_clip's ``output_tokens`` gives ``(pooled, tokens)``)."""
        with evaluating(self.native):  # whatever mode the user left it in (see ``clipviz.model.evaluation``)
            out = self.backend.forward(self.prepare(images))
        self._whole_passes += 1  # a pass cut short (StopForward) does not count
        return out[0] if isinstance(out, (tuple, list)) and out else out

    def check_pooled_output(self, images: torch.Tensor | None = None) -> torch.Tensor:
        """The output for ``images`` (a blank image by default), refused in one line where it is not one vector
        per image: a head without global pooling (timm ``global_pool=""``, open_clip ``pool_type="none"``) gives
        one per token, and text or class targets need one per image."""
        if images is None:
            images = torch.zeros(1, 3, *self.image_size, device=self.device)
        out = self(images)
        if out.ndim != 2:
            kind = {"logits": "class logits", "image_embedding": "image embeddings"}.get(
                self.backend.output_kind, "features"
            )
            raise ClipvizError(
                f"model '{self.spec}' outputs {kind} of shape {tuple(out.shape)}, one per token, not one per image "
                "(a head without global pooling): text and class targets need a pooled output; hook targets "
                "(--neurons) work"
            )
        return out

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
        pairs = self._hook_pairs(fwd_hooks)
        stop = {self.registry.resolve(n).name for n in stop_after} if stop_after else None
        if stop:
            pairs += [(p, _noop) for p in self._points(stop_after) if all(p.name != q.name for q, _ in pairs)]
        with installed(pairs, stop_after=stop) as seen:
            try:
                out = self(images)
            except StopForward:
                return None
        check_fired([p for p, _ in pairs], seen)
        return out

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
        names = list(self.hook_names() if names is None else [names] if isinstance(names, str) else names)
        cache = ActivationCache()

        def keep(value: torch.Tensor, point: HookPoint) -> None:
            cache[point.name] = value.detach() if detach else value

        points = self._points(names)
        if not points:
            raise ClipvizError("no hook names given")
        with installed(
            [(p, keep) for p in points], stop_after={p.name for p in points} if stop_early else None
        ) as seen:
            try:
                out = self(images)
            except StopForward:
                out = None
                cache.stopped_early = True
        if not cache.stopped_early:
            check_fired(points, seen)
        for asked, point in zip(names, points, strict=True):
            if asked != point.name and point.name in cache:
                cache[asked] = cache[point.name]
        return out, cache

    def mlp_input_point(self, block: int) -> HookPoint:
        """The input of block ``block``'s first MLP layer (what its second norm hands the MLP), ``(B, N, d_model)``."""
        if not 0 <= block < self.n_blocks:
            raise ClipvizError(f"layer {block} out of range: this model has blocks 0..{self.n_blocks - 1}")
        parts = self.blocks[block]
        swap = (lambda x: x.transpose(0, 1)) if self.backend.seq_first else None
        return HookPoint(
            name=f"blocks.{block}.mlp.hook_in",
            module=parts.fc1,
            native=parts.native("fc1"),
            on_input=True,
            block=block,
            read=swap,
            write=swap,
        )

    def run_to_mlp_input(
        self, images: torch.Tensor, block: int, keep: Sequence[str] = ()
    ) -> tuple[torch.Tensor, ActivationCache]:
        """Block ``block``'s MLP input ``(B, N, d_model)`` and the activations at the hooks ``keep`` (autograd graph
        kept); the pass stops at the MLP input, so neither that MLP nor anything after it is computed. A hook of
        ``keep`` that has not fired by then (it sits after the MLP input in the forward pass) is an error."""
        point = self.mlp_input_point(block)
        points = self._points(keep)
        kept: list[torch.Tensor] = []
        cache = ActivationCache()

        def store(value: torch.Tensor, p: HookPoint) -> None:
            cache[p.name] = value

        pairs = [(point, lambda value, _p: kept.append(value)), *[(p, store) for p in points]]
        with installed(pairs, stop_after={point.name}), suppress(StopForward):
            self(images)
        if not kept:
            raise ClipvizError(f"block {block}'s MLP was never called in the forward pass")
        cache.stopped_early = True
        for asked, p in zip(keep, points, strict=True):
            if p.name not in cache:
                raise ClipvizError(f"hook '{asked}' does not fire before block {block}'s MLP input")
            cache[asked] = cache[p.name]
        return kept[0], cache

    def _hook_pairs(self, fwd_hooks) -> list[tuple[HookPoint, HookFn]]:
        """``[(name, fn), ...]`` resolved to hook points; anything else is refused in one line (a lone pair, given
        without its list, would otherwise unpack as two hooks)."""
        shape = "a list of (hook name, function) pairs, e.g. [('blocks.1.mlp.hook_post', fn)]"
        if isinstance(fwd_hooks, (str, bytes, Mapping)) or not isinstance(fwd_hooks, Iterable):
            raise ClipvizError(f"fwd_hooks must be {shape}; got {type(fwd_hooks).__name__}")
        fwd_hooks = list(fwd_hooks)  # a zip or a generator of pairs too
        if len(fwd_hooks) == 2 and isinstance(fwd_hooks[0], str) and callable(fwd_hooks[1]):
            raise ClipvizError(f"fwd_hooks must be {shape}; got one pair without its list")
        bad = next((h for h in fwd_hooks if not (isinstance(h, (list, tuple)) and len(h) == 2)), None)
        if bad is not None:
            raise ClipvizError(f"fwd_hooks must be {shape}; got the entry {bad!r}")
        return [(self.registry.resolve(n), fn) for n, fn in fwd_hooks]

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[HookedVisionModel]:
        """Keep editing hooks installed for every forward pass inside the ``with`` block. A hook that never ran
        though a whole pass did is an error when the block ends (it would have edited nothing)."""
        pairs = self._hook_pairs(fwd_hooks)
        with installed(pairs) as seen:
            passes = self._whole_passes
            yield self
            if self._whole_passes > passes:
                check_fired([p for p, _ in pairs], seen)

    # ---------------------------------------------------------------- CLIP
    def _require_text(self) -> None:
        if not self.is_clip:
            why = self.backend.text_missing or "text features need a CLIP-like model"
            raise ClipvizError(f"model '{self.spec}' has no text tower here: {why}")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (unnormalised), equal to the backend's ``get_image_features`` / ``encode_image``."""
        if self.backend.output_kind != "image_embedding":
            raise ClipvizError(
                f"model '{self.spec}' gives no image embedding (its output is {self.backend.output_kind}): image "
                "embeddings need a CLIP-like model"
            )
        return self.check_pooled_output(images)

    def tokenize(self, texts: Sequence[str]):
        self._require_text()
        return self.backend.text.tokenize(list(texts))

    @property
    def logit_scale(self) -> float | None:
        """The trained temperature of the model's image-text logits (``None`` when it has none or no text)."""
        scale = self.backend.text.logit_scale if self.backend.text is not None else None
        return scale() if scale is not None else None

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Text embeddings (unnormalised) in the image embedding space."""
        self._require_text()
        if isinstance(texts, str):
            texts = [texts]
        with evaluating(self.native):
            return self.backend.text.encode_tokens(self.tokenize(texts))


def _noop(value: torch.Tensor, point: HookPoint) -> None:
    return None


def _seq_first_storage(module: nn.Module, args: tuple, kwargs: dict):
    """Give a batch-first ``nn.MultiheadAttention`` its self-attention input stored sequence-first (same values and
    shape, other strides). Its slow path (taken whenever gradients flow) transposes the input to (L, B, E); on a
    batch-first tensor that is a strided view whose input projection gives results that depend on the batch
    size (a batch of 2 differed from a batch of 1 by 1e-6, a grey level in some PNGs), while a contiguous one
    gives every image the same result in any batch."""
    if not module.batch_first or not args or not isinstance(args[0], torch.Tensor) or args[0].ndim != 3:
        return None
    q = args[0]
    if len(args) < 3 or not (args[1] is q and args[2] is q):  # self-attention only, positional as open_clip calls it
        return None
    stored = q.transpose(0, 1).contiguous().transpose(0, 1)
    return tuple(stored if a is q else a for a in args), kwargs


def _batch_invariant_attention(root: nn.Module) -> None:
    for module in root.modules():
        if isinstance(module, nn.MultiheadAttention) and not getattr(module, "_clipviz_invariant", False):
            module.register_forward_pre_hook(_seq_first_storage, with_kwargs=True)
            module._clipviz_invariant = True
