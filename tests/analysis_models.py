"""Tiny ViTs with hand-set weights whose analysis figures are known in advance.

``build_local_vit``: a 3-block transformers ViT (32 px, patch 8: 4x4 patches and a CLS token, hidden 32, one head)
whose position embeddings are large orthonormal vectors (zero channel mean, so the LayerNorms keep them
orthogonal) and whose queries and keys are ``4 * identity``: every token, the CLS token included, attends to
itself alone (the attention to any other token is below 1e-7). So every block is local: position is decodable
from every block, a patch's output depends only on its own pixels, the CLS token reads nothing from the patches
and the patches nothing from it.

``average_last=True`` makes the last block average all tokens: its queries and keys are zero (uniform attention)
and its residual connections are removed (its forward is replaced), so every token of its output is the same
vector: position is lost exactly there.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch

SIZE, PATCH, HIDDEN, BLOCKS = 32, 8, 32, 3


def _orthonormal_zero_mean(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    basis = torch.randn(dim, dim, generator=generator)
    basis = basis - basis.mean(0, keepdim=True)  # every column orthogonal to the all-ones vector
    q, _ = torch.linalg.qr(basis)
    q = q[:, : dim - 1]  # the last column of a centred basis is degenerate
    return q[:, :rows].T.contiguous()


def build_local_vit(directory: Path, average_last: bool = False, seed: int = 0) -> str:
    import transformers as T

    g = torch.Generator().manual_seed(seed)
    config = T.ViTConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=BLOCKS,
        num_attention_heads=1,
        intermediate_size=64,
        image_size=SIZE,
        patch_size=PATCH,
    )
    model = T.ViTModel(config).eval()
    n_tokens = (SIZE // PATCH) ** 2 + 1
    with torch.no_grad():
        emb = model.embeddings
        emb.position_embeddings.copy_(8.0 * _orthonormal_zero_mean(n_tokens, HIDDEN, g)[None])
        emb.cls_token.zero_()
        conv = emb.patch_embeddings.projection
        conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=g))
        conv.bias.zero_()
        for layer in model.layers:
            att = _linears(layer.attention)  # transformers 5.x: q_proj ...; 4.x: attention.query ...
            for name in ("q", "k"):
                att[name].weight.copy_(4.0 * torch.eye(HIDDEN))
                att[name].bias.zero_()
            for lin in (att["v"], att["o"], layer.mlp.fc1, layer.mlp.fc2):
                lin.weight.copy_(0.1 * torch.randn(lin.weight.shape, generator=g))
                lin.bias.zero_()
    model.save_pretrained(directory)
    T.ViTImageProcessor(
        size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(directory)
    return f"hf:{directory}"


def _linears(attention) -> dict:
    names = {
        "q": ("q_proj", "attention.query"),
        "k": ("k_proj", "attention.key"),
        "v": ("v_proj", "attention.value"),
        "o": ("o_proj", "output.dense"),
    }
    return {
        key: next(attention.get_submodule(a) for a in aliases if _has(attention, a)) for key, aliases in names.items()
    }


def _has(module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _no_residual_forward(self, hidden_states, attention_mask=None, **kwargs):
    """A ViT layer without its two residual connections."""
    hidden_states, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
    return hidden_states + self.mlp(self.layernorm_after(hidden_states))


def load_local_vit(spec: str, average_last: bool = False):
    """Load a model saved by ``build_local_vit``; with ``average_last`` its last block averages every token."""
    import clipviz

    model = clipviz.load(spec)
    if average_last:
        parts = model.blocks[-1]
        with torch.no_grad():
            parts.q.weight.zero_()
            parts.k.weight.zero_()
        parts.block.forward = types.MethodType(_no_residual_forward, parts.block)
    return model
