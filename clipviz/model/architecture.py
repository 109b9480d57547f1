"""Find the transformer blocks of a vision tower and the parts of each block, by inspecting the modules.

Libraries (and versions of one library) name the same parts differently: the MLP's first linear layer is
``mlp.fc1`` in transformers 5.x and timm, ``intermediate.dense`` in transformers 4.x ViTs and ``mlp.c_fc`` in
open_clip. Nothing here is tied to one model class: a block is any element of a ``ModuleList``/``Sequential``
that holds a pre-attention norm, an attention module and an MLP whose linear layers map ``d_model -> d_mlp ->
d_model``; the parts are looked up by the known aliases below and then checked by their shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipviz.errors import UnsupportedModelError

# Aliases per part, relative to the block, in order of preference.
_LN1 = ("layer_norm1", "layernorm_before", "norm1", "ln_1", "rms_norm1", "attention_norm", "layer_norm_1")
_LN2 = ("layer_norm2", "layernorm_after", "norm2", "ln_2", "rms_norm2", "ffn_norm", "layer_norm_2")
_ATTN = ("self_attn", "attention", "attn")
_MLP = ("mlp", "ffn", "feed_forward")
_FC1 = ("mlp.fc1", "intermediate.dense", "mlp.c_fc", "mlp.up_proj", "mlp.dense1", "ffn.fc1")
_ACT = (
    "mlp.activation_fn",
    "intermediate.intermediate_act_fn",
    "mlp.gelu",
    "mlp.act",
    "mlp.act_fn",
    "mlp.activation",
    "mlp.intermediate_act_fn",
    "ffn.activation_fn",
    "ffn.act",
)
_FC2 = ("mlp.fc2", "output.dense", "mlp.c_proj", "mlp.down_proj", "mlp.dense2", "ffn.fc2")
# Gated MLPs (SwiGLU / GeGLU): (gate, up, down) relative to the MLP module.
# The flag says whether the MLP's ``norm`` (if any) sits after the product (timm SwiGLU) or before it (ViTamin).
_GATED = (("gate_proj", "up_proj", "down_proj", False), ("fc1_g", "fc1_x", "fc2", True), ("w0", "w1", "w2", False))
# Where the residual stream's layer scale after the MLP lives, relative to the block.
_LAYER_SCALE1 = ("ls1", "ls_1", "layer_scale1", "layer_scale_1", "gamma_1", "gamma1", "lambda_1")
_LAYER_SCALE2 = ("ls2", "ls_2", "layer_scale2", "layer_scale_2", "gamma_2", "gamma2", "lambda_2")
# Relative to the attention module.
_Q = ("q_proj", "attention.query", "query", "self.query")
_K = ("k_proj", "attention.key", "key", "self.key")
_V = ("v_proj", "attention.value", "value")
_QKV = ("qkv",)
_OUT = ("o_proj", "out_proj", "output.dense", "proj", "projection", "projection_layer")
_REL_POS = ("relative_position_bias", "relative_position_bias_table", "attention.relative_position_bias")


@dataclass(frozen=True)
class BlockParts:
    """The native modules of one transformer block (``None`` where the block has no such part)."""

    index: int
    path: str  # native path of the block, relative to the model clipviz wraps
    block: nn.Module
    ln1: nn.Module
    attn: nn.Module
    ln2: nn.Module
    fc1: nn.Linear
    act: nn.Module | None
    fc2: nn.Linear
    q: nn.Linear | None
    k: nn.Linear | None
    qkv: nn.Module | None  # a fused q/k/v projection: timm's Linear or torch's MultiheadAttention
    out_proj: nn.Linear | None  # only where the forward pass calls it as a module
    n_heads: int
    stage: int = 0
    relative_position: bool = False
    gate: nn.Linear | None = None  # gated MLP: the gate projection (``act(gate(x)) * fc1(x)``)
    packed_gate: str | None = None  # gate and up packed in one ``fc1``: "first" or "last" half is the gate
    mid: nn.Module | None = None  # module whose input is the MLP's hidden units (after act / the gated product)
    layer_scale2: nn.Module | nn.Parameter | None = None  # scale applied to the MLP output in the residual stream
    layer_scale1: nn.Module | nn.Parameter | None = None  # the same for the attention output
    attn_post: nn.Module | None = None  # a norm of the attention's output inside its branch (open_clip ``ln_attn``)

    @property
    def d_model(self) -> int:
        return self.fc1.in_features

    @property
    def d_mlp(self) -> int:
        return self.fc2.in_features

    @property
    def gated(self) -> bool:
        return self.gate is not None or self.packed_gate is not None

    @property
    def out_weight(self) -> torch.Tensor:
        """The MLP output matrix (d_model, d_mlp): column n is what hidden unit n writes (before layer scale)."""
        return self.fc2.weight

    def layer_scale(self) -> torch.Tensor | None:
        """The per-channel scale (d_model,) applied to the MLP output before it joins the residual stream."""
        return _scale_tensor(self.layer_scale2)

    def attn_layer_scale(self) -> torch.Tensor | None:
        """The per-channel scale (d_model,) applied to the attention output before it joins the residual stream."""
        return _scale_tensor(self.layer_scale1)

    def hidden_is_linear_to_output(self) -> bool:
        """True when the MLP's hidden units reach ``fc2`` unchanged (no norm in between)."""
        return self.mid is None or self.mid is self.fc2 or isinstance(self.mid, (nn.Identity, nn.Dropout))

    def native(self, part: str) -> str:
        """Native path of a part of this block, e.g. ``native("fc1") == "encoder.layers.3.mlp.fc1"``."""
        module = getattr(self, part)
        for name, sub in self.block.named_modules():
            if sub is module:
                return f"{self.path}.{name}" if name else self.path
        raise KeyError(part)


