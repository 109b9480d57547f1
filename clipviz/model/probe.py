"""Token layouts of every hook of every block, measured on the model itself at load time.

A block's activations are only useful if clipviz knows which token is which: how many prefix tokens (CLS,
distillation, registers) come first, and the patch grid of the rest, in row-major order. Rather than assuming one
layout for the whole model, ``probe`` runs one forward pass (two random images at the model's input size) with
every hook point watched, and for each hook of each block:

* an activation whose first axis is not the batch (windows or patches folded into the batch axis, as in Swin's
  attention or MobileViT) is left out, with that reason;
* ``(B, H, W, C)`` and ``(B, C, H, W)`` activations (timm Swin, ViTDet, VOLO) are flattened row-major into
  ``(B, H*W, C)`` tokens, with the grid read from the activation itself;
* ``(B, N, C)`` activations get the model's prefix tokens (or none, where the class token joins only in a later
  block, as in ConViT and CaiT) and a grid that accounts for the rest: the stage's grid seen in the same block,
  the patch grid (halved per stage for hierarchical models), or, for square inputs, a square grid (PiT's
  overlapping stem, CrossViT's branches); a count that fits none of these is left out rather than guessed;
* ``attn.hook_pattern`` is checked against the model's own attention (see ``clipviz.model.attention``).

A block whose ``hook_resid_post`` or ``mlp.hook_post`` has no known layout is left out when it comes after every
kept block (class-attention heads of CaiT and XCiT, which only update the class token); anywhere else the model is
refused with the reason. Families whose token order is not row-major although the counts fit (Hiera's unrolled
order) are refused by name.
"""

from __future__ import annotations

import math
import sysconfig
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from clipviz.errors import UnsupportedModelError
from clipviz.model.architecture import BlockParts
from clipviz.model.attention import attention_values, check_pattern, check_pattern_float32
from clipviz.model.evaluation import evaluating
from clipviz.model.layout import BLOCK_POINTS, TokenLayout

#: Families whose tokens are not in row-major order even where the counts fit a grid.
REFUSED_ORDER = {
    "Hiera": "Hiera unrolls its tokens into a mask-unit order that is not row-major",
    "HieraModel": "Hiera unrolls its tokens into a mask-unit order that is not row-major",
}


@dataclass
class ModelLayout:
    """What the probe found: a layout per hook, the hooks left out (with why) and the blocks left out."""

    hooks: dict[str, TokenLayout] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    spatial: dict[str, str] = field(default_factory=dict)  # hook -> "nhwc" / "nchw": flattened to tokens
    post_norm: set[int] = field(default_factory=set)  # blocks that normalise after attention (Swinv2)
    pre_at_act: set[int] = field(default_factory=set)  # blocks whose pre-activation is the activation's input
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (native path, reason)
    indirect_write: dict[int, str] = field(default_factory=dict)  # block -> why its neurons have no fixed write


@contextmanager
def native_failures(architecture: str, what: str) -> Iterator[None]:
    """A load-time check's native forward pass: any library error becomes a one-line refusal that says which
    check ran it (a ``ClipvizError`` passes as it is). An error raised in clipviz's own code called back from the
    model's forward pass (a hook of the check) is a bug of clipviz, not a fact of the model: it is raised as a
    ``RuntimeError`` with its traceback, never reported as an unsupported architecture."""
    from clipviz.errors import ClipvizError

    try:
        yield
    except (ClipvizError, MemoryError, torch.OutOfMemoryError):  # running out of memory says nothing of the model
        raise
    except Exception as error:  # noqa: BLE001 - any failure of the native forward pass becomes one line
        first = (str(error).splitlines() or [""])[0][:160]
        if raised_in_a_hook(error):
            raise RuntimeError(
                f"clipviz's own hook failed during its check of {what} on {architecture} "
                f"({type(error).__name__}: {first}): a bug in clipviz, please report it with this traceback"
            ) from error
        raise UnsupportedModelError(
            f"unsupported architecture {architecture.split('/')[-1]}: its forward pass failed on {what} "
            f"({type(error).__name__}: {first}); clipviz cannot hook it"
        ) from error


