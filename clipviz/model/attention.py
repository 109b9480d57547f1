"""Attention probabilities recomputed the model's way, and the check that they are exact.

``attn.hook_pattern`` is recomputed from the attention module's input: ``softmax(q k^T * scale)`` with the module's
own projections, biases (timm EVA keeps ``q_bias`` / ``v_bias`` apart from a bias-free ``qkv``), q/k norms and scale.
Many models change that formula (relative position biases, RoPE, windows, reduced keys, channel attention, cosine
attention): rather than trusting a formula, clipviz checks it on the model itself at load time. ``pattern @ v`` (with
the module's own value projection) must reproduce what the model feeds its output projection; where it does not, or
where it cannot be checked, the hook is left out of the model's hook list and the reason is shown in ``summary()``.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from clipviz.model.architecture import BlockParts

_V = ("v_proj", "attention.value", "value", "self.value")


def _get(module: nn.Module, dotted: str):
    for part in dotted.split("."):
        module = module._modules.get(part) if isinstance(module, nn.Module) else None
        if module is None:
            return None
    return module


def _value_proj(parts: BlockParts) -> nn.Linear | None:
    for alias in _V:
        found = _get(parts.attn, alias)
        if isinstance(found, nn.Linear):
            return found
    return None


def _bias(attn: nn.Module, name: str, like: torch.Tensor) -> torch.Tensor | None:
    value = getattr(attn, name, None)
    return value.to(like.dtype) if isinstance(value, torch.Tensor) else None


def projections(parts: BlockParts, x: torch.Tensor, need_v: bool = False):
    """``q, k`` (and ``v``) as (B, heads, N, d_head), computed with the attention module's own weights."""
    attn, heads = parts.attn, parts.n_heads
    v = None
    if parts.q is not None and parts.k is not None:
        q, k = parts.q(x), parts.k(x)
        if need_v:
            vp = _value_proj(parts)
            if vp is None:
                raise LookupError("no value projection")
            v = vp(x)
    elif isinstance(parts.qkv, nn.MultiheadAttention):
        q, k, v = F.linear(x, parts.qkv.in_proj_weight, parts.qkv.in_proj_bias).chunk(3, dim=-1)
    elif parts.qkv is not None:
        q, k, v = parts.qkv(x).chunk(3, dim=-1)
        for name, t in (("q_bias", "q"), ("k_bias", "k"), ("v_bias", "v")):
            b = _bias(attn, name, x)
            if b is not None:
                if t == "q":
                    q = q + b
                elif t == "k":
                    k = k + b
                else:
                    v = v + b
    else:
        raise LookupError("no query/key projections")
    b, n, _ = q.shape

    def split(t):
        return t.reshape(b, n, heads, -1).transpose(1, 2)

    q, k = split(q), split(k)
    v = split(v) if v is not None else None
    for norm_name in ("q_norm", "k_norm"):
        norm = getattr(attn, norm_name, None)
        if isinstance(norm, nn.Module):
            if norm_name == "q_norm":
                q = norm(q)
            else:
                k = norm(k)
    return q, k, v


def _scale(parts: BlockParts, d_head: int) -> float:
    for owner in (parts.attn, _get(parts.attn, "attention"), _get(parts.attn, "self")):
        for attr in ("scale", "scaling"):
            value = getattr(owner, attr, None) if owner is not None else None
            if isinstance(value, float) and value > 0:
                return value
    return d_head**-0.5