def mlp_output_directions(parts: BlockParts) -> torch.Tensor:
    """Each MLP neuron's write into the residual stream, ``(d_mlp, d_model)``: the columns of the MLP's output
    weight, times the block's layer scale where it has one (timm ``ls2.gamma``, HF ``layer_scale2.lambda1``).

    Refused (one line) where a norm sits between the hidden units and the output weight: a neuron then has no
    fixed write direction."""
    if not parts.hidden_is_linear_to_output():
        raise UnsupportedModelError(
            f"block {parts.index}'s MLP normalises its hidden units ({type(parts.mid).__name__}) before the output "
            "weight, so a neuron has no fixed direction in the residual stream"
        )
    directions = parts.out_weight.detach().float().T
    scale = parts.layer_scale()
    return directions if scale is None else directions * scale.detach().float().to(directions.device)


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        module = module._modules.get(part) if isinstance(module, nn.Module) else None
        if module is None:
            return None
    return module


def _first(module: nn.Module, aliases: tuple[str, ...], kind: type | tuple[type, ...] = nn.Module):
    for alias in aliases:
        found = _get(module, alias)
        if isinstance(found, kind):
            return found
    return None


def _is_norm(module: nn.Module | None) -> bool:
    return module is not None and ("norm" in type(module).__name__.lower())


def _heads(attn: nn.Module, d_model: int) -> int:
    for owner in (attn, _get(attn, "attention"), _get(attn, "self")):
        if owner is None:
            continue
        for attr in ("num_heads", "num_attention_heads", "n_heads"):
            value = getattr(owner, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    head_dim = getattr(attn, "head_dim", None) or getattr(attn, "attention_head_size", None)
    if isinstance(head_dim, int) and head_dim > 0:
        return d_model // head_dim
    raise UnsupportedModelError(f"cannot read the number of attention heads of {type(attn).__name__}")


def _out_proj_is_called(attn: nn.Module) -> bool:
    # torch's MultiheadAttention passes out_proj's weights to a functional kernel: hooks on it never fire.
    return not isinstance(attn, nn.MultiheadAttention)


def _scale_tensor(scale) -> torch.Tensor | None:
    if isinstance(scale, torch.Tensor):
        return scale
    for attr in ("gamma", "lambda1", "scale", "weight"):
        value = getattr(scale, attr, None) if scale is not None else None
        if isinstance(value, torch.Tensor):
            return value
    return None


def _layer_scale(block: nn.Module, aliases: tuple[str, ...]):
    for attr in aliases:
        value = getattr(block, attr, None)
        if isinstance(value, nn.Identity):
            return None
        if _scale_tensor(value) is not None:
            return value
    return None


def _mlp_parts(block: nn.Module) -> dict | None:
    """fc1 / gate / act / fc2 / mid of the block's MLP (plain, gated or packed-gated), or ``None``."""
    mlp = _first(block, _MLP)
    if mlp is not None:
        for gate_name, up_name, down_name, norm_after in _GATED:
            gate, up, down = (_get(mlp, n) for n in (gate_name, up_name, down_name))
            if all(isinstance(m, nn.Linear) for m in (gate, up, down)) and gate.out_features == up.out_features:
                norm = _get(mlp, "norm") if norm_after else None
                return {
                    "fc1": up,
                    "gate": gate,
                    "packed_gate": None,
                    "act": None,
                    "fc2": down,
                    "mid": norm if isinstance(norm, nn.Module) else down,
                }
        packed_in, packed_out = _get(mlp, "weights_in"), _get(mlp, "weights_out")  # transformers 4.x DINOv2 SwiGLU
        if (
            isinstance(packed_in, nn.Linear)
            and isinstance(packed_out, nn.Linear)
            and packed_in.out_features == 2 * packed_out.in_features
        ):
            return {
                "fc1": packed_in,
                "gate": None,
                "packed_gate": "first",
                "act": None,
                "fc2": packed_out,
                "mid": packed_out,
            }
        fc1, fc2 = _get(mlp, "fc1"), _get(mlp, "fc2")
        if (
            (type(mlp).__name__ == "GluMlp" or hasattr(mlp, "gate_last"))
            and isinstance(fc1, nn.Linear)
            and isinstance(fc2, nn.Linear)
            and fc1.out_features == 2 * fc2.in_features
        ):
            norm = _get(mlp, "norm")
            return {
                "fc1": fc1,
                "gate": None,
                "packed_gate": "last" if getattr(mlp, "gate_last", True) else "first",
                "act": None,
                "fc2": fc2,
                "mid": norm if isinstance(norm, nn.Module) else fc2,
            }
    fc1, fc2 = _first(block, _FC1, nn.Linear), _first(block, _FC2, nn.Linear)
    if fc1 is None or fc2 is None:
        return None
    if fc1.in_features != fc2.out_features or fc1.out_features != fc2.in_features:
        return None
    act = _first(block, _ACT)
    if act is not None and isinstance(act, nn.Linear):
        act = None
    norm = _get(mlp, "norm") if mlp is not None else None
    mid = norm if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity) else fc2
    return {"fc1": fc1, "gate": None, "packed_gate": None, "act": act, "fc2": fc2, "mid": mid}


