"""Config variants of supported families, found wrong by an outside audit (2026-12-02): each case is checked
against the native model, or must be refused (or its hook left out) in one line."""

from __future__ import annotations

import open_clip
import pytest
import timm
import torch
import transformers as T
from families import noisy

import clipviz
from clipviz.errors import ClipvizError, HookNameError, UnsupportedModelError

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
VISION = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16)


def _open_clip(text: dict | None = None, **vision) -> torch.nn.Module:
    torch.manual_seed(0)
    return noisy(
        open_clip.CLIP(
            embed_dim=16, vision_cfg={**VISION, **vision}, text_cfg=text or dict(width=32, heads=2, layers=1)
        )
    )


INNER_NORMS = {
    "timm scale_attn_norm (BEiT3)": (
        lambda: timm.models.vision_transformer.VisionTransformer(**TINY, scale_attn_norm=True),
        "norm",
    ),
    "timm Eva scale_attn_inner (EVA02-CLIP)": (lambda: timm.models.eva.Eva(**TINY, scale_attn_inner=True), "norm"),
    "open_clip scale_attn_inner": (lambda: _open_clip(scale_attn_inner=True), "ln_inner"),
}


@pytest.mark.parametrize("name", sorted(INNER_NORMS))
def test_hook_z_is_left_out_where_a_norm_over_all_heads_precedes_the_output_projection(name):
    """The projection's input is then the normed mix of heads, not ``pattern @ v``: zeroing a head there is no head
    ablation, so ``attn.hook_z`` must not be offered (the pattern and the other hooks still are)."""
    build, norm = INNER_NORMS[name]
    torch.manual_seed(0)
    model = clipviz.wrap(noisy(build()))
    assert "blocks.0.attn.hook_z" not in model.hook_names(0)
    assert f"attn.{norm}" in model.unavailable_hooks()["attn.hook_z (all blocks)"]
    with pytest.raises(HookNameError, match="norm over all heads"):
        model.run_with_cache(torch.rand(1, 3, 32, 32), ["blocks.0.attn.hook_z"])
    plain = clipviz.wrap(noisy(timm.models.vision_transformer.VisionTransformer(**TINY)))
    assert "blocks.0.attn.hook_z" in plain.hook_names(0)


def test_an_open_clip_model_wrapped_without_its_tokenizer_never_reads_texts_with_the_wrong_ids():
    """The CLIP BPE tokenizer is the default only for a text tower of its 49408 ids; another vocabulary (here
    32000) is refused in one line, not fed ids of another tokenizer."""
    other = clipviz.wrap(_open_clip(text=dict(width=32, heads=2, layers=1, vocab_size=32000)))
    with pytest.raises(ClipvizError, match="reads 32000 token ids") as refused:
        other.encode_text(["a cat"])
    assert "\n" not in str(refused.value)
    usual = clipviz.wrap(_open_clip())
    assert usual.encode_text(["a cat"]).shape == (1, 16)
    assert any("CLIP BPE tokenizer" in note for note in usual.summary()["notes"])


def test_models_built_in_memory_are_normalised_as_their_library_would():
    """With no preprocess config, open_clip normalises with OpenAI CLIP's statistics and timm with ImageNet's;
    clipviz uses the same and says where they came from."""
    from open_clip.constants import OPENAI_DATASET_MEAN
    from timm.data.constants import IMAGENET_DEFAULT_MEAN

    model = _open_clip()
    wrapped = clipviz.wrap(model)
    assert torch.allclose(wrapped.normalisation()[0], torch.tensor(OPENAI_DATASET_MEAN))
    assert "open_clip's default" in wrapped.summary()["preprocessing"]
    vit = timm.models.vision_transformer.VisionTransformer(**TINY)
    vit.pretrained_cfg = {}
    wrapped = clipviz.wrap(vit)
    assert torch.allclose(wrapped.normalisation()[0], torch.tensor(IMAGENET_DEFAULT_MEAN))
    assert "timm's default" in wrapped.summary()["preprocessing"]


def _tiny_vit_config(**extra) -> dict:
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8, **extra)  # fmt: skip