_CLIPVIZ = Path(__file__).resolve().parents[1]
_TORCH = Path(torch.__file__).resolve().parent
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def _passes_through(path: Path) -> bool:
    """torch's and the standard library's frames (module calls, hooks' dispatch, context managers)."""
    if path.is_relative_to(_TORCH):
        return True
    return path.is_relative_to(_STDLIB) and not {"site-packages", "dist-packages"} & set(path.parts)


def raised_in_a_hook(error: BaseException) -> bool:
    """Whether ``error`` was raised while the model's own code was running clipviz's (a hook): a frame of clipviz
    inside a frame of the model's library (or of any other code not clipviz's), torch's and the standard library's
    frames aside."""
    inside_the_model = False
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_filename.startswith("<"):  # <string>, <frozen ...>: no file of anyone's
            continue
        path = Path(frame.f_code.co_filename).resolve()
        if _passes_through(path):
            continue
        if not path.is_relative_to(_CLIPVIZ):
            inside_the_model = True
        elif inside_the_model:
            return True
    return False


#: Names under which an attention module keeps a norm applied to its merged heads before the output projection:
#: timm's ``scale_norm`` / Eva's ``scale_attn_inner`` (``norm``), open_clip's ``scale_attn_inner`` (``ln_inner``),
#: EVA-CLIP's and torchscale's BEiT3 (``inner_attn_ln``, ``sub_norm``).
_INNER_NORMS = ("norm", "ln_inner", "inner_attn_ln", "sub_norm", "inner_norm")


def _norm_over_heads(parts: BlockParts) -> str | None:
    """The attribute name of a norm that may sit between the heads' values and the output projection (the probe
    checks that its output is the projection's input: PVT's ``norm`` of its reduced keys is not)."""
    for name in _INNER_NORMS:
        module = getattr(parts.attn, name, None) if parts.attn is not None else None
        if isinstance(module, nn.Module) and not isinstance(module, nn.Identity):
            return f"attn.{name}"
    return None


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) and value else value


def _input(args, kwargs):
    if args:
        return args[0]
    return next(iter(kwargs.values()), None) if kwargs else None


def _grid_candidates(base: tuple[int, int] | None, seen: list[tuple[int, int]], square: bool, n: int):
    out = list(seen)
    if base is not None:
        h, w = base
        for s in range(6):
            if h >> s and w >> s:
                out.append((h >> s, w >> s))
        # odd sizes: ceil halving (Swin pads odd grids)
        for s in range(1, 6):
            out.append((math.ceil(h / 2**s), math.ceil(w / 2**s)))
    if square and n > 1:
        r = math.isqrt(n)
        if r * r == n and r > 1:
            out.append((r, r))
    return out


def _infer_tokens(n: int, prefix: tuple[str, ...], grids: list[tuple[int, int]]) -> TokenLayout | None:
    for pre in (prefix, ()) if prefix else ((),):
        rest = n - len(pre)
        for g in grids:
            if g[0] * g[1] == rest and rest > 1:  # one token is a class token's update, not a grid
                return TokenLayout(prefix=pre, grid=g)
    return None


