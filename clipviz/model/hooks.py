"""TransformerLens-style hook names, resolved to native modules, and the machinery that runs hooks.

Every hook point of a block (``blocks.{i}.<point>``):

================================  =================================================================
``hook_resid_pre``                input of the block, (B, N, d_model)
``attn.hook_pattern``             attention probabilities, (B, heads, N, N) (read-only, recomputed from q, k)
``attn.hook_z``                   per-head attention values before the output projection, (B, N, heads, d_head)
``hook_attn_out``                 output of the attention module (after its projection), (B, N, d_model)
``hook_resid_mid``                input of the block's second norm, (B, N, d_model)
``mlp.hook_pre``                  output of the MLP's first linear layer, (B, N, d_mlp)
``mlp.hook_post``                 output of the MLP's activation function, (B, N, d_mlp)
``hook_mlp_out``                  output of the MLP's second linear layer (before any layer scale), (B, N, d_model)
``hook_resid_post``               output of the block, (B, N, d_model)
================================  =================================================================

Hierarchical models (Swin) number blocks across stages; ``stages.{s}.blocks.{j}.<point>`` is accepted too.
Any native module path (``encoder.layers.3.mlp.fc1``) is a hook point on that module's output.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from clipviz.errors import HookNameError
from clipviz.model.architecture import BlockParts
from clipviz.model.attention import attention_pattern
from clipviz.model.layout import BLOCK_POINTS
from clipviz.model.probe import ModelLayout

_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")
_STAGE_NAME = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


class StopForward(Exception):
    """Raised inside a forward pass once every requested hook has fired (early exit)."""


@dataclass(frozen=True)
class HookPoint:
    """One named place in the model where activations can be read or replaced."""

    name: str
    module: nn.Module
    native: str  # native path of the module the hook sits on
    on_input: bool  # hook the module's first input (else its output)
    block: int | None = None
    read: Callable[[torch.Tensor], torch.Tensor] | None = None  # native layout -> clipviz layout
    write: Callable[[torch.Tensor], torch.Tensor] | None = None  # inverse of read; None: read-only
    editable: bool = True

    def to_view(self, value: torch.Tensor) -> torch.Tensor:
        return self.read(value) if self.read is not None else value

    def to_native(self, value: torch.Tensor) -> torch.Tensor:
        return self.write(value) if self.write is not None else value


def _split_heads(n_heads: int, seq_first: bool):
    def read(x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(0, 1) if seq_first else x
        return x.reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)

    def write(z: torch.Tensor) -> torch.Tensor:
        x = z.reshape(*z.shape[:-2], -1)
        return x.transpose(0, 1) if seq_first else x

    return read, write


def _transpose_if(seq_first: bool):
    if not seq_first:
        return None, None
    return (lambda x: x.transpose(0, 1)), (lambda x: x.transpose(0, 1))


@dataclass
class HookRegistry:
    """Resolves hook names of one model to ``HookPoint`` objects."""

    native_model: nn.Module
    blocks: list[BlockParts]
    seq_first: bool = False  # native tensors are (N, B, D) (old open_clip); views are always (B, N, D)
    layout: ModelLayout | None = None  # what the load-time probe measured (hooks left out, 4-D activations)
    _cache: dict[str, HookPoint] = field(default_factory=dict)

    def names(self, block: int | None = None) -> list[str]:
        """All hook names (of one block, if given) in forward order."""
        indices = range(len(self.blocks)) if block is None else [block]
        return [f"blocks.{i}.{p}" for i in indices for p in BLOCK_POINTS if self._available(self.blocks[i], p)]

    def unavailable_reason(self, parts: BlockParts, point: str) -> str | None:
        """Why ``blocks.{i}.{point}`` is left out of this model's hooks, or ``None`` if it is available."""
        if self.layout is not None:
            name = f"blocks.{parts.index}.{point}"
            if name in self.layout.unavailable:
                return self.layout.unavailable[name]
            if name not in self.layout.hooks:
                return (
                    "its attention output projection is not called as a module"
                    if point == "attn.hook_z"
                    else "no token layout is known for it"
                )
            return None
        if self._static_available(parts, point):
            return None
        return (
            "its attention uses a relative position bias"
            if point == "attn.hook_pattern"
            else ("its attention output projection is not called as a module")
        )

    def _available(self, parts: BlockParts, point: str) -> bool:
        return self.unavailable_reason(parts, point) is None

    @staticmethod
    def _static_available(parts: BlockParts, point: str) -> bool:
        if point == "attn.hook_pattern":
            has_qk = (parts.q is not None and parts.k is not None) or parts.qkv is not None
            return has_qk and not parts.relative_position
        if point == "attn.hook_z":
            return parts.out_proj is not None
        return True

    def order(self, name: str) -> tuple[int, int]:
        """Sort key: where a hook fires in the forward pass (native module paths sort last)."""
        m = _NAME.match(self.canonical(name))
        if m and m.group(2) in BLOCK_POINTS:
            return int(m.group(1)), BLOCK_POINTS.index(m.group(2))
        return len(self.blocks), 0

    def canonical(self, name: str) -> str:
        m = _STAGE_NAME.match(name)
        if not m:
            return name
        stage, j, point = int(m.group(1)), int(m.group(2)), m.group(3)
        if all(b.stage == 0 for b in self.blocks):
            raise HookNameError(
                f"hook '{name}': stages.<s>.blocks.<j> names are for hierarchical models (Swin); this model has "
                "no stages: use blocks.<i>.<point>"
            )
        in_stage = [b for b in self.blocks if b.stage == stage]
        if not in_stage:
            n_stages = max(b.stage for b in self.blocks) + 1
            raise HookNameError(f"stage {stage} out of range in hook '{name}': this model has stages 0..{n_stages - 1}")
        if j >= len(in_stage):
            raise HookNameError(
                f"block {j} out of range in hook '{name}': stage {stage} has blocks 0..{len(in_stage) - 1}"
            )
        return f"blocks.{in_stage[j].index}.{point}"

    def resolve(self, name: str) -> HookPoint:
        canonical = self.canonical(name)
        if canonical not in self._cache:
            self._cache[canonical] = self._resolve(canonical, name)
        return self._cache[canonical]

    def _resolve(self, name: str, asked: str) -> HookPoint:
        m = _NAME.match(name)
        if m and m.group(2) in BLOCK_POINTS:
            i, point = int(m.group(1)), m.group(2)
            if i >= len(self.blocks):
                raise HookNameError(
                    f"layer {i} out of range in hook '{asked}': this model has blocks 0..{len(self.blocks) - 1}"
                )
            return self._block_point(self.blocks[i], point, f"blocks.{i}.{point}")  # blocks.00 is blocks.0
        try:
            module = self.native_model.get_submodule(name)
        except AttributeError:
            module = None
        if module is None or module is self.native_model:
            raise HookNameError(
                f"unknown hook '{asked}': use blocks.<i>.<point> with <point> one of {', '.join(BLOCK_POINTS)}, "
                "or a native module path (run `clipviz info MODEL` to list them)"
            )
        same = self._same_as_block_point(name, module)
        if same is not None:  # one activation, one name: the native path of a clipviz hook is that hook
            return same
        read, write = _transpose_if(self.seq_first and _is_in_blocks(name, self.blocks))
        return HookPoint(name=name, module=module, native=name, on_input=False, read=read, write=write)

    def _same_as_block_point(self, name: str, module: nn.Module) -> HookPoint | None:
        """The block hook whose activation is ``module``'s output (``mlp.hook_post`` for the MLP's activation
        module), if one is."""
        for parts in self.blocks:
            if name != parts.path and not name.startswith(parts.path + "."):
                continue
            for point in BLOCK_POINTS:
                if self._available(parts, point):
                    candidate = self._block_point(parts, point, f"blocks.{parts.index}.{point}")
                    if candidate.module is module and not candidate.on_input:
                        return candidate
        return None

    def _block_point(self, parts: BlockParts, point: str, name: str) -> HookPoint:
        why = self.unavailable_reason(parts, point)
        if why is not None:
            raise HookNameError(f"hook '{name}' is not available in this model: {why}")
        read, write = _transpose_if(self.seq_first)
        spatial = self.layout.spatial.get(name) if self.layout is not None else None
        if spatial is not None:
            read, write = _flatten_spatial(spatial, self.layout.hooks[name].grid)
        common = {"name": name, "block": parts.index, "read": read, "write": write}
        if point == "hook_resid_pre":
            return HookPoint(module=parts.block, native=parts.path, on_input=True, **common)
        if point == "hook_resid_post":
            return HookPoint(module=parts.block, native=parts.path, on_input=False, **common)
        if point == "hook_resid_mid":
            if self.layout is not None and parts.index in self.layout.post_norm:  # Swinv2: norm after attention
                return HookPoint(module=parts.fc1, native=parts.native("fc1"), on_input=True, **common)
            return HookPoint(module=parts.ln2, native=parts.native("ln2"), on_input=True, **common)
        if point == "hook_attn_out":
            where = "attn_post" if parts.attn_post is not None else "attn"
            return HookPoint(module=getattr(parts, where), native=parts.native(where), on_input=False, **common)
        if point == "mlp.hook_pre":
            if parts.gate is not None:  # gated MLP: the gate's pre-activation
                return HookPoint(module=parts.gate, native=parts.native("gate"), on_input=False, **common)
            if parts.packed_gate is not None:  # gate and up packed in one projection: its gate half, read-only
                half = parts.d_mlp
                first = parts.packed_gate == "first"
                inner = common["read"] or (lambda x: x)
                return HookPoint(
                    name=name,
                    block=parts.index,
                    module=parts.fc1,
                    native=parts.native("fc1"),
                    on_input=False,
                    read=lambda x: inner(x)[..., :half] if first else inner(x)[..., half:],
                    write=None,
                    editable=False,
                )
            if self.layout is not None and parts.index in self.layout.pre_at_act and parts.act is not None:
                # something (SegFormer's depth-wise conv) sits between fc1 and the activation: hook its input
                return HookPoint(module=parts.act, native=parts.native("act"), on_input=True, **common)
            return HookPoint(module=parts.fc1, native=parts.native("fc1"), on_input=False, **common)
        if point == "mlp.hook_post":
            if parts.gated or (parts.act is None and parts.mid is not None):  # the gated product / the hidden units
                return HookPoint(module=parts.mid, native=parts.native("mid"), on_input=True, **common)
            if parts.act is not None:
                return HookPoint(module=parts.act, native=parts.native("act"), on_input=False, **common)
            return HookPoint(module=parts.fc2, native=parts.native("fc2"), on_input=True, **common)
        if point == "hook_mlp_out":
            return HookPoint(module=parts.fc2, native=parts.native("fc2"), on_input=False, **common)
        if point == "attn.hook_z":
            read, write = _split_heads(parts.n_heads, self.seq_first)
            if spatial is not None:  # (B, H, W, heads * d_head) -> (B, H*W, heads, d_head) and back
                flat, unflat = _flatten_spatial(spatial, self.layout.hooks[name].grid)
                split, merge = read, write
                read, write = (lambda x: split(flat(x))), (lambda z: unflat(merge(z)))
            return HookPoint(
                name=name,
                block=parts.index,
                module=parts.out_proj,
                native=parts.native("out_proj"),
                on_input=True,
                read=read,
                write=write,
            )
        # attn.hook_pattern: recomputed from the attention module's input.
        to_bnd = (lambda x: x.transpose(0, 1)) if self.seq_first else (lambda x: x)
        return HookPoint(
            name=name,
            block=parts.index,
            module=parts.attn,
            native=parts.native("attn"),
            on_input=True,
            read=lambda x: attention_pattern(parts, to_bnd(x)),
            write=None,
            editable=False,
        )


