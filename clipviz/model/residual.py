"""What each block writes into its residual stream, checked on the model itself at load time.

In a pre-norm block the residual stream decomposes as TransformerLens users read it: ``resid_mid = resid_pre +
attn_out`` and ``resid_post = resid_mid + mlp_out`` (times the block's layer scales, which ``hook_attn_out`` and
``hook_mlp_out`` come before), and ``mlp_out`` is the MLP's output layer applied to ``mlp.hook_post``, so each
neuron writes a fixed direction (what the direct lens reads). A norm after a sub-layer (post-norm blocks), a layer
between the two (XCiT's local patch interaction, DaViT's convolutional position encoding) or a shortcut that changes
the tokens (MViTv2's pooled residual) breaks these identities, and a decomposition or a direct lens built on them
would be silently wrong. One forward pass on one seeded random image measures them block by block; a hook whose
identity fails (or cannot be checked) is left out with the reason, and the direct lens refuses the block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from clipviz.model.evaluation import evaluating
from clipviz.model.hooks import installed
from clipviz.model.probe import native_failures

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

_POINTS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


def _mismatch(
    actual: torch.Tensor, expected: torch.Tensor, size: torch.Tensor, rtol: float, stream: torch.Tensor, eps: float
) -> float | None:
    """The largest error relative to the largest value of ``size`` (what the sub-layer wrote, not the stream it
    was added to: a stream that grows would hide a wrong write), or ``None`` when it is within ``rtol`` of the
    write plus the rounding of numbers as large as the ``stream`` (``eps``: a few units of the model's precision;
    a small layer-scaled write in bf16 is otherwise lost in the stream's rounding)."""
    if actual.shape != expected.shape:
        return float("inf")
    error = float((actual - expected).abs().max())
    written = float(size.abs().max().clamp_min(1e-12))
    return None if error <= rtol * written + eps * float(stream.abs().max()) else error / written


def _sum(stream: torch.Tensor, write: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor | None:
    """``stream + scale * write``, or ``None`` where the two do not have one shape (a shortcut that reshapes)."""
    if stream.shape != write.shape:
        return None
    return stream + (write if scale is None else write * scale.detach().float().to(write.device))


_RESHAPED = (
    "its residual stream changes shape within the block (a pooled or projected shortcut), so it cannot be checked"
)


def _write_reason(stream, write, after, scale, names: tuple[str, str, str], rtol: float, eps: float) -> str | None:
    """Why ``write`` (a sub-layer's output) is not what its block adds between ``stream`` and ``after``, or ``None``
    when ``stream + scale * write == after``; ``names`` are the three hooks' short names."""
    before, out, then = names
    if stream is None or after is None:
        return f"hook_{before} and hook_{then} are needed to check it and are not available"
    if (total := _sum(stream, write, scale)) is None:
        return _RESHAPED
    if (error := _mismatch(total, after, after - stream, rtol, after, eps)) is not None:
        return (
            f"not what the block adds to its residual stream ({before} + {out}, times any layer scale, misses {then} "
            f"by {error:.2g} of the block's write: a norm, a layer or a reshaping shortcut sits between)"
        )
    return None


def _block_reasons(parts, seen: dict[str, torch.Tensor], rtol: float, eps: float) -> dict[str, str]:
    """``{point: why it is left out}`` for one block, from its activations ``seen`` (point -> float tensor)."""
    out: dict[str, str] = {}
    pre, attn, mid = seen.get("hook_resid_pre"), seen.get("hook_attn_out"), seen.get("hook_resid_mid")
    hidden, mlp, post = seen.get("mlp.hook_post"), seen.get("hook_mlp_out"), seen.get("hook_resid_post")
    for point, stream, write, after, scale, names in (
        ("hook_attn_out", pre, attn, mid, parts.attn_layer_scale(), ("resid_pre", "attn_out", "resid_mid")),
        ("hook_mlp_out", mid, mlp, post, parts.layer_scale(), ("resid_mid", "mlp_out", "resid_post")),
    ):
        if write is not None and (why := _write_reason(stream, write, after, scale, names, rtol, eps)) is not None:
            out[point] = why
    if "hook_mlp_out" in out or mlp is None or hidden is None:
        out["direct write"] = out.get("hook_mlp_out", "its MLP output could not be checked")
    elif (written := _output_layer(parts, hidden)) is None:
        out["direct write"] = "its MLP's output layer does not take mlp.hook_post's channels"
    elif (error := _mismatch(written, mlp, mlp, rtol, mlp, eps)) is not None:
        out["direct write"] = (
            f"its MLP's output layer applied to mlp.hook_post misses hook_mlp_out by {error:.2g} of its size (a norm "
            "or another operation sits between the hidden units and the output weight)"
        )
    return out


def _output_layer(parts, hidden: torch.Tensor) -> torch.Tensor | None:
    """The MLP's output layer (a linear map, or a 1x1 convolution's matrix) applied to ``hidden``, or ``None``
    where its input width is not ``hidden``'s."""
    bias = getattr(parts.fc2, "bias", None)
    weight = parts.fc2.weight.detach().flatten(1).float().to(hidden.device)
    if weight.shape[1] != hidden.shape[-1]:
        return None
    return F.linear(hidden, weight, None if bias is None else bias.detach().float().to(hidden.device))


@torch.no_grad()
def check_residual_writes(model) -> None:
    """Leave out ``hook_attn_out`` / ``hook_mlp_out`` where they are not the block's writes, and record the blocks
    whose neurons have no fixed write direction (``model.token_layouts.indirect_write``), for a ``HookedVisionModel``
    under construction."""
    layout = model.token_layouts
    available = set(model.hook_names())
    seen: dict[int, dict[str, torch.Tensor]] = {}
    reasons: dict[int, dict[str, str]] = {}
    by_index = {parts.index: parts for parts in model.blocks}
    last: list[torch.Tensor] = []  # the last block's output, for the image projection

    def keep(value: torch.Tensor, point) -> None:
        block, name = point.block, point.name.split(".", 2)[2]
        seen.setdefault(block, {})[name] = value.detach().float()
        if name == "hook_resid_post":  # the block is done: measure it and let its activations go
            if block == model.blocks[-1].index:
                last.append(value.detach().float())
            parts = by_index[block]
            dtype = parts.fc2.weight.dtype
            half = dtype in (torch.float16, torch.bfloat16)
            eps = 8 * torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
            reasons[block] = _block_reasons(parts, seen.pop(block), 3e-2 if half else 1e-3, eps)

    pairs = [
        (model.registry.resolve(f"blocks.{parts.index}.{point}"), keep)
        for parts in model.blocks
        for point in _POINTS
        if f"blocks.{parts.index}.{point}" in available
    ]
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, *model.backend.image_size, generator=generator)
    checking = "one image (the residual-stream check)"
    with evaluating(model.native), native_failures(model.backend.architecture, checking), installed(pairs):
        output = model(image)
    check_projection(model, last[0] if last else None, output)
    for parts in model.blocks:
        never = "its block's output was never seen, so it could not be checked"
        why = reasons.get(parts.index, dict.fromkeys(("hook_attn_out", "hook_mlp_out", "direct write"), never))
        if parts.index in layout.post_norm:  # known from the probe, whatever the numbers say (half precision)
            post = "a post-norm block: a norm sits between each sub-layer's output and the residual stream"
            why = dict.fromkeys(("hook_attn_out", "hook_mlp_out", "direct write"), post)
        for point in ("hook_attn_out", "hook_mlp_out"):
            name = f"blocks.{parts.index}.{point}"
            if point in why and name in layout.hooks:
                del layout.hooks[name]
                layout.unavailable[name] = why[point]
        if "direct write" in why:
            layout.indirect_write[parts.index] = why["direct write"]


def check_projection(model: HookedVisionModel, stream: torch.Tensor | None, output: torch.Tensor) -> None:
    """The direct lens reads a neuron's write through the image projection, ``embedding = matrix @
    final_norm(last block's output at the pooled token)``. Measured on the residual check's image (``stream``: the
    last block's output, ``output``: the model's embedding): where the model's embedding is not that (BLIP applies
    its final norm twice), the projection is dropped and the direct lens refused, with the reason in the notes."""
    backend = model.backend
    proj = backend.projection
    if proj is None:
        return
    why = None
    if stream is None:
        why = "the last block's output could not be read"
    else:
        with torch.no_grad():
            norm = proj.final_norm
            token = stream[:, proj.pooled_token].to(next(norm.parameters(), stream).dtype)
            predicted = norm(token).float() @ proj.matrix().detach().float().T.to(stream.device)
        output = output.detach().float()
        dtype = model.dtype
        rtol = 3e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3
        if predicted.shape != output.shape:
            why = f"it gives {tuple(predicted.shape)} where the model's embedding is {tuple(output.shape)}"
        elif float((predicted - output).abs().max()) > rtol * float(output.abs().max().clamp_min(1e-12)):
            error = float((predicted - output).abs().max()) / float(output.abs().max().clamp_min(1e-12))
            why = f"it is {error:.1%} of the largest value away from the model's embedding"
    if why is not None:
        backend.projection = None
        backend.notes = (
            *backend.notes,
            "the direct lens is left out: the image embedding is not the projection of the final norm of the "
            f"pooled token ({why})",
        )
