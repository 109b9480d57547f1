"""More families, found exact by an outside audit (2026-12-01): vision towers inside vision-language models,
task models around a backbone, and timm / open_clip variants (registers, MAP heads, RoPE, SwiGLU, CoCa, CLIPA,
timm trunks). Same checks as ``families.py`` (``test_architectures.test_family``); ``attention="eager"`` reads the
attention weights the block's attention module returns under transformers' eager implementation, for towers whose
model has no ``output_attentions`` of its own."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from families import IMAGE, Family, _hf, _seq, _timm, noisy

_T = dict(img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2)
_V = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=IMAGE, patch_size=8
)
_L = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=300,
    num_key_value_heads=2,
)
_SIGLIP = dict(_V, model_type="siglip_vision_model")
# the Q-Former and OPT language model of the BLIP-2 / InstructBLIP families
_QFORMER = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    encoder_hidden_size=32,
    vocab_size=100,
)
_OPT = dict(_L, model_type="opt", ffn_dim=64, word_embed_proj_dim=32)
_DV2 = dict(
    model_type="dinov2",
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_ratio=2,
    image_size=IMAGE,
    patch_size=8,
)


# ------------------------------------------------------------------------------------------------ transformers
def _hf_more() -> list[Family]:
    import transformers as T

    g = (4, 4)
    A = ("act", "mlp.activation_fn")
    return [
        Family(
            "Aya Vision (SigLIP tower)",
            "transformers",
            _hf(
                lambda: T.AyaVisionForConditionalGeneration(
                    T.AyaVisionConfig(
                        vision_config=_SIGLIP,
                        text_config=dict(_L, model_type="cohere2"),
                        downsample_factor=2,
                        image_token_index=299,
                    )
                )
            ),
            _seq("model.vision_tower.encoder.layers", 2),
            A,
            (0, g),
            (0, g),
            "hf:model.vision_tower",
            "hf:model.vision_tower",
        ),
        Family(
            "Cohere2 Vision (SigLIP tower)",
            "transformers",
            _hf(
                lambda: T.Cohere2VisionForConditionalGeneration(
                    T.Cohere2VisionConfig(
                        vision_config=_SIGLIP,
                        text_config=dict(_L, model_type="cohere2"),
                        downsample_factor=2,
                        image_token_id=299,
                    )
                )
            ),
            _seq("model.vision_tower.encoder.layers", 2),
            A,
            (0, g),
            (0, g),
            "hf:model.vision_tower",
            "hf:model.vision_tower",
        ),
        Family(
            "LLaVA-OneVision (SigLIP tower)",
            "transformers",
            _hf(
                lambda: T.LlavaOnevisionForConditionalGeneration(
                    T.LlavaOnevisionConfig(
                        vision_config=_SIGLIP,
                        text_config=dict(_L, model_type="qwen2"),
                        image_token_index=299,
                        image_grid_pinpoints=[[32, 32]],
                        vision_feature_layer=-1,
                    )
                )
            ),
            _seq("model.vision_tower.encoder.layers", 2),
            A,
            (0, g),
            (0, g),
            "hf:model.vision_tower",
            "hf:model.vision_tower",
        ),
        Family(
            "DeepSeek-VL (SigLIP tower)",
            "transformers",
            _hf(
                lambda: T.DeepseekVLForConditionalGeneration(
                    T.DeepseekVLConfig(
                        vision_config=_SIGLIP, text_config=dict(_L, model_type="llama"), image_token_id=299
                    )
                )
            ),
            _seq("model.vision_model.encoder.layers", 2),
            A,
            (0, g),
            (0, g),
            "hf:model.vision_model",
            "hf:model.vision_model",
        ),
        Family(
            "DeepSeek-VL hybrid (SigLIP tower; SAM high-res tower not hooked)",
            "transformers",
            _hf(
                lambda: T.DeepseekVLHybridForConditionalGeneration(
                    T.DeepseekVLHybridConfig(
                        vision_config=_SIGLIP,
                        high_res_vision_config=dict(
                            hidden_size=32,
                            num_hidden_layers=2,
                            num_attention_heads=2,
                            mlp_dim=64,
                            image_size=64,
                            patch_size=8,
                            output_channels=32,
                            global_attn_indexes=[1],
                            window_size=4,
                        ),
                        text_config=dict(_L, model_type="llama"),
                        image_token_id=299,
                    )
                )
            ),
            _seq("model.vision_model.encoder.layers", 2),
            A,
            (0, g),
            (0, g),
            "hf:model.vision_model",
            "hf:model.vision_model",
        ),
        # Ovis2: the tower has no set_attn_implementation / output_attentions: attn.hook_pattern was checked against
        # the eager attention module's own weights (h3.hf_attn_check); the suite needs an "eager" attention kind.
        Family(
            "Ovis2 (AIMv2-style tower, gated MLP)",
            "transformers",
            _hf(
                lambda: T.Ovis2ForConditionalGeneration(
                    T.Ovis2Config(
                        vision_config=dict(_V, vocab_size=64, hidden_stride=2),
                        text_config=dict(_L, model_type="qwen2"),
                        image_token_id=299,
                        visual_indicator_token_ids=[290, 291, 292, 293, 294],
                    )
                )
            ),
            _seq("model.vision_tower.transformer.encoder.layers", 2),
            ("gated", "ffn", "gate_proj", "up_proj", "act_fn"),
            (0, g),
            (0, g),
            None,
            "eager",
        ),
        Family(
            "ZoeDepth (BEiT backbone)",
            "transformers",
            _hf(
                lambda: T.ZoeDepthForDepthEstimation(
                    T.ZoeDepthConfig(
                        backbone_config=dict(
                            model_type="beit",
                            hidden_size=32,
                            num_hidden_layers=4,
                            num_attention_heads=2,
                            intermediate_size=64,
                            image_size=IMAGE,
                            patch_size=8,
                            out_indices=[1, 2, 3, 4],
                            use_relative_position_bias=True,
                            reshape_hidden_states=False,
                        ),
                        neck_hidden_sizes=[8, 8, 8, 8],
                        fusion_hidden_size=8,
                        bottleneck_features=8,
                        num_relative_features=8,
                        bin_embedding_dim=8,
                        patch_transformer_hidden_size=8,
                        patch_transformer_intermediate_size=16,
                        patch_transformer_num_attention_heads=2,
                        bin_configurations=[dict(n_bins=8, min_depth=0.001, max_depth=10.0, name="nyu")],
                    )
                )
            ),
            _seq("backbone.beit.layers", 4),
            A,
            (1, g),
            (1, g),
            None,
            None,
        ),
        # EoMT: its queries join the sequence in the last num_blocks layers: clipviz leaves layers.3 out
        Family(
            "EoMT (queries join in the last block)",
            "transformers",
            _hf(
                lambda: T.EomtForUniversalSegmentation(
                    T.EomtConfig(
                        hidden_size=32,
                        num_hidden_layers=4,
                        num_attention_heads=2,
                        mlp_ratio=2,
                        image_size=IMAGE,
                        patch_size=8,
                        num_blocks=1,
                        num_queries=5,
                        num_register_tokens=2,
                        num_upscale_blocks=1,
                        num_labels=3,
                    )
                )
            ),
            _seq("layers", 3),
            A,
            (3, g),
            (3, g),
            None,
            "eager",
        ),
        Family(
            "TIPSv2 vision (CLS + register)",
            "transformers",
            _hf(
                lambda: T.Tipsv2Model(
                    T.Tipsv2Config(
                        vision_config=dict(
                            hidden_size=32,
                            num_hidden_layers=2,
                            num_attention_heads=2,
                            mlp_ratio=2,
                            image_size=IMAGE,
                            patch_size=8,
                            num_register_tokens=1,
                        ),
                        text_config=dict(
                            hidden_size=32,
                            num_hidden_layers=1,
                            num_attention_heads=2,
                            intermediate_size=64,
                            vocab_size=100,
                        ),
                    )
                )
            ),
            _seq("vision_model.encoder.layer", 2),
            A,
            (2, g),
            (2, g),
            None,
            "eager",
        ),
        Family(
            "Sapiens2 (RoPE, registers, gated MLP)",
            "transformers",
            _hf(
                lambda: T.Sapiens2Model(
                    T.Sapiens2Config(
                        hidden_size=32,
                        intermediate_size=64,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        image_size=IMAGE,
                        patch_size=8,
                        num_register_tokens=2,
                    )
                )
            ),
            _seq("model.layer", 2),
            ("gated", "mlp", "gate_proj", "up_proj", "act_fn"),
            (3, g),
            (3, g),
            None,
            None,
        ),
        Family(
            "PerceptionLM (timm PE tower inside transformers)",
            "transformers",
            _hf(
                lambda: T.PerceptionLMForConditionalGeneration(
                    T.PerceptionLMConfig(
                        vision_config=dict(
                            architecture="vit_pe_core_base_patch16_224",
                            model_args=dict(
                                img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_pool=""
                            ),
                        ),
                        text_config=dict(_L, model_type="llama"),
                        image_token_id=299,
                        projector_pooling_ratio=2,
                    )
                )
            ),
            _seq("model.vision_tower.timm_model.blocks", 2),
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            "timm:model.vision_tower.timm_model",
            None,
        ),
        Family(
            "PromptDepthAnything (DINOv2 backbone)",
            "transformers",
            _hf(
                lambda: T.PromptDepthAnythingForDepthEstimation(
                    T.PromptDepthAnythingConfig(
                        backbone_config=dict(_DV2, out_features=["stage1", "stage2"]),
                        reassemble_hidden_size=32,
                        reassemble_factors=[2, 1],
                        neck_hidden_sizes=[8, 8],
                        fusion_hidden_size=8,
                        head_hidden_size=8,
                    )
                )
            ),
            _seq("backbone.encoder.layer", 2),
            A,
            (1, g),
            (1, g),
            None,
            "eager",
        ),
        Family(
            "RF-DETR DINOv2 backbone (num_windows=1)",
            "transformers",
            _hf(
                lambda: T.RfDetrDinov2Backbone(
                    T.RfDetrDinov2Config(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        mlp_ratio=2,
                        image_size=IMAGE,
                        patch_size=8,
                        num_windows=1,
                        out_indices=[1, 2],
                    )
                )
            ),
            _seq("encoder.layer", 2),
            A,
            (1, g),
            (1, g),
            None,
            "eager",
        ),
        Family(
            "UperNet (Swin backbone)",
            "transformers",
            _hf(
                lambda: T.UperNetForSemanticSegmentation(
                    T.UperNetConfig(
                        backbone_config=dict(
                            model_type="swin",
                            image_size=IMAGE,
                            patch_size=4,
                            embed_dim=16,
                            depths=[1, 1],
                            num_heads=[1, 2],
                            window_size=4,
                            out_features=["stage1", "stage2"],
                        ),
                        hidden_size=16,
                        auxiliary_in_channels=16,
                        num_labels=3,
                    )
                )
            ),
            lambda m: ["backbone.swin.encoder.layers.0.blocks.0", "backbone.swin.encoder.layers.1.blocks.0"],
            A,
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
        ),
        Family(
            "DINOv3 ViT backbone (out_indices)",
            "transformers",
            _hf(
                lambda: T.DINOv3ViTBackbone(
                    T.DINOv3ViTConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        image_size=IMAGE,
                        patch_size=8,
                        num_register_tokens=2,
                        out_indices=[1, 2],
                    )
                )
            ),
            _seq("model.layer", 2),
            ("act", "mlp.act_fn"),
            (3, g),
            (3, g),
            None,
            None,
        ),
        Family(
            "DPT hybrid (BiT stem + ViT)",
            "transformers",
            _hf(
                lambda: T.DPTModel(
                    T.DPTConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        image_size=64,
                        patch_size=16,
                        is_hybrid=True,
                        backbone_out_indices=[0, 1],
                        neck_hidden_sizes=[8, 8, 8, 8],
                        fusion_hidden_size=8,
                        backbone_featmap_shape=[1, 128, 4, 4],
                        reassemble_factors=[1, 1, 1, 1],
                        backbone_config=dict(
                            model_type="bit",
                            global_padding="same",
                            layer_type="bottleneck",
                            depths=[1, 1, 1],
                            hidden_sizes=[32, 64, 128],
                            embedding_size=32,
                            num_groups=8,
                            out_features=["stage1", "stage2", "stage3"],
                            embedding_dynamic_padding=True,
                        ),
                    )
                ),
                side=64,
            ),
            _seq("encoder.layer", 2),
            ("act", "intermediate.intermediate_act_fn"),
            (1, g),
            (1, g),
            "hf:",
            "eager",
        ),
        Family(
            "InternVL vision (InternViT-6B style: qk_norm, RMSNorm, layer scale)",
            "transformers",
            _hf(
                lambda: T.InternVLVisionModel(
                    T.InternVLVisionConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        image_size=[IMAGE, IMAGE],
                        patch_size=[8, 8],
                        use_qk_norm=True,
                        norm_type="rms_norm",
                        layer_scale_init_value=0.1,
                    )
                )
            ),
            _seq("encoder.layer", 2),
            A,
            (1, g),
            (1, g),
            "hf:",
            None,
        ),
        Family(
            "Idefics (v1) vision (CLIP-style tower)",
            "transformers",
            _hf(
                lambda: T.IdeficsForVisionText2Text(
                    T.IdeficsConfig(
                        vision_config=dict(
                            embed_dim=32,
                            image_size=IMAGE,
                            intermediate_size=64,
                            patch_size=8,
                            num_hidden_layers=2,
                            num_attention_heads=2,
                        ),
                        perceiver_config=dict(use_resampler=False),
                        **dict(_L, additional_vocab_size=2, num_hidden_layers=2, cross_layer_interval=1),
                    )
                )
            ),
            _seq("model.vision_model.encoder.layers", 2),
            A,
            (1, g),
            (1, g),
            None,
            "eager",
        ),
        Family(
            "InstructBLIP vision",
            "transformers",
            _hf(
                lambda: T.InstructBlipForConditionalGeneration(
                    T.InstructBlipConfig(
                        vision_config=dict(_V),
                        qformer_config=_QFORMER,
                        text_config=_OPT,
                        num_query_tokens=4,
                        image_token_index=299,
                    )
                )
            ),
            _seq("vision_model.encoder.layers", 2),
            A,
            (1, g),
            (1, g),
            "hf:vision_model",
            "eager",
        ),
        Family(
            "Swin2SR (super-resolution, patch 1, post-norm)",
            "transformers",
            _hf(
                lambda: T.Swin2SRModel(
                    T.Swin2SRConfig(
                        image_size=IMAGE, patch_size=1, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4
                    )
                )
            ),
            lambda m: ["encoder.stages.0.layers.0", "encoder.stages.1.layers.0"],
            ("act", "intermediate.intermediate_act_fn"),
            (0, (32, 32)),
            (0, (32, 32)),
            None,
            None,
            overlap=True,
        ),
        Family(
            "SAM3 ViT (RoPE, windowed + global, 4-D)",
            "transformers",
            _hf(
                lambda: T.Sam3ViTModel(
                    T.Sam3ViTConfig(
                        hidden_size=32,
                        intermediate_size=64,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        image_size=64,
                        pretrain_image_size=64,
                        patch_size=8,
                        window_size=4,
                        global_attn_indexes=[1],
                    )
                ),
                side=64,
            ),
            _seq("layers", 2),
            A,
            (0, (8, 8)),
            (0, (8, 8)),
            None,
            None,
        ),
        Family(
            "VisionEncoderDecoder (TrOCR: the ViT encoder)",
            "transformers",
            _hf(
                lambda: T.VisionEncoderDecoderModel(
                    T.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
                        T.ViTConfig(**_V),
                        T.TrOCRConfig(
                            d_model=32,
                            decoder_layers=1,
                            decoder_attention_heads=2,
                            decoder_ffn_dim=64,
                            vocab_size=100,
                            is_decoder=True,
                            add_cross_attention=True,
                        ),
                    )
                )
            ),
            _seq("encoder.layers", 2),
            A,
            (1, g),
            (1, g),
            "hf:encoder",
            "hf:encoder",
        ),
        Family(
            "MGP-STR (scene text: its ViT base model)",
            "transformers",
            _hf(
                lambda: T.MgpstrForSceneTextRecognition(
                    T.MgpstrConfig(
                        image_size=[32, 64],
                        patch_size=8,
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        max_token_length=8,
                        num_character_labels=10,
                        num_bpe_labels=10,
                        num_wordpiece_labels=10,
                    )
                ),
                processor=False,
            ),
            _seq("mgp_str.encoder.blocks", 2),
            ("act", "mlp.act"),
            (1, (4, 8)),
            (1, (4, 8)),
            None,
            "eager",
        ),
        Family(
            "Fuyu (no vision tower: a linear patch projection into the LLM)",
            "transformers",
            _hf(
                lambda: T.FuyuForCausalLM(
                    T.FuyuConfig(
                        **dict(
                            _L,
                            patch_size=8,
                            vocab_size=300,
                            image_token_id=299,
                            text_config=dict(_L, model_type="persimmon"),
                        )
                    )
                )
            ),
            refuse="without a vision transformer tower",
        ),
    ]


# ----------------------------------------------------------------------------------------------------------- timm
def _timm_more() -> list[Family]:
    g = (4, 4)
    b2 = _seq("blocks", 2)
    A = ("act", "mlp.act")

    def vit(name, variant, prefix, attention="timm", mlp=A, hidden="timm", **kw):
        return Family(
            name, "timm", _timm(variant, **dict(_T, **kw)), b2, mlp, (prefix, g), (prefix, g), hidden, attention
        )

    return [
        vit("timm SigLIP gap (no class token, no fc_norm)", "vit_base_patch16_siglip_gap_224", 0),
        vit("timm ViT gap (no class token)", "vit_base_patch16_gap_224", 0),
        vit("timm vit_wee (reg1, no_embed_class, gap)", "vit_wee_patch16_reg1_gap_256", 1),
        vit("timm so150m2 (reg1, no qkv bias)", "vit_so150m2_patch16_reg1_gap_256", 1),
        vit("timm InternViT-300M (no final norm, dynamic size)", "vit_intern300m_patch14_448", 1),
        vit("timm DINOv2", "vit_small_patch14_dinov2", 1),
        vit("timm DINOv2 + 4 registers", "vit_small_patch14_reg4_dinov2", 5),
        vit("timm CLIP QuickGELU", "vit_base_patch32_clip_quickgelu_224", 1),
        vit("timm test_vit3 (MAP head incl. prefix, reg1)", "test_vit3", 1),
        vit("timm test_vit4 (RMSNorm, reg1)", "test_vit4", 1),
        vit("timm relpos + class token", "vit_relpos_medium_patch16_cls_224", 1, attention=None),
        # timm's own forward_intermediates raises UnboundLocalError (prefix_tokens) for srelpos without a class
        # token, so no native hidden states; resid_post was checked against forward hooks on the blocks
        vit("timm shared relpos (srelpos)", "vit_srelpos_small_patch16_224", 0, attention=None, hidden=None),
        vit("timm EVA RoPE + reg1 (SBB mediumd)", "vit_mediumd_patch16_rope_reg1_gap_256", 1, attention=None),
        vit("timm DINOv3 (qkv bias)", "vit_base_patch16_dinov3_qkvb", 5, attention=None),
        vit(
            "timm DINOv3 huge_plus (SwiGLU)",
            "vit_huge_plus_patch16_dinov3",
            5,
            attention=None,
            mlp=("gated", "mlp", "fc1_g", "fc1_x", "act"),
        ),
        vit("timm PE spatial", "vit_pe_spatial_base_patch16_512", 1, attention=None),
        vit("timm PE lang", "vit_pe_lang_large_patch14_448", 1, attention=None),
        Family(
            "timm Qwen3 ViT (RoPE)",
            "timm",
            _timm(
                "qwen3_vit_88m",
                input_size=IMAGE,
                img_size=IMAGE,
                patch_size=8,
                embed_dim=32,
                depth=2,
                num_heads=2,
                pos_embed_grid_size=4,
            ),
            _seq("encoder.blocks", 2),
            A,
            (0, g),
            (0, g),
            None,
            None,
        ),
        Family(
            "timm NaFlexViT parallel-stem gap (4 registers)",
            "timm",
            _timm("naflexvit_base_patch16_par_gap", input_size=IMAGE, **_T),
            b2,
            A,
            (4, g),
            (4, g),
            None,
            "timm",
        ),
        Family(
            "timm NaFlexViT RADIO v3 (CLS + 7 registers)",
            "timm",
            _timm("naflexvit_base_patch16_radio_v3", input_size=IMAGE, **_T),
            b2,
            A,
            (8, g),
            (8, g),
            None,
            "timm",
        ),
        Family(
            "timm CSATv2 (attention in the last stages)",
            "timm",
            _timm("csatv2"),
            lambda m: ["stages.2.7", "stages.2.8", "stages.3.5", "stages.3.6"],
            A,
            (0, (16, 16)),
            (0, (8, 8)),
            None,
            "timm",
        ),
    ]


# ------------------------------------------------------------------------------------------------------ open_clip
def _register_more_trunks() -> None:
    import timm
    from timm.models import register_model

    if "more_tiny_relpos_cls" in timm.list_models("more_tiny_*"):
        return
    from timm.models.eva import _create_eva
    from timm.models.swin_transformer import _create_swin_transformer
    from timm.models.vision_transformer import _create_vision_transformer
    from timm.models.vision_transformer_relpos import _create_vision_transformer_relpos

    @register_model
    def more_tiny_eva01g(pretrained=False, **kw):  # noqa: ARG001
        return _create_eva(
            "eva_giant_patch14_224",
            pretrained=False,
            **dict(dict(img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=6144 / 1408), **kw),
        )

    @register_model
    def more_tiny_relpos_cls(pretrained=False, **kw):  # noqa: ARG001
        return _create_vision_transformer_relpos(
            "vit_relpos_medium_patch16_cls_224",
            pretrained=False,
            **dict(
                dict(
                    img_size=IMAGE,
                    patch_size=8,
                    embed_dim=32,
                    depth=2,
                    num_heads=2,
                    qkv_bias=False,
                    class_token=True,
                    global_pool="token",
                    fc_norm=False,
                    rel_pos_type="mlp",
                ),
                **kw,
            ),
        )

    @register_model
    def more_tiny_swin(pretrained=False, **kw):  # noqa: ARG001
        return _create_swin_transformer(
            "swin_tiny_patch4_window7_224",
            pretrained=False,
            **dict(
                dict(img_size=IMAGE, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2)), **kw
            ),
        )

    @register_model
    def more_tiny_vitgap(pretrained=False, **kw):  # noqa: ARG001
        return _create_vision_transformer(
            "vit_medium_patch16_gap_256",
            pretrained=False,
            **dict(
                dict(
                    img_size=IMAGE,
                    patch_size=8,
                    embed_dim=32,
                    depth=2,
                    num_heads=2,
                    class_token=False,
                    global_pool="avg",
                    fc_norm=False,
                ),
                **kw,
            ),
        )


def _open_clip_cfg(model_cfg: dict):
    """A full open_clip model config (CoCa, quick_gelu, custom_text, ...) built by open_clip's own factory."""

    def build(directory: Path) -> str:
        import open_clip
        from safetensors.torch import save_file

        _register_more_trunks()
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
    _register_more_trunks()
    g = (4, 4)
    tx = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
    v = dict(image_size=IMAGE, patch_size=8, width=64, layers=2, head_width=32)
    res = _seq("visual.transformer.resblocks", 2)
    trunk = _seq("visual.trunk.blocks", 2)
    G = ("act", "mlp.gelu")

    def tcfg(name, pool="", proj="linear", custom=False):
        cfg = dict(
            embed_dim=16,
            vision_cfg=dict(
                image_size=IMAGE, timm_model_name=name, timm_model_pretrained=False, timm_pool=pool, timm_proj=proj
            ),
            text_cfg=tx,
        )
        return dict(cfg, custom_text=True) if custom else cfg

    return [
        Family(
            "open_clip QuickGELU config (ViT-*-quickgelu)",
            "open_clip",
            _open_clip_cfg(dict(embed_dim=16, quick_gelu=True, vision_cfg=v, text_cfg=tx)),
            res,
            G,
            (1, g),
            (1, g),
            "open_clip",
            "mha",
            text=True,
        ),
        Family(
            "open_clip CoCa (attentional pooler, multimodal decoder)",
            "open_clip",
            _open_clip_cfg(
                dict(
                    embed_dim=16,
                    custom_text=True,
                    vision_cfg=dict(
                        v, attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=4, output_tokens=True
                    ),
                    text_cfg=dict(tx, embed_cls=True, output_tokens=True),
                    multimodal_cfg=dict(
                        context_length=16, vocab_size=49408, width=32, heads=2, layers=1, attn_pooler_heads=2
                    ),
                )
            ),
            res,
            G,
            (1, g),
            (1, g),
            "open_clip",
            "mha",
            text=True,
        ),
        Family(
            "open_clip CLIPA (no ln_pre, avg pool, final LN after pool)",
            "open_clip",
            _open_clip_cfg(
                dict(
                    embed_dim=16,
                    vision_cfg=dict(v, no_ln_pre=True, pool_type="avg", final_ln_after_pool=True),
                    text_cfg=dict(tx, pool_type="last", no_causal_mask=True),
                )
            ),
            res,
            G,
            (1, g),
            (1, g),
            "open_clip",
            "mha",
            text=True,
        ),
        Family(
            "open_clip EVA01-g trunk (timm)",
            "open_clip",
            _open_clip_cfg(tcfg("more_tiny_eva01g", pool="token", proj=None, custom=True)),
            trunk,
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            "timm:visual.trunk",
            "timm",
            text=True,
        ),
        Family(
            "open_clip relpos + class token trunk (timm)",
            "open_clip",
            _open_clip_cfg(tcfg("more_tiny_relpos_cls")),
            trunk,
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            "timm:visual.trunk",
            None,
            text=True,
        ),
        Family(
            "open_clip vit gap trunk (timm)",
            "open_clip",
            _open_clip_cfg(tcfg("more_tiny_vitgap")),
            trunk,
            ("act", "mlp.act"),
            (0, g),
            (0, g),
            "timm:visual.trunk",
            "timm",
            text=True,
        ),
        Family(
            "open_clip Swin trunk (timm)",
            "open_clip",
            _open_clip_cfg(tcfg("more_tiny_swin")),
            lambda m: ["visual.trunk.layers.0.blocks.0", "visual.trunk.layers.1.blocks.0"],
            ("act", "mlp.act"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
            text=True,
        ),
    ]


def more_families() -> list[Family]:
    return [*_hf_more(), *_timm_more(), *_open_clip_more()]