@pytest.mark.parametrize(
    "build",
    [
        lambda: T.IJepaModel(T.IJepaConfig(**_tiny_vit_config())),
        lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**_tiny_vit_config(vision_use_head=False))),
    ],
    ids=["ijepa", "siglip-without-head"],
)
def test_a_tower_without_class_token_or_pooler_is_pooled_by_its_mean_not_its_first_patch(build):
    torch.manual_seed(0)
    native = noisy(build())
    model = clipviz.wrap(native)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = native(pixel_values=model.prepare(x))
        assert out.pooler_output is None
        torch.testing.assert_close(model(x), out.last_hidden_state.mean(1))


def test_wrapping_vitmae_leaves_the_users_mask_ratio_alone():
    torch.manual_seed(0)
    native = noisy(T.ViTMAEModel(T.ViTMAEConfig(**_tiny_vit_config(mask_ratio=0.75))))
    model = clipviz.wrap(native)
    _, cache = model.run_with_cache(torch.rand(1, 3, 32, 32), ["blocks.0.hook_resid_post"])
    assert cache["blocks.0.hook_resid_post"].shape[1] == 17  # clipviz sees every patch
    assert native.config.mask_ratio == 0.75
    with torch.no_grad():
        assert native(pixel_values=torch.rand(1, 3, 32, 32)).last_hidden_state.shape[1] == 5  # the user's masking


def test_a_head_without_global_pooling_refuses_text_and_class_targets_in_one_line():
    from clipviz.visualization.visualize import visualize

    per_token = clipviz.wrap(noisy(timm.models.vision_transformer.VisionTransformer(**{**TINY, "global_pool": ""})))
    with pytest.raises(ClipvizError, match="one per token") as refused:
        visualize(per_token, classes=[1], steps=1, progress=False)
    assert "\n" not in str(refused.value)
    unpooled = clipviz.wrap(_open_clip(pool_type="none"))
    with pytest.raises(ClipvizError, match="one per token"):
        visualize(unpooled, texts=["a cat"], steps=1, progress=False)
    tokens = clipviz.wrap(_open_clip(output_tokens=True))  # encode_image gives (pooled, tokens): the pooled is read
    assert tokens.encode_image(torch.rand(2, 3, 32, 32)).shape == (2, 16)


def test_a_projection_the_model_does_not_use_leaves_the_direct_lens_out():
    """BLIP applies its final norm to the class token twice before its projection: the one-norm lens would be
    silently off, so it is left out with the reason (CLIP's, which is exact, stays)."""
    torch.manual_seed(0)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    config = T.BlipConfig(vision_config=_tiny_vit_config(), text_config=text, projection_dim=16)
    native = noisy(T.BlipModel(config))
    with torch.no_grad():
        native.vision_model.post_layernorm.weight.uniform_(0.5, 2.0)
        native.vision_model.post_layernorm.bias.normal_()
    model = clipviz.wrap(native)
    assert not model.summary()["direct_projection"]
    assert any("direct lens is left out" in note for note in model.summary()["notes"])
    clip = clipviz.wrap(
        noisy(T.CLIPModel(T.CLIPConfig(vision_config=_tiny_vit_config(), text_config=text, projection_dim=16)))
    )
    assert clip.summary()["direct_projection"]


def test_open_clip_parts_and_compiled_models_are_refused_in_one_line():
    model = _open_clip()
    for part, match in ((model.visual, "without a .visual image tower"), (torch.compile(model), "torch.compile")):
        with pytest.raises(ClipvizError, match=match) as refused:
            clipviz.wrap(part)
        assert "\n" not in str(refused.value)


def _assert_last_block_is_timms(model, native) -> None:
    """The last block's output, through timm's final norm, is timm's own ``forward_features``."""
    x = torch.rand(2, 3, 32, 32)
    _, cache = model.run_with_cache(x, [f"blocks.{model.n_blocks - 1}.hook_resid_post"])
    with torch.no_grad():
        tokens = native.forward_features(model.prepare(x))
    torch.testing.assert_close(native.norm(cache[f"blocks.{model.n_blocks - 1}.hook_resid_post"]), tokens)


