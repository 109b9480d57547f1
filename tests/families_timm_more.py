"""Tiny random models of more timm and open_clip families (see ``families.py`` for what a ``Family`` records).

Hybrid and efficient timm towers (TNT, Visformer, GCViT, TinyViT, EfficientViT, FastViT, MetaFormer, SAM ViT,
EfficientFormer, EdgeNeXt, ...), ViT variants (BEiT3's sub-LN, CLIP pre-norm, distilled DeiT, FlexiViT) and open_clip
towers (ModifiedResNet, custom attention blocks, layer scale, pooling variants, 2-D sin-cos positions). The facts
were written out from the libraries' code (timm 1.0.31, open_clip 3.3). Variants whose registered builder takes no
size overrides are registered here under ``tm_tiny_*`` names, so clipviz builds the same tiny model from its config.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from families import IMAGE, Family, _open_clip, _seq, _timm, noisy
from torch import nn

_T = dict(img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _register() -> None:
    """Tiny variants of timm models whose registered builders fix their depths or sizes."""
    import timm
    from timm.models import register_model

    if "tm_tiny_caformer" in timm.list_models("tm_tiny_*"):
        return
    from timm.models.fastvit import RepConditionalPosEnc, _create_fastvit
    from timm.models.focalnet import _create_focalnet
    from timm.models.gcvit import _create_gcvit
    from timm.models.metaformer import Attention as MetaAttention
    from timm.models.metaformer import LayerNorm2dNoBias, LayerNormNoBias, SepConv, _create_metaformer
    from timm.models.vision_transformer_hybrid import ConvStem, _create_vision_transformer_hybrid

    def mci_vit(pretrained=False, **kw):  # noqa: ARG001 - MobileCLIP-B's ViT: a 3-conv stem, no projection
        stem = ConvStem(channels=(8, 8, 32), stride=(4, 2, 2), kernel_size=(4, 2, 2), padding=0, act_layer=nn.GELU)
        args = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, no_embed_class=True)
        return _create_vision_transformer_hybrid(
            "vit_base_mci_224", backbone=stem, embed_args=dict(proj=False), pretrained=False, **dict(args, **kw)
        )

    def mci_fastvit(pretrained=False, **kw):  # noqa: ARG001 - MobileCLIP2-S3/S4's FastViT: two attention stages
        cpe = partial(RepConditionalPosEnc, spatial_shape=(3, 3))
        args = dict(
            layers=(1, 1, 1, 1, 1),
            embed_dims=(8, 16, 16, 32, 32),
            mlp_ratios=(2, 2, 2, 2, 2),
            se_downsamples=(False,) * 5,
            downsamples=(False, True, True, True, True),
            pos_embs=(None, None, None, cpe, cpe),
            token_mixers=("repmixer", "repmixer", "repmixer", "attention", "attention"),
            lkc_use_act=True,
            stem_use_scale_branch=False,
        )
        return _create_fastvit("fastvit_mci3", pretrained=False, **dict(args, **kw))

    def metaformer(variant, **args):
        def make(pretrained=False, **kw):  # noqa: ARG001 - timm's signature
            return _create_metaformer(variant, pretrained=False, **dict(args, **kw))

        return make

    for name, fn in {
        "tm_tiny_caformer": metaformer(
            "caformer_s18",
            depths=[1, 1, 1, 1],
            dims=[8, 16, 32, 32],
            token_mixers=[SepConv, SepConv, MetaAttention, MetaAttention],
            norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2,
        ),
        "tm_tiny_gcvit": lambda pretrained=False, **kw: _create_gcvit(  # noqa: ARG005 - timm's signature
            "gcvit_xxtiny",
            **dict(
                dict(img_size=64, depths=(2, 2), num_heads=(1, 2), embed_dim=16, window_size=(4, 4), mlp_ratio=2.0),
                **kw,
            ),
        ),
        "tm_tiny_focalnet": lambda pretrained=False, **kw: _create_focalnet(  # noqa: ARG005
            "focalnet_tiny_srf", **dict(dict(depths=(1, 1), embed_dim=16), **kw)
        ),
        "tm_tiny_mci_vit": mci_vit,
        "tm_tiny_mci_fastvit": mci_fastvit,
    }.items():
        fn.__name__ = name
        fn.__module__ = __name__
        register_model(fn)


def _tm(name: str, input_size: int | None = None) -> Callable[[Path], str]:
    """Build, add noise to and save a registered ``tm_tiny_*`` variant, naming it in the saved config."""

    def build(directory: Path) -> str:
        import timm
        from timm.models import save_for_hf

        _register()
        torch.manual_seed(0)
        model = noisy(timm.create_model(name, pretrained=False, num_classes=5))
        if input_size is not None:
            model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, input_size, input_size))
        save_for_hf(model, str(directory), safe_serialization=True)
        config = json.loads((directory / "config.json").read_text())
        config["architecture"] = name
        (directory / "config.json").write_text(json.dumps(config))
        return f"timm:{directory}"

    return build


def _timm_hybrid() -> list[Family]:
    A = ("act", "mlp.act")
    return [
        Family(
            "timm SAM ViT (windowed + global attention, NHWC, relative positions)",
            "timm",
            _timm(
                "samvit_base_patch16",
                img_size=64,
                patch_size=8,
                embed_dim=32,
                depth=2,
                num_heads=2,
                global_attn_indexes=[1],
                window_size=4,
                neck_chans=16,
            ),
            _seq("blocks", 2),
            A,
            (0, (8, 8)),
            (0, (8, 8)),
            None,  # its forward_intermediates has no prefix-token option (and there are none)
            None,
        ),
        Family(
            "timm GCViT (global-query window attention, NHWC)",
            "timm",
            _tm("tm_tiny_gcvit", input_size=64),
            lambda m: ["stages.0.blocks.0", "stages.0.blocks.1", "stages.1.blocks.0", "stages.1.blocks.1"],
            A,
            (0, (16, 16)),
            (0, (8, 8)),
            None,
            None,
            overlap=True,
        ),
        Family(
            "timm TNT (inner pixel blocks: attn_in / attn_out)",
            "timm",
            _timm(
                "tnt_s_patch16_224",
                img_size=IMAGE,
                patch_size=8,
                embed_dim=32,
                inner_dim=8,
                depth=2,
                num_heads_outer=2,
                num_heads_inner=2,
            ),
            refuse="the attention module of its blocks is not recognised",
        ),
        Family(
            "timm Visformer (1x1-conv MLP, NCHW attention)",
            "timm",
            _timm(
                "visformer_tiny",
                input_size=64,
                img_size=64,
                embed_dim=32,
                depth=(1, 1, 1),
                num_heads=2,
                init_channels=8,
            ),
            refuse="its MLP is not recognised",
        ),
        Family(
            "timm TinyViT (norms inside attention and MLP, local conv)",
            "timm",
            _timm(
                "tiny_vit_5m_224",
                input_size=64,
                embed_dims=[16, 16, 32, 32],
                depths=[1, 1, 1, 1],
                num_heads=[1, 1, 2, 2],
                window_sizes=[2, 2, 2, 2],
            ),
            refuse="sit inside their attention and MLP modules",
        ),
        Family(
            "timm EfficientViT MIT (multi-scale linear attention)",
            "timm",
            _timm(
                "efficientvit_b0",
                input_size=64,
                widths=(8, 8, 16, 16, 32),
                depths=(1, 1, 1, 1, 1),
                head_dim=8,
                head_widths=(32, 32),
            ),
            refuse="no pre-norm transformer blocks found",
        ),
        Family(
            "timm EfficientViT MSRA (cascaded group attention, no pre-norm)",
            "timm",
            _timm(
                "efficientvit_m0",
                img_size=64,
                embed_dim=[16, 32, 48],
                depth=[1, 1, 1],
                num_heads=[2, 2, 2],
                window_size=[2, 2, 2],
                key_dim=[8, 8, 8],
            ),
            refuse="no pre-norm transformer blocks found",
        ),
        Family(
            "timm FastViT (attention stage: token_mixer, conv MLP)",
            "timm",
            _timm("fastvit_sa12", input_size=64, layers=(1, 1, 1, 1), embed_dims=(8, 16, 16, 32)),
            refuse="the attention module of its blocks is not recognised",
        ),
        Family(
            "timm CAFormer (MetaFormer: attention as token_mixer, res scale)",
            "timm",
            _tm("tm_tiny_caformer", input_size=64),
            refuse="the attention module of its blocks is not recognised",
        ),
        Family(
            "timm EfficientFormer (attention as token_mixer in the last stage)",
            "timm",
            _timm("efficientformer_l1", input_size=64, depths=(1, 1, 1, 2), embed_dims=(8, 16, 32, 32)),
            refuse="the attention module of its blocks is not recognised",
        ),
        Family(
            "timm EfficientFormerV2 (attention without a norm)",
            "timm",
            _timm("efficientformerv2_s0", input_size=64, depths=(1, 1, 1, 1), embed_dims=(8, 16, 32, 32), num_vit=1),
            refuse="no pre-norm transformer blocks found",
        ),
        Family(
            "timm EdgeNeXt (split transposed channel attention)",
            "timm",
            _timm("edgenext_xx_small", input_size=64, depths=(1, 1, 1, 1), dims=(8, 16, 32, 32), heads=(2, 2, 2, 2)),
            refuse="no pre-norm transformer blocks found",
        ),
        Family(
            "timm MobileViTv2 (linear attention, 1x1-conv MLP)",
            "timm",
            _timm("mobilevitv2_050"),
            refuse="its MLP is not recognised",
        ),
        Family(
            "timm Sequencer2d (BiLSTM token mixing)",
            "timm",
            _timm("sequencer2d_s", layers=[1, 1, 1, 1], embed_dims=[16, 16, 16, 16], hidden_sizes=[8, 8, 8, 8]),
            refuse="mixed by recurrent layers (LSTM)",
        ),
        Family(
            "timm NextViT (E-MHSA + conv attention, conv MLP)",
            "timm",
            _timm("nextvit_small", depths=(1, 1, 5, 1)),
            refuse="the attention module of its blocks is not recognised",
        ),
        Family(
            "timm SAM2 HieraDet (windowed, q-pooling blocks, NHWC)",
            "timm",
            _timm(
                "sam2_hiera_tiny",
                input_size=64,
                embed_dim=16,
                num_heads=1,
                stages=(1, 1, 2, 1),
                global_att_blocks=(3,),
                window_spec=(4, 4, 2, 2),
                global_pos_size=(2, 2),
            ),
            _seq("blocks", 5),
            A,
            (0, (16, 16)),
            (0, (2, 2)),
            None,
            None,
            overlap=True,
        ),
        Family(
            "timm PVTv2 (overlapping stem, depthwise conv in the MLP)",
            "timm",
            _timm(
                "pvt_v2_b0",
                input_size=IMAGE,
                depths=(1, 1),
                embed_dims=(16, 32),
                num_heads=(1, 2),
                mlp_ratios=(2, 2),
                sr_ratios=(2, 1),
            ),
            lambda m: ["stages.0.blocks.0", "stages.1.blocks.0"],
            A,
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
            overlap=True,
        ),
        Family(
            "timm Swin V2 CR (post-norm, NHWC)",
            "timm",
            _timm(
                "swinv2_cr_tiny_ns_224", img_size=IMAGE, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2)
            ),
            lambda m: ["stages.0.blocks.0", "stages.1.blocks.0"],
            A,
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
        ),
        Family(
            "timm R+ViT hybrid (ResNetV2 stem, then 8x8 patches)",
            "timm",
            _timm("vit_tiny_r_s16_p8_224", img_size=128, embed_dim=32, depth=2, num_heads=2),
            _seq("blocks", 2),
            A,
            (1, (4, 4)),
            (1, (4, 4)),
            "timm",
            "timm",
            overlap=True,
        ),
        Family(
            "timm FocalNet (focal modulation)",
            "timm",
            _tm("tm_tiny_focalnet", input_size=IMAGE),
            refuse="no attention module clipviz recognises",
        ),
        Family(
            "timm MobileNetV4 hybrid (mobile MQA attention)",
            "timm",
            _timm("mobilenetv4_hybrid_medium", input_size=64),
            refuse="no pre-norm transformer blocks found",
        ),
        Family(
            "timm SHViT (single-head attention)",
            "timm",
            _timm("shvit_s1", input_size=64),
            refuse="the attention module of its blocks is not recognised",
        ),
        Family("timm HGNetV2 (convolutional)", "timm", _timm("hgnetv2_b0"), refuse="a convolutional tower"),
    ]


def _timm_vit() -> list[Family]:
    g = (4, 4)
    b2 = _seq("blocks", 2)
    A = ("act", "mlp.act")
    return [
        Family(
            "timm BEiT3 (sub-LN: norms inside attention and MLP)",
            "timm",
            _timm("beit3_base_patch16_224", **_T),
            b2,
            A,
            (1, g),
            (1, g),
            "timm",
            "timm",
        ),
        Family(
            "timm DeiT distilled (class + distillation token)",
            "timm",
            _timm("deit_tiny_distilled_patch16_224", **_T),
            b2,
            A,
            (2, g),
            (2, g),
            "timm",
            "timm",
        ),
        Family(
            "timm CLIP ViT (norm_pre before the blocks)",
            "timm",
            _timm("vit_base_patch16_clip_224", **_T),
            b2,
            A,
            (1, g),
            (1, g),
            "timm",
            "timm",
        ),
        Family(
            "timm FlexiViT (no_embed_class)",
            "timm",
            _timm("flexivit_small", **_T),
            b2,
            A,
            (1, g),
            (1, g),
            "timm",
            "timm",
        ),
        Family(
            "timm ViT residual post-norm (ResPostBlock: norm after each sub-layer)",
            "timm",
            _timm("vit_base_patch16_rpn_224", **_T),
            b2,
            A,
            (0, g),
            (0, g),
            "timm",
            "timm",
        ),
        Family(
            "timm differential attention ViT (DiffAttention, reg1)",
            "timm",
            _timm("vit_dwee_patch16_reg1_gap_256", **_T),
            b2,
            A,
            (1, g),
            (1, g),
            "timm",
            None,
        ),
        Family(
            "timm ViT qk_norm (LayerNorm on queries and keys)",
            "timm",
            _timm("vit_small_patch16_224", qk_norm=True, **_T),
            b2,
            A,
            (1, g),
            (1, g),
            "timm",
            "timm",
        ),
        Family(
            "timm ViT 18x2 (two parallel attention and MLP branches per block)",
            "timm",
            _timm("vit_small_patch16_18x2_224", **_T),
            refuse="no pre-norm transformer blocks found",
        ),
        Family(
            "timm ViT xp (ParallelScalingBlock: fused attention + MLP input projection)",
            "timm",
            _timm("vit_base_patch16_xp_224", **_T),
            refuse="no pre-norm transformer blocks found",
        ),
        Family(
            "timm ViT dpwee (DiffParallelScalingBlock)",
            "timm",
            _timm("vit_dpwee_patch16_reg1_gap_256", **_T),
            refuse="no pre-norm transformer blocks found",
        ),
    ]


def _oc(model_cfg: dict) -> Callable[[Path], str]:
    """A full open_clip model config built by open_clip's own factory (after registering the tiny trunks)."""

    def build(directory: Path) -> str:
        import open_clip
        from safetensors.torch import save_file

        _register()
        directory.mkdir(parents=True, exist_ok=True)
        cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.3, 0.4, 0.5], "std": [0.2, 0.3, 0.4]}}
        (directory / "open_clip_config.json").write_text(json.dumps(cfg))
        torch.manual_seed(0)
        model = noisy(open_clip.create_model(f"local-dir:{directory}"))
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors")
        )
        return f"open_clip:{directory}"

    return build