def _branch_norm(block: nn.Module) -> nn.Module | None:
    """The norm open_clip's custom block (``scale_attn``) applies to the attention's output before it joins the
    stream: what the block adds is that norm's output, so ``hook_attn_out`` is read there."""
    norm = _get(block, "ln_attn")
    return norm if _is_norm(norm) else None


def parse_block(block: nn.Module, index: int, path: str, stage: int = 0) -> BlockParts | None:
    """The parts of ``block`` if it is a pre-norm transformer block, else ``None``."""
    ln1, ln2 = _first(block, _LN1), _first(block, _LN2)
    attn = _first(block, _ATTN)
    mlp = _mlp_parts(block)
    if not (_is_norm(ln1) and _is_norm(ln2) and attn is not None and mlp is not None):
        return None
    fc1, fc2 = mlp["fc1"], mlp["fc2"]
    q, k = _first(attn, _Q, nn.Linear), _first(attn, _K, nn.Linear)
    qkv = attn if isinstance(attn, nn.MultiheadAttention) else _first(attn, _QKV, nn.Linear)
    out_proj = _first(attn, _OUT, nn.Linear) if _out_proj_is_called(attn) else None
    relative = any(_get(attn, a) is not None for a in _REL_POS) or any(
        "relative_position" in name for name, _ in attn.named_parameters()
    )
    return BlockParts(
        index=index,
        path=path,
        block=block,
        ln1=ln1,
        attn=attn,
        ln2=ln2,
        fc1=fc1,
        act=mlp["act"],
        fc2=fc2,
        q=q,
        k=k,
        qkv=qkv,
        out_proj=out_proj,
        n_heads=_heads(attn, fc1.in_features),
        stage=stage,
        relative_position=relative,
        gate=mlp["gate"],
        packed_gate=mlp["packed_gate"],
        mid=mlp["mid"],
        layer_scale2=_layer_scale(block, _LAYER_SCALE2),
        layer_scale1=_layer_scale(block, _LAYER_SCALE1),
        attn_post=_branch_norm(block),
    )


def find_blocks(root: nn.Module, prefix: str = "") -> list[BlockParts]:
    """All transformer blocks under ``root`` in execution order (stage by stage for hierarchical models).

    ``prefix`` is prepended to native paths (the path of ``root`` inside the model clipviz wraps).
    """
    blocks: list[BlockParts] = []
    stage = -1
    seen: set[int] = set()
    for name, container in root.named_modules():
        if not isinstance(container, (nn.ModuleList, nn.Sequential)) or id(container) in seen:
            continue
        found = []
        for child_name, child in container.named_children():
            path = ".".join(p for p in (prefix, name, child_name) if p)
            parts = parse_block(child, 0, path)
            if parts is not None:
                found.append(parts)
        if not found:
            continue
        seen.update(id(m) for m in container.modules())
        stage += 1
        for parts in found:
            blocks.append(BlockParts(**{**parts.__dict__, "index": len(blocks), "stage": stage}))
    if not blocks:
        from clipviz.model.refusals import why_no_blocks

        raise UnsupportedModelError(why_no_blocks(root))
    return blocks
