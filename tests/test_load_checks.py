"""What clipviz measures on every model at load time, on models built to fail it: the token order of block 0's input
(a grid whose tokens are not where the shapes say is refused) and the residual-stream identities behind
``hook_attn_out``, ``hook_mlp_out`` and the direct lens (left out or refused where they do not hold)."""

from __future__ import annotations

import pytest
import timm
import torch
from families import _open_clip, noisy

import clipviz
from clipviz.analysis.concepts import output_directions
from clipviz.errors import UnsupportedModelError

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)


ORDERS = {
    "transposed": lambda g: g.transpose(1, 2),
    "anti-transposed": lambda g: g.flip(1, 2).transpose(1, 2),
    "rows flipped": lambda g: g.flip(1),
    "columns flipped": lambda g: g.flip(2),
}


def reordered(grid: tuple[int, int], how: str):
    """A forward hook for a patch embedding: its tokens come out in another order of the grid (every count fits,
    the order does not)."""

    def hook(module, args, tokens):
        b, n, c = tokens.shape
        return ORDERS[how](tokens.reshape(b, *grid, c)).reshape(b, n, c)

    return hook


@pytest.mark.parametrize("how", sorted(ORDERS))
def test_a_grid_in_another_order_is_refused_not_read_row_major(how):
    model = noisy(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY))
    clipviz.wrap(model)  # row-major: accepted
    model.patch_embed.register_forward_hook(reordered((4, 4), how))
    with pytest.raises(UnsupportedModelError, match="cannot place its tokens") as refused:
        clipviz.wrap(model)
    assert "\n" not in str(refused.value) and "4x4 row-major grid" in str(refused.value)


MIXES = {
    "with the whole batch": lambda out: out.mean(0, keepdim=True),
    # each image sees only the ones before it (found by review, 2026-12-02): the first image never moves
    "with the images before it": lambda out: out.cumsum(0) / torch.arange(1, len(out) + 1).view(-1, 1, 1),
}


@pytest.mark.parametrize("strength", [1.0, 1e-3])
@pytest.mark.parametrize("how", sorted(MIXES))
def test_a_model_that_mixes_the_images_of_a_batch_is_refused(how, strength):
    """Found from outside (2026-12-02): X-CLIP's message tokens mix the frames folded into its batch; a model whose
    activations for one image depend on its batch-mates must be refused, however weak the mixing."""
    model = noisy(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY))
    clipviz.wrap(model)  # each image on its own: accepted
    model.blocks[0].register_forward_hook(lambda m, a, out: out + strength * MIXES[how](out))
    with pytest.raises(UnsupportedModelError, match="not processed independently") as refused:
        clipviz.wrap(model)
    assert "\n" not in str(refused.value)


def test_a_model_that_fails_on_a_batch_of_one_is_refused_in_one_line():
    model = noisy(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY))

    def pairs_only(module, args):
        if args[0].shape[0] % 2:
            raise RuntimeError("shape '[0, 2, 32]' is invalid for input of size 32")

    model.patch_embed.register_forward_pre_hook(pairs_only)
    with pytest.raises(UnsupportedModelError, match="its forward pass failed on one image") as refused:
        clipviz.wrap(model)
    assert "\n" not in str(refused.value) and "RuntimeError" in str(refused.value)


