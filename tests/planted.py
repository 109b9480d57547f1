"""A tiny ViT with hand-set weights whose neurons have known optimal inputs.

Block 0 of a 32 px, patch-8 ViT (4x4 patches). Attention writes nothing (its output projection is zero), so the
MLP sees the patch embedding directly. The patch embedding has four live channels:

* channel 0: the patch's redness, mean(R) - (mean(G) + mean(B)) / 2, in normalised units;
* channels 1, 2: constants +1 and -1, which keep the LayerNorm close to linear in channels 0 and 3;
* channel 3: the patch's response to vertical stripes of period 2 px (+ on even columns, - on odd ones).

``mlp.hook_post`` neuron 0 = GELU(4 * LN(x)[0]) grows with redness: its optimum is a pure red image.
Neuron 1 = GELU(4 * LN(x)[3]) grows with vertical stripes: with a spatial objective, the optimum puts stripes
in that one patch. Neurons 2.. are zero.
"""

from __future__ import annotations

from pathlib import Path

import torch

SIZE, PATCH, HIDDEN = 32, 8, 16
RED, STRIPES = 0, 1


def stripe_kernel() -> torch.Tensor:
    cols = torch.arange(PATCH)
    sign = torch.where(cols % 2 == 0, 1.0, -1.0)
    return sign.view(1, 1, PATCH).expand(3, PATCH, PATCH) / (3 * PATCH * PATCH)


def build_planted_vit(directory: Path) -> str:
    import transformers as T

    config = T.ViTConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=SIZE,
        patch_size=PATCH,
        layer_norm_eps=1e-6,
    )
    model = T.ViTModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb = model.embeddings
        conv = emb.patch_embeddings.projection
        conv.weight[0, 0] = 1.0 / PATCH**2
        conv.weight[0, 1] = -0.5 / PATCH**2
        conv.weight[0, 2] = -0.5 / PATCH**2
        conv.bias[1], conv.bias[2] = 1.0, -1.0
        conv.weight[3] = stripe_kernel()
        block = model.layers[0]
        block.layernorm_before.weight.fill_(1.0)
        block.layernorm_after.weight.fill_(1.0)
        block.mlp.fc1.weight[RED, 0] = 4.0
        block.mlp.fc1.weight[STRIPES, 3] = 4.0
        block.mlp.fc2.weight.normal_(0, 0.1)
        model.layernorm.weight.fill_(1.0)
    model.save_pretrained(directory)
    T.ViTImageProcessor(
        size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(directory)
    return f"hf:{directory}"


def stripe_energy(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) image -> (4, 4) response of each patch to the planted stripe detector (normalised pixels)."""
    x = image * 2 - 1
    return torch.nn.functional.conv2d(x[None], stripe_kernel()[None], stride=PATCH)[0, 0]
