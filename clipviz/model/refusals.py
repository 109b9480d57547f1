"""Why a model has no transformer blocks clipviz can hook: one line that names the real reason."""

from __future__ import annotations

import re

from torch import nn

ACCEPTED = (
    "clipviz supports pre-norm vision transformers whose blocks hold a norm, an attention module and an MLP "
    "(plain or gated) from transformers, open_clip and timm; see docs/architectures.md"
)


#: Class names of attention modules, including the ones clipviz cannot hook (single-head, linear, multi-scale).
_ATTENTION_CLASS = re.compile(r"[Aa]ttn|[Aa]ttention|MHSA|MHCA|SHSA|MLA|MQA|MHA")
_NORM_LAYERS = tuple(
    t for t in (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, getattr(nn, "RMSNorm", None)) if t
)


def _names(module: nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules()}


def _is_norm_layer(module: nn.Module) -> bool:
    """A normalisation layer itself, not a module that holds one (timm's NormMlp, ConvNorm)."""
    kind = type(module).__name__
    holder = re.search(r"conv|mlp|linear|block", kind, re.I) is not None
    return isinstance(module, _NORM_LAYERS) or (not holder and re.search(r"norm(\dd)?(fp32)?$", kind, re.I) is not None)


def _is_drop(name: str, module: nn.Module) -> bool:
    return isinstance(module, (nn.Dropout, nn.Identity)) or "drop" in name.lower() or "Drop" in type(module).__name__


def _holds_attention(module: nn.Module) -> bool:
    return any(_ATTENTION_CLASS.search(type(m).__name__) for m in module.modules())


def _block_like(root: nn.Module) -> str | None:
    """The reason the first module that looks like a transformer block (attention and MLP children) is not one."""
    for path, module in root.named_modules():
        children = {n: c for n, c in module.named_children() if not _is_drop(n, c)}
        attn = [n for n in children if "attn" in n.lower() or "attention" in n.lower()]
        mlp = [n for n in children if n.lower() in ("mlp", "ffn", "feed_forward", "intermediate")]
        norms = [n for n, c in children.items() if _is_norm_layer(c)]
        where = f"{path or type(root).__name__} ({type(module).__name__})"
        mixers = [n for n, c in children.items() if n not in mlp and n not in norms and _holds_attention(c)]
        if mlp and not attn and mixers:  # an attention under another name (token_mixer, e_mhsa, attn_in / attn_out)
            return f"the attention module of its blocks is not recognised (e.g. {where}: {', '.join(mixers[:3])})"
        if attn and mlp:
            from clipviz.model.architecture import _ATTN, _FC1, _FC2, _first, _mlp_parts, parse_block

            if parse_block(module, 0, path) is not None:
                parent = path.rsplit(".", 1)[0] if "." in path else ""
                owner = type(root.get_submodule(parent)).__name__ if path else type(root).__name__
                return (
                    f"its transformer blocks are not items of a list of blocks (e.g. {where} is an attribute of "
                    f"{owner}), so clipviz cannot hook them in execution order"
                )
            if _first(module, _ATTN) is None:
                return f"the attention module of its blocks is not recognised (e.g. {where}: {', '.join(attn[:2])})"
            if not norms:
                inside = [
                    f"{n}.{m}" for n in (*attn, *mlp) for m, c in children[n].named_children() if _is_norm_layer(c)
                ]
                if inside:
                    return (
                        f"the norms of its blocks sit inside their attention and MLP modules (e.g. {where}: "
                        f"{', '.join(inside[:2])}), not before them"
                    )
                return f"its blocks have no norm before attention and MLP (e.g. {where}); clipviz needs pre-norm blocks"
            if _mlp_parts(module) is not None:
                return f"the norms of its blocks are not recognised (e.g. {where}: {', '.join(norms[:2])})"
            inner = {n.rsplit(".", 1)[-1] for n, _ in children[mlp[0]].named_modules()}
            linear = _first(module, _FC1, nn.Linear) is not None and _first(module, _FC2, nn.Linear) is not None
            if linear and any(isinstance(m, nn.Conv2d) for m in children[mlp[0]].modules()):
                return f"its MLP has a convolution clipviz does not place (e.g. {where})"
            if inner & {"gate", "w12", "gate_up_proj", "wi_0"}:
                return f"its gated MLP is not recognised (e.g. {where}: expected gate/up/down projections)"
            return f"its MLP is not recognised (e.g. {where}: expected fc1/fc2 or gate/up/down linear layers)"
    return None


def why_no_blocks(root: nn.Module) -> str:
    """The reason ``root`` has no recognisable transformer blocks."""
    name = type(root).__name__
    kinds = _names(root)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in root.modules())
    has_attention = (
        any(_ATTENTION_CLASS.search(k) for k in kinds)
        or any(isinstance(m, nn.MultiheadAttention) for m in root.modules())
        or any("attn" in n.rsplit(".", 1)[-1] for n, _ in root.named_modules())
    )
    recurrent = sorted({type(m).__name__ for m in root.modules() if isinstance(m, nn.RNNBase)})
    if recurrent and not has_attention:
        return (
            f"unsupported architecture {name}: its tokens are mixed by recurrent layers ({', '.join(recurrent)}), "
            f"not attention; {ACCEPTED}"
        )
    if not has_attention:
        what = "a convolutional tower, with no attention module" if n_conv else "no attention module"
        return (
            f"unsupported architecture {name}: {what} clipviz recognises (a module named attn/attention or torch's "
            f"MultiheadAttention); {ACCEPTED}"
        )
    why = _block_like(root)
    if why is not None:
        return f"unsupported architecture {name}: no pre-norm transformer blocks found: {why}; {ACCEPTED}"
    return (
        f"unsupported architecture {name}: no pre-norm transformer blocks found (no block holds a pre-attention "
        f"norm, an attention module and an MLP d_model -> d_mlp -> d_model); {ACCEPTED}"
    )