def test_deit_distilled_with_registers_it_ignores_is_read_with_its_two_prefix_tokens():
    """timm's distilled DeiT holds reg_tokens but prepends only CLS and the distillation token."""
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    native = noisy(VisionTransformerDistilled(**TINY, reg_tokens=2))
    model = clipviz.wrap(native)
    assert model.prefix_tokens == ("cls", "distillation") and model.layout(1).grid == (4, 4)
    _assert_last_block_is_timms(model, native)


def test_a_patch_size_that_does_not_divide_the_image_is_read_on_the_padded_grid():
    """timm's dynamic_img_pad pads a 32-px image to 35 for 7-px patches: a 5x5 row-major grid, which the token
    order check now places by whole patches (it was refused as tokens out of order)."""
    torch.manual_seed(0)
    native = noisy(timm.models.vision_transformer.VisionTransformer(
        **{**TINY, "patch_size": 7}, dynamic_img_pad=True, dynamic_img_size=True))  # fmt: skip
    model = clipviz.wrap(native)
    assert model.layout(1).grid == (5, 5)
    _assert_last_block_is_timms(model, native)


def test_a_timm_features_only_wrapper_is_refused_by_name():
    wrapper = timm.create_model("vit_tiny_patch16_224", pretrained=False, features_only=True, img_size=32, patch_size=8)
    with pytest.raises(ClipvizError, match="features_only wrapper") as refused:
        clipviz.wrap(wrapper)
    assert "\n" not in str(refused.value)


def test_a_model_left_in_training_or_checkpointing_is_run_as_in_eval_and_left_as_it_was():
    """Found from outside (2026-12-02): after ``model.train()`` patch dropout gave 9 tokens where the layout said
    17 and dropout changed every pass; with ``set_grad_checkpointing`` a visualization crashed in torch's
    recomputation. Every clipviz pass runs in eval mode without checkpointing; the modules are then as the user
    left them."""
    from clipviz.visualization.visualize import visualize

    torch.manual_seed(0)
    native = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        num_classes=5,
        patch_drop_rate=0.5,
        drop_path_rate=0.5,
        drop_rate=0.5,
        proj_drop_rate=0.5,
    )
    model = clipviz.wrap(native)
    hook, images = "blocks.1.mlp.hook_post", torch.rand(2, 3, 32, 32)
    _, reference = model.run_with_cache(images, [hook])
    model.train()
    native.set_grad_checkpointing(True)
    native.blocks[0].eval()  # a mixed state
    for _ in range(2):
        _, cache = model.run_with_cache(images, [hook])
        assert cache[hook].shape == reference[hook].shape  # no token dropped
        torch.testing.assert_close(cache[hook], reference[hook], rtol=0, atol=0)
    result = visualize(model, hook, [0, 1], steps=2, progress=False)
    assert len(result) == 2 and not result.skipped  # rendered, no checkpoint recomputation error
    assert native.training and native.grad_checkpointing and not native.blocks[0].training
    assert native.blocks[1].training and native.patch_drop.training


def test_a_timm_model_that_fails_at_its_pretrained_cfg_size_is_told_where_that_size_came_from():
    """Found from outside (2026-12-02): MViTv2 built at 64 was refused as if its forward pass were broken; it
    declares no size, so timm's data config (224) decides, as in timm's own transform, and the refusal says so."""
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    cfg = MultiScaleVitCfg(depths=(1, 1), embed_dim=(16, 32), num_heads=(1, 2))
    mvit = MultiScaleVit(cfg, img_size=(64, 64), num_classes=5)  # it declares no size: 224 by timm's default
    with pytest.raises(UnsupportedModelError, match=r"input size of its pretrained_cfg.*pretrained_cfg_overlay"):
        clipviz.wrap(mvit)
    mvit.pretrained_cfg = {"input_size": (3, 64, 64)}  # what pretrained_cfg_overlay gives
    assert clipviz.wrap(mvit).image_size == (64, 64)