@torch.no_grad()
def probe(
    native: nn.Module,
    blocks: list[BlockParts],
    run,
    images: torch.Tensor,
    prefix: tuple[str, ...],
    base_grid: tuple[int, int] | None,
    seq_first: bool = False,
    architecture: str = "",
    size_source: str = "",
) -> ModelLayout:
    """Measure the layout of every hook of every block with one forward pass ``run(images)``; ``size_source``
    says where the images' size came from when the model does not declare it (part of a failure's message)."""
    for key, why in REFUSED_ORDER.items():
        if architecture.split("/")[-1] == key or any(type(m).__name__ == key for m in native.modules()):
            raise UnsupportedModelError(f"unsupported architecture {key}: {why}, so clipviz cannot place its tokens")
    batch = images.shape[0]
    shapes: dict[str, tuple[int, ...]] = {}
    pattern_reason: dict[int, str | None] = {}
    stash: dict[tuple[int, str], torch.Tensor] = {}
    ln1_differs: set[int] = set()  # post-norm blocks
    act_differs: set[int] = set()
    norm_before_z: dict[int, str] = {}  # block -> the norm whose output is the output projection's input
    handles = []

    def fix(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(0, 1) if seq_first and x.ndim == 3 else x

    def record(name: str, x) -> None:
        if isinstance(x, torch.Tensor) and name not in shapes:
            shapes[name] = tuple(fix(x).shape)

    def on(module: nn.Module, fn, pre: bool) -> None:
        if module is None:
            return
        if pre:
            handles.append(module.register_forward_pre_hook(lambda m, a, k: fn(_input(a, k)), with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o: fn(_first(o))))

    for parts in blocks:
        i = parts.index
        p = f"blocks.{i}."

        def block_in(x, i=i, p=p):
            record(p + "hook_resid_pre", x)

        def _same(a, b) -> bool:
            return a.shape == b.shape and torch.equal(a, b)

        def ln2_in(x, i=i, p=p):
            # post-norm (Swinv2): the second norm is applied to the MLP's output, so its input *is* fc2's output
            record(p + "hook_resid_mid", x)
            out = stash.pop((i, "fc2"), None)
            if isinstance(x, torch.Tensor) and out is not None and _same(x, out):
                ln1_differs.add(i)
            elif isinstance(x, torch.Tensor) and out is None:
                stash[(i, "ln2")] = x

        def fc2_out(x, i=i, p=p):
            record(p + "hook_mlp_out", x)
            seen_norm = stash.pop((i, "ln2"), None) is not None  # pre-norm: the norm came first
            if isinstance(x, torch.Tensor) and not seen_norm:
                stash[(i, "fc2")] = x

        def attn_in(x, i=i, p=p):
            record(p + "attn.hook_pattern", x)
            if isinstance(x, torch.Tensor):
                stash[(i, "attn")] = fix(x)

        def attn_call(module, args, kwargs, i=i, parts=parts):
            # half precision: check the pattern on a float32 copy of the module, with the arguments it was given
            x = _input(args, kwargs)
            half = isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16)
            if half and fix(x).ndim == 3 and fix(x).shape[0] == batch:
                pattern_reason[i] = check_pattern_float32(parts, args, kwargs, seq_first)

        def z_in(x, i=i, p=p, parts=parts):
            record(p + "attn.hook_z", x)
            normed = stash.pop((i, "inner norm"), None)  # a norm over the merged heads ran just before?
            if isinstance(x, torch.Tensor) and normed is not None and _same(normed[1], x):
                norm_before_z[i] = normed[0]
            x_attn = stash.pop((i, "attn"), None)
            if isinstance(x, torch.Tensor) and x_attn is not None and i not in pattern_reason:
                if x_attn.ndim != 3 or x_attn.shape[0] != batch:
                    pattern_reason[i] = "its attention module does not see (batch, tokens, channels) inputs"
                else:
                    pattern_reason[i] = check_pattern(parts, x_attn, fix(x))

        def attn_out(x, i=i, p=p, parts=parts):
            record(p + "hook_attn_out", x)
            x_attn = stash.pop((i, "attn"), None)
            if isinstance(parts.attn, nn.MultiheadAttention) and x_attn is not None and i not in pattern_reason:
                # torch's MultiheadAttention never calls out_proj as a module: check its output instead
                out = fix(_first(x))
                if x_attn.ndim != 3 or x_attn.shape[0] != batch:
                    pattern_reason[i] = "its attention module does not see (batch, tokens, channels) inputs"
                    return
                z = attention_values(parts, x_attn)
                mha = parts.attn
                mine = torch.nn.functional.linear(z, mha.out_proj.weight, mha.out_proj.bias)
                ok = bool((mine - out).abs().max() <= 1e-3 * out.abs().max().clamp_min(1e-6) + 1e-5)
                pattern_reason[i] = None if ok else "the recomputed attention did not reproduce the model's output"

        on(parts.block, block_in, True)
        on(parts.block, lambda x, p=p: record(p + "hook_resid_post", x), False)
        on(parts.attn, attn_in, True)
        handles.append(parts.attn.register_forward_pre_hook(attn_call, with_kwargs=True))
        on(parts.out_proj, z_in, True)
        inner = _norm_over_heads(parts)
        if inner is not None:
            on(
                parts.attn.get_submodule(inner.removeprefix("attn.")),
                lambda x, i=i, n=inner: stash.__setitem__((i, "inner norm"), (n, x)),
                False,
            )
        on(parts.attn, attn_out, False)
        on(parts.ln2, ln2_in, True)
        on(parts.fc1, lambda x, p=p: record(p + "fc1_in", x), True)

        def pre_out(x, i=i, p=p):
            record(p + "mlp.hook_pre", x)
            if isinstance(x, torch.Tensor):
                stash[(i, "fc1")] = x

        def act_in(x, i=i):
            first = stash.pop((i, "fc1"), None)
            if (
                isinstance(x, torch.Tensor)
                and first is not None
                and (x.shape != first.shape or not torch.equal(x, first))
            ):
                act_differs.add(i)

        on(parts.gate if parts.gate is not None else parts.fc1, pre_out, False)
        if not parts.gated and parts.act is not None:
            on(parts.act, act_in, True)
        if parts.gated or parts.act is None:
            on(parts.mid, lambda x, p=p: record(p + "mlp.hook_post", x), True)
        else:
            on(parts.act, lambda x, p=p: record(p + "mlp.hook_post", x), False)
        on(parts.fc2, fc2_out, False)
    try:
        run(images)
    except UnsupportedModelError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of the native forward pass becomes one line
        first = (str(error).splitlines() or [""])[0][:200]
        hint = (
            ": its forward needs text (input_ids); wrap its vision tower alone: clipviz.wrap(<the tower module>)"
            if "input_ids" in first
            else ""
        )
        size = f" ({size_source})" if size_source else ""
        raise UnsupportedModelError(
            f"the model's forward pass failed on a {tuple(images.shape[-2:])} image{size} ({type(error).__name__}: "
            f"{first}); clipviz cannot hook it{hint}"
        ) from error
    finally:
        for h in handles:
            h.remove()
    stash.clear()
    for i in act_differs:  # e.g. SegFormer's depth-wise conv between fc1 and the activation
        record_at = f"blocks.{i}."
        shapes.pop(record_at + "mlp.hook_pre", None)
    layout = _analyse(
        blocks,
        shapes,
        pattern_reason,
        ln1_differs,
        batch,
        prefix,
        base_grid,
        square=images.shape[-1] == images.shape[-2],
        architecture=architecture,
    )
    for i, inner in norm_before_z.items():
        name = f"blocks.{i}.attn.hook_z"
        if layout.hooks.pop(name, None) is not None:
            layout.spatial.pop(name, None)
            layout.unavailable[name] = (
                f"a norm over all heads ({inner}) sits between the heads' values and the output projection, so the "
                "projection's input is not per-head values"
            )
    for i in act_differs:
        name = f"blocks.{i}.mlp.hook_pre"
        layout.unavailable.pop(name, None)
        layout.pre_at_act.add(i)
        post = layout.hooks.get(f"blocks.{i}.mlp.hook_post")
        if post is not None:
            layout.hooks[name] = post
            if f"blocks.{i}.mlp.hook_post" in layout.spatial:
                layout.spatial[name] = layout.spatial[f"blocks.{i}.mlp.hook_post"]
        else:
            layout.unavailable[name] = "no token layout is known for it"
    return layout