def _open_clip_more() -> list[Family]:
    g = (4, 4)
    tx = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
    v = dict(image_size=IMAGE, patch_size=8, width=64, layers=2, head_width=32)
    res = _seq("visual.transformer.resblocks", 2)
    G = ("act", "mlp.gelu")

    def vit(name, attention="mha", **vision):
        cfg = _oc(dict(embed_dim=16, vision_cfg=dict(v, **vision), text_cfg=tx))
        return Family(name, "open_clip", cfg, res, G, (1, g), (1, g), "open_clip", attention, text=True)

    def trunk(name, pool, proj=None):
        vision = dict(image_size=64, timm_model_name=name, timm_model_pretrained=False, timm_pool=pool, timm_proj=proj)
        return _oc(dict(embed_dim=16, custom_text=True, vision_cfg=vision, text_cfg=dict(tx, no_causal_mask=True)))

    return [
        vit("open_clip ViT + layer scale (ls_init_value)", ls_init_value=0.1),
        vit("open_clip ViT, 2-D sin-cos position embedding", pos_embed_type="sin_cos_2d"),
        vit(
            "open_clip ViT, attentional pool without output tokens",
            attentional_pool=True,
            attn_pooler_queries=4,
            attn_pooler_heads=2,
        ),
        vit("open_clip ViT, class token with final LN after pool", final_ln_after_pool=True),
        vit("open_clip ViT with output_tokens (pooled + tokens out)", output_tokens=True),
        vit("open_clip ViT custom block (qk_norm)", attention=None, qk_norm=True),
        vit(
            "open_clip ViT NormFormer block (scale_attn, scale_fc, scale_heads, inner norm)",
            attention=None,
            scale_attn=True,
            scale_fc=True,
            scale_heads=True,
            scale_attn_inner=True,
        ),
        Family(
            "open_clip MobileCLIP-B trunk (timm ViT with a conv stem)",
            "open_clip",
            trunk("tm_tiny_mci_vit", "token"),
            _seq("visual.trunk.blocks", 2),
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            "timm:visual.trunk",
            "timm",
            text=True,
        ),
        Family(
            "open_clip MobileCLIP2 trunk (timm FastViT MCi, attention stages)",
            "open_clip",
            trunk("tm_tiny_mci_fastvit", "avg"),
            refuse="not recognised (e.g. stages.3.blocks.0 (AttentionBlock): token_mixer)",
        ),
        Family(
            "open_clip RN50 (ModifiedResNet, attention pool)",
            "open_clip",
            _open_clip(dict(image_size=64, layers=[1, 1, 1, 1], width=16, patch_size=None)),
            refuse="ModifiedResNet",
        ),
    ]


def timm_more_families() -> list[Family]:
    return [*_timm_hybrid(), *_timm_vit(), *_open_clip_more()]