def attention_pattern(parts: BlockParts, x: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (B, heads, N, N) recomputed from the attention module's input ``x`` (B, N, D)."""
    q, k, _ = projections(parts, x)
    scores = (q @ k.transpose(-1, -2)) * _scale(parts, q.shape[-1])
    return scores.float().softmax(dim=-1).to(x.dtype)


def attention_values(parts: BlockParts, x: torch.Tensor) -> torch.Tensor:
    """``pattern @ v`` merged over heads (B, N, heads * d_head), as the output projection would see it."""
    q, k, v = projections(parts, x, need_v=True)
    pattern = ((q @ k.transpose(-1, -2)) * _scale(parts, q.shape[-1])).float().softmax(-1).to(v.dtype)
    z = (pattern @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    norm = getattr(parts.attn, "norm", None)  # timm's scale_norm sits between the values and the projection
    if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
        z = norm(z)
    return z


def suspected_reason(parts: BlockParts) -> str:
    """The likeliest reason a plain ``softmax(q k^T)`` differs from this block's attention (for messages)."""
    attn, block = parts.attn, parts.block
    names = {n.rsplit(".", 1)[-1].lower() for n, _ in block.named_modules()}
    names |= {n.rsplit(".", 1)[-1].lower() for n, _ in block.named_parameters()}
    names |= {n.rsplit(".", 1)[-1].lower() for n, _ in block.named_buffers()}
    kind = type(attn).__name__.lower()
    try:
        params = set(inspect.signature(attn.forward).parameters) | set(inspect.signature(block.forward).parameters)
    except (TypeError, ValueError):
        params = set()
    heads = getattr(attn, "num_heads", None)
    kv = next((getattr(attn, a) for a in ("num_kv_heads", "num_key_value_heads", "kv_heads") if hasattr(attn, a)), None)
    if isinstance(heads, int) and isinstance(kv, int) and kv != heads:
        return f"grouped-query attention ({kv} key/value heads for {heads} query heads)"
    if any("rope" in n or "rotary" in n or "freqs" in n for n in names | params) or "position_embeddings" in params:
        return "rotary position embedding (RoPE)"
    if any("relative_position" in n or "rel_pos" in n or "attention_biases" in n or n == "rel_pos" for n in names):
        return "relative position bias"
    if "cpb_mlp" in names or "logit_scale" in names:
        return "cosine attention with a continuous position bias"
    if "xca" in kind or "temperature" in names or "channel" in kind:
        return "channel (cross-covariance) attention, not attention over tokens"
    if any(getattr(m, "window_size", None) for m in (attn, block)) or "window" in kind or "locally" in kind:
        return "windowed attention"
    if names & {"sr", "kv", "pool_k", "pool_q", "pool_v", "sequence_reduction"}:
        return "reduced (pooled or sub-sampled) keys"
    if names & {"proj_l", "proj_w"}:
        return "talking-heads attention (heads are mixed before and after the softmax)"
    if names & {"convolution_projection_query", "conv_proj_q", "conv_proj"} or "convolution_projection" in str(names):
        return "convolutional projections of queries, keys and values"
    if "gpsa" in kind or "pos_proj" in names:
        return "gated positional self-attention"
    if "class" in kind or "classattn" in kind:
        return "class attention (only the class token queries)"
    return "the recomputed attention did not reproduce the model's attention output"


@torch.no_grad()
def check_pattern(parts: BlockParts, x: torch.Tensor, z_native: torch.Tensor) -> str | None:
    """``None`` if the recomputed pattern reproduces ``z_native`` (what the output projection saw), else why not."""
    try:
        z = attention_values(parts, x)
    except (LookupError, RuntimeError):
        return suspected_reason(parts)
    if z.shape != z_native.shape:
        return suspected_reason(parts)
    err = (z.float() - z_native.float()).abs().max()
    scale = z_native.float().abs().max().clamp_min(1e-6)
    if not torch.isfinite(err) or err > 1e-3 * scale + 1e-5:
        return suspected_reason(parts)
    return None


def _to_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    return value


@torch.no_grad()
def check_pattern_float32(parts: BlockParts, args: tuple, kwargs: dict, seq_first: bool = False) -> str | None:
    """``check_pattern`` for a half-precision model, on a float32 copy of the attention module called with the very
    arguments the model gave it: rounding in half precision would otherwise hide small differences (RoPE, biases)."""
    import copy
    from dataclasses import replace

    attn = copy.deepcopy(parts.attn).float()
    for m in attn.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    names = {id(m): n for n, m in parts.attn.named_modules()}

    def twin(module):
        if module is None:
            return None
        if module is parts.attn:
            return attn
        name = names.get(id(module))
        return attn.get_submodule(name) if name is not None else None

    copy_parts = replace(
        parts, attn=attn, q=twin(parts.q), k=twin(parts.k), qkv=twin(parts.qkv), out_proj=twin(parts.out_proj)
    )
    args, kwargs = _to_float32(args), _to_float32(kwargs)
    x = args[0] if args else next(iter(kwargs.values()))
    x = x.transpose(0, 1) if seq_first and x.ndim == 3 else x
    if isinstance(attn, nn.MultiheadAttention):
        out = attn(*args, **kwargs)[0]
        out = out.transpose(0, 1) if seq_first else out
        try:
            mine = F.linear(attention_values(copy_parts, x), attn.out_proj.weight, attn.out_proj.bias)
        except (LookupError, RuntimeError):
            return suspected_reason(parts)
        ok = bool((mine - out).abs().max() <= 1e-3 * out.abs().max().clamp_min(1e-6) + 1e-5)
        return None if ok else "the recomputed attention did not reproduce the model's output"
    if copy_parts.out_proj is None:
        return "its attention could not be checked against the model's output"
    seen = []
    handle = copy_parts.out_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        attn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the copy could not be run on its own: leave the pattern out
        return "its attention could not be checked against the model's output"
    finally:
        handle.remove()
    if not seen:
        return "its attention could not be checked against the model's output"
    z = seen[0].transpose(0, 1) if seq_first and seen[0].ndim == 3 else seen[0]
    return check_pattern(copy_parts, x, z)
