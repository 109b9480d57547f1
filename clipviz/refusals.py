"""Why a model has no transformer blocks clipviz can hook: one line that names the real reason."""

from __future__ import annotations

from torch import nn

ACCEPTED = (
    "clipviz supports pre-norm vision transformers whose blocks hold a norm, an attention module and an MLP "
    "(plain or gated) from transformers, open_clip and timm; see docs/architectures.md"
)


def _names(module: nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules()}


def why_no_blocks(root: nn.Module) -> str:
    """The reason ``root`` has no recognisable transformer blocks."""
    name = type(root).__name__
    kinds = _names(root)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in root.modules())
    n_linear = sum(isinstance(m, nn.Linear) for m in root.modules())
    has_attention = any("attention" in k.lower() or "attn" in k.lower() for k in kinds) or any(
        isinstance(m, nn.MultiheadAttention) for m in root.modules()
    )
    has_norm = any("norm" in k.lower() for k in kinds)
    lowered = {n.rsplit(".", 1)[-1] for n, _ in root.named_modules()}
    if not has_attention and n_conv > n_linear:
        return f"unsupported architecture {name}: a convolutional tower (no attention blocks); {ACCEPTED}"
    if not has_attention:
        return f"unsupported architecture {name}: no attention modules found; {ACCEPTED}"
    if lowered & {"w12", "wi_0", "wi_1", "gate", "gating"}:
        return f"unsupported architecture {name}: its gated MLP is not recognised (unknown layer names); {ACCEPTED}"
    if kinds & {"Residual", "ResidualDrop", "Subsample"}:
        return (f"unsupported architecture {name}: its attention and MLP sit in separate residual modules, not in one "
                f"pre-norm block; {ACCEPTED}")
    if not has_norm:
        return f"unsupported architecture {name}: its blocks have no norm layers (not pre-norm); {ACCEPTED}"
    return (
        f"unsupported architecture {name}: no pre-norm transformer blocks found (no block holds a pre-attention "
        f"norm, an attention module and an MLP d_model -> d_mlp -> d_model); {ACCEPTED}"
    )