def test_layer_scales_are_part_of_the_residual_identities():
    model = clipviz.wrap(noisy(timm.create_model("deit3_small_patch16_224", pretrained=False, **TINY), std=0.2))
    names = [f"blocks.1.{p}" for p in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out")]
    assert set(names) <= set(model.hook_names())
    _, cache = model.run_with_cache(torch.rand(2, 3, 32, 32), [*names, "blocks.1.hook_resid_post"])
    pre, attn, mid, mlp = (cache[n] for n in names)
    gamma1, gamma2 = model.blocks[1].attn_layer_scale(), model.blocks[1].layer_scale()
    assert gamma1 is not None and float((gamma1 - 1).abs().max()) > 0.05  # a scale that matters
    torch.testing.assert_close(pre + gamma1 * attn, mid, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mid + gamma2 * mlp, cache["blocks.1.hook_resid_post"], rtol=1e-4, atol=1e-5)
    assert output_directions(model, "blocks.1.mlp.hook_post").shape == (128, 32)


def test_a_norm_after_the_sublayers_leaves_their_outputs_and_the_direct_lens_out():
    """timm's ResPostBlock adds norm(attn(x)) and norm(mlp(x)): neither module output is the block's write."""
    native = noisy(timm.create_model("vit_base_patch16_rpn_224", pretrained=False, **TINY), std=0.2)
    model = clipviz.wrap(native)
    hooks = model.hook_names()
    for name in ("blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"):
        assert name not in hooks
        why = model.token_layouts.unavailable[name]
        assert "post-norm block" in why or "not what the block adds to its residual stream" in why, why
    assert "blocks.1.mlp.hook_post" in hooks and "blocks.1.hook_resid_mid" in hooks  # what is right stays
    with pytest.raises(UnsupportedModelError, match="the direct lens cannot read block 1"):
        output_directions(model, "blocks.1.mlp.hook_post")


def test_in_bf16_a_post_norm_block_still_loses_its_sublayer_hooks():
    """In half precision the numbers alone cannot tell a norm after the MLP from rounding in a large stream; the
    probe's structural finding decides."""
    native = noisy(timm.create_model("vit_base_patch16_rpn_224", pretrained=False, **TINY), std=0.2)
    model = clipviz.wrap(native.to(torch.bfloat16))
    assert {0, 1} <= model.token_layouts.post_norm
    assert not {"blocks.0.hook_mlp_out", "blocks.1.hook_attn_out"} & set(model.hook_names())
    with pytest.raises(UnsupportedModelError, match="post-norm block"):
        output_directions(model, "blocks.0.mlp.hook_post")


def test_a_norm_inside_the_mlp_refuses_the_direct_lens(tmp_path):
    """open_clip's custom block with ``scale_fc`` normalises the hidden units before ``c_proj``."""
    vision = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, block_type="custom", scale_fc=True)
    model = clipviz.load(_open_clip(vision)(tmp_path / "scale_fc"))
    assert "blocks.1.hook_mlp_out" in model.hook_names()  # the MLP's output is still what the block adds
    with pytest.raises(UnsupportedModelError, match="misses hook_mlp_out"):
        output_directions(model, "blocks.1.mlp.hook_post")


def test_a_norm_after_attention_is_where_attn_out_is_read(tmp_path):
    """open_clip's ``scale_attn`` normalises the attention's output before it joins the stream (``ln_attn``):
    ``hook_attn_out`` is that norm's output, so ``resid_pre + attn_out == resid_mid`` holds and the hook is kept."""
    vision = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, block_type="custom", scale_attn=True)
    model = clipviz.load(_open_clip(vision)(tmp_path / "scale_attn"))
    assert {"blocks.0.hook_attn_out", "blocks.1.hook_attn_out", "blocks.0.hook_mlp_out"} <= set(model.hook_names())
    block = model.blocks[1].block
    seen = {}
    handle = block.ln_attn.register_forward_hook(lambda m, i, o: seen.update(out=o.detach()))
    names = ["blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid"]
    try:
        _, cache = model.run_with_cache(torch.rand(2, 3, 32, 32), names)
    finally:
        handle.remove()
    assert model.hook_point("blocks.1.hook_attn_out").native.endswith("ln_attn")
    torch.testing.assert_close(cache[names[1]], seen["out"])
    torch.testing.assert_close(cache[names[0]] + cache[names[1]], cache[names[2]], rtol=1e-5, atol=1e-5)


def test_a_sweep_leaves_the_direct_lens_out_where_neurons_have_no_write_direction(tmp_path):
    """Planned before any work: the sweep names those hooks and never reaches the lens's refusal after hours."""
    from clipviz.apps.sweep import _methods, describe, make_plan

    vision = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, block_type="custom", scale_fc=True)
    model = clipviz.load(_open_clip(vision)(tmp_path / "scale_fc"))
    plan = make_plan(model, tmp_path / "out", blocks="0:2", neurons="0:2", dataset="world:20", vocab="world")
    assert plan.no_direct == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"] and not plan.direct
    assert all("direct" not in _methods(plan, hook) for hook in plan.hooks)
    assert any("no direct lens for blocks.0.mlp.hook_post" in line for line in describe(model, plan))


def test_a_bug_in_clipviz_s_own_hook_is_not_reported_as_an_unsupported_architecture(monkeypatch):
    """A load check's hooks are clipviz's code called from inside the model: an error there is a bug of clipviz and
    must surface as one (with its traceback), not as a one-line verdict on the model."""
    from clipviz.model import hooks

    def broken(self, value):
        raise TypeError("an internal error of clipviz's hook code")

    model = noisy(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY))
    monkeypatch.setattr(hooks.HookPoint, "to_view", broken)
    with pytest.raises(RuntimeError, match="a bug in clipviz") as raised:
        clipviz.wrap(model)
    assert not isinstance(raised.value, UnsupportedModelError)
    assert isinstance(raised.value.__cause__, TypeError)