def _analyse(
    blocks, shapes, pattern_reason, ln1_differs, batch, prefix, base_grid, square, architecture: str = ""
) -> ModelLayout:
    out = ModelLayout()
    last_grid: list[tuple[int, int]] = []
    excluded_at: list[int] = []
    for parts in blocks:
        i = parts.index
        p = f"blocks.{i}."
        post_norm = i in ln1_differs and shapes.get(p + "fc1_in") is not None
        if post_norm:
            out.post_norm.add(i)
            shapes[p + "hook_resid_mid"] = shapes[p + "fc1_in"]
        seen = [
            (s[1], s[2]) if s[-1] in (parts.d_model, parts.d_mlp, 2 * parts.d_mlp) else (s[2], s[3])
            for name, s in shapes.items()
            if name.startswith(p) and len(s) == 4 and s[0] == batch
        ]
        widths = {
            "hook_resid_pre": (parts.d_model,),
            "hook_resid_post": (parts.d_model,),
            "hook_resid_mid": (parts.d_model,),
            "hook_attn_out": (parts.d_model,),
            "attn.hook_pattern": (parts.d_model,),
            "hook_mlp_out": (parts.d_model,),
            "attn.hook_z": None,
            "mlp.hook_pre": (parts.d_mlp, 2 * parts.d_mlp),
            "mlp.hook_post": (parts.d_mlp,),
        }
        for point in BLOCK_POINTS:
            name = p + point
            shape = shapes.get(name)
            if point == "attn.hook_z" and parts.out_proj is None:
                continue
            if shape is None:
                out.unavailable[name] = "its module is never called in the forward pass"
                continue
            if shape[0] != batch:
                out.unavailable[name] = (
                    "its first axis is not the batch (windows or patches folded into it, or a sequence-first layout)"
                )
                continue
            channels = widths[point]
            if len(shape) == 4:
                if channels is None or shape[-1] in channels:
                    out.spatial[name], grid = "nhwc", (shape[1], shape[2])
                elif shape[1] in channels:
                    out.spatial[name], grid = "nchw", (shape[2], shape[3])
                else:
                    out.unavailable[name] = f"a 4-D activation {shape} of unknown layout"
                    continue
                out.hooks[name] = TokenLayout(prefix=(), grid=grid)
                continue
            if len(shape) != 3:
                out.unavailable[name] = f"its activation has shape {shape}, not (batch, tokens, channels)"
                continue
            layout = _infer_tokens(shape[1], prefix, _grid_candidates(base_grid, seen + last_grid, square, shape[1]))
            if layout is None:
                layout = _infer_tokens(shape[1], prefix, _grid_candidates(None, [], square, shape[1] - len(prefix)))
            if layout is None and shape[1] == 1:
                out.unavailable[name] = "it carries a single token (a class-attention block updating the class token)"
                continue
            if layout is None:
                out.unavailable[name] = (
                    f"its {shape[1]} tokens fit neither the patch grid nor the model's "
                    f"{len(prefix)} prefix tokens plus a grid"
                )
                continue
            out.hooks[name] = layout
        for point in ("attn.hook_pattern", "attn.hook_z"):
            name = p + point
            if name in out.hooks:
                reason = pattern_reason.get(i, "its attention could not be checked against the model's output")
                if point == "attn.hook_pattern" and reason is not None:
                    out.unavailable[name] = f"not the model's attention: {reason}"
                    del out.hooks[name]
                elif point == "attn.hook_pattern" and name in out.spatial:
                    out.unavailable[name] = "its attention module does not see (batch, tokens, channels) inputs"
                    del out.hooks[name]
        attn_in = out.hooks.get(p + "attn.hook_pattern")
        z = out.hooks.get(p + "attn.hook_z")
        if z is not None and attn_in is not None and z != attn_in:
            out.unavailable[p + "attn.hook_pattern"] = "its query tokens differ from its key tokens"
            del out.hooks[p + "attn.hook_pattern"]
        missing = [pt for pt in ("hook_resid_post", "mlp.hook_post") if p + pt not in out.hooks]
        if missing:
            why = out.unavailable.get(p + missing[0], "no known layout")
            out.excluded.append((parts.path, f"{missing[0]}: {why}"))
            excluded_at.append(i)
            continue
        last_grid = [out.hooks[p + "hook_resid_post"].grid]
    kept = [b.index for b in blocks if b.index not in excluded_at]
    if not kept or (excluded_at and min(excluded_at) < max(kept)):
        path, why = out.excluded[0] if out.excluded else ("?", "no known layout")
        raise UnsupportedModelError(
            f"unsupported architecture {architecture.split('/')[-1]}: block {path}'s {why}, so clipviz cannot give "
            "its tokens a layout"
        )
    return out


def probe_model(model) -> ModelLayout:
    """``probe`` for a ``HookedVisionModel`` under construction (two seeded random images at its input size)."""
    backend = model.backend
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, *backend.image_size, generator=gen)
    try:
        patch = backend.patch_size
        base = (backend.image_size[0] // patch[0], backend.image_size[1] // patch[1])
    except (TypeError, ZeroDivisionError, IndexError):
        base = None
    with evaluating(model.native):
        return probe(
            model.native,
            model.blocks,
            lambda x: backend.forward(model.prepare(x)),
            images,
            tuple(backend.prefix_tokens),
            base,
            seq_first=backend.seq_first,
            architecture=backend.architecture,
            size_source=backend.image_size_source,
        )