def _flatten_spatial(kind: str, grid: tuple[int, int]):
    """Read (B, H, W, C) / (B, C, H, W) activations as (B, H*W, C) row-major tokens, and write them back."""
    gh, gw = grid
    if kind == "nhwc":
        return (lambda x: x.flatten(1, 2)), (lambda t: t.reshape(t.shape[0], gh, gw, t.shape[-1]))
    return (lambda x: x.flatten(2).transpose(1, 2)), (lambda t: t.transpose(1, 2).reshape(t.shape[0], -1, gh, gw))


def _is_in_blocks(name: str, blocks: Sequence[BlockParts]) -> bool:
    return any(name == b.path or name.startswith(b.path + ".") for b in blocks)


def _first_value(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _replace_first(value, new: torch.Tensor):
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    return new


@contextmanager
def installed(
    points: Sequence[tuple[HookPoint, HookFn]],
    stop_after: set[str] | None = None,
) -> Iterator[set[str]]:
    """Install ``(point, fn)`` hooks for the duration of the block; they are removed on any exit. Yields the set
    of the names of the points that have fired so far.

    ``fn(activation, point)`` sees the activation in clipviz's layout and may return a replacement.
    With ``stop_after``, a ``StopForward`` is raised as soon as every named point has fired.
    """
    pending = set(stop_after) if stop_after else set()
    seen: set[str] = set()
    handles = []

    def fired(point: HookPoint) -> None:
        seen.add(point.name)
        pending.discard(point.name)
        if stop_after and not pending:
            raise StopForward

    def visit(point: HookPoint, fn: HookFn, value: torch.Tensor) -> torch.Tensor | None:
        view = point.to_view(value)
        new = fn(view, point)
        if new is None:
            return None
        if not point.editable:
            raise HookNameError(f"hook '{point.name}' is read-only: edit the tensors it is computed from instead")
        if not _same_frame(new, view):  # the token axis may change (an edit that drops tokens), not the rest
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise HookNameError(
                f"the function at hook '{point.name}' returned {got}; a replacement must keep the activation's "
                f"batch and channels, {tuple(view.shape)} (or return None to leave it)"
            )
        return point.to_native(new)

    for point, fn in points:
        if not callable(fn):
            raise HookNameError(f"the hook at '{point.name}' must be a function (activation, point), got {fn!r}")
    try:
        by_module: dict[tuple[int, bool], list[tuple[HookPoint, HookFn]]] = {}
        for point, fn in points:
            by_module.setdefault((id(point.module), point.on_input), []).append((point, fn))
        for (_, on_input), group in by_module.items():
            module = group[0][0].module
            if on_input:
                handles.append(module.register_forward_pre_hook(_pre_hook(group, visit, fired), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(_post_hook(group, visit, fired)))
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _same_frame(new: object, old: torch.Tensor) -> bool:
    """Whether a hook's replacement has the activation's rank, batch and last (channel) axis."""
    return (
        isinstance(new, torch.Tensor)
        and new.ndim == old.ndim
        and new.shape[0] == old.shape[0]
        and (old.ndim < 3 or new.shape[-1] == old.shape[-1])
        and (old.ndim >= 3 or new.shape == old.shape)
    )


def check_fired(points: Sequence[HookPoint], seen: set[str]) -> None:
    """After a whole forward pass: refuse a hook that never ran (a module the image pass does not use, such as
    one of a CLIP model's text tower), which would otherwise have read or edited nothing without a word."""
    missing = next((p for p in points if p.name not in seen), None)
    if missing is not None:
        raise HookNameError(
            f"hook '{missing.name}' never ran in the forward pass of an image: it is not part of what the image "
            "tower computes (a text-tower module?); `clipviz info MODEL` lists the hooks that run"
        )


def _apply(group, visit, fired, value):
    """Run every hook of ``group`` on ``value`` in turn; returns the (possibly replaced) value and whether it was."""
    changed = False
    for point, fn in group:
        new = visit(point, fn, value)
        if new is not None:
            value, changed = new, True
    for point, _ in group:
        fired(point)
    return value, changed


def _pre_hook(group, visit, fired):
    def hook(module, args, kwargs):
        if args:
            value, from_args = args[0], True
        else:
            key = next(iter(kwargs))
            value, from_args = kwargs[key], False
        value, changed = _apply(group, visit, fired, value)
        if not changed:
            return None
        if from_args:
            return (value, *args[1:]), kwargs
        return args, {**kwargs, key: value}

    return hook


def _post_hook(group, visit, fired):
    def hook(module, args, output):
        value, changed = _apply(group, visit, fired, _first_value(output))
        return _replace_first(output, value) if changed else None

    return hook


@contextmanager
def forwards_replaced(modules: Sequence[nn.Module], forward: Callable[..., torch.Tensor]) -> Iterator[int]:
    """Inside the ``with`` block each module runs ``forward(module, *args)`` instead of its own forward (set on
    the instance, so the module's hooks still fire around it); afterwards each has its own forward back, also an
    instance forward it had before. Yields how many modules were switched."""
    previous = [m.__dict__.get("forward") for m in modules]
    for m in modules:
        m.forward = functools.partial(forward, m)
    try:
        yield len(modules)
    finally:
        for m, before in zip(modules, previous, strict=True):
            if before is None:
                del m.forward
            else:
                m.forward = before
