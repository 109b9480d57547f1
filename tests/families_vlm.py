"""Vision towers inside the vision-language models of transformers 5.x (see ``families.py`` for what a ``Family``
records). Each entry was written from the library's modelling code, not from clipviz: where the tower sits in the
VLM, its block list, its MLP's activation module, its prefix tokens and grid, and where the library exposes its
per-block hidden states and attention probabilities; or, for towers clipviz cannot hook, the reason it must give."""

from __future__ import annotations

from families import IMAGE, Family, _hf, _seq
from families_more import _L, _OPT, _QFORMER, _SIGLIP, _V

_CLIP = dict(_V, model_type="clip_vision_model")
_LLAMA = dict(_L, model_type="llama")
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # ids inside the tiny vocabulary
_BLIP_TEXT = dict(
    hidden_size=32,
    encoder_hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    vocab_size=100,
    max_position_embeddings=32,
    sep_token_id=3,
    **_IDS,
)
# Qwen-VL style text models take a multimodal RoPE (mrope_section halves of head_dim 16)
_MROPE = dict(_L, **_IDS, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 2, 4]))
_QWEN_IDS = dict(image_token_id=299, video_token_id=298, vision_start_token_id=297)


def _tower(name, make, tower, prefix, hidden=True, attention=True, n=2, layers="encoder.layers"):
    """A ViT tower at ``tower`` inside a VLM: ``n`` blocks at ``<tower>.<layers>``, MLP ``mlp.activation_fn``."""
    g = (4, 4)
    return Family(
        name,
        "transformers",
        _hf(make),
        _seq(f"{tower}.{layers}", n),
        ("act", "mlp.activation_fn"),
        (prefix, g),
        (prefix, g),
        f"hf:{tower}" if hidden else None,
        (f"hf:{tower}" if attention is True else attention) or None,
    )


def _supported() -> list[Family]:
    import transformers as T

    return [
        # Phi-4-multimodal: a SigLIP-like tower (no class token) at model.embed_tokens_extend.image_embed.img_processor
        _tower(
            "Phi-4-multimodal (tower inside the embedding layer)",
            lambda: T.Phi4MultimodalForCausalLM(
                T.Phi4MultimodalConfig(
                    **dict(_L, **_IDS),
                    vision_config=dict(_V, crop_size=IMAGE, image_token_id=298),
                    audio_config=dict(
                        hidden_size=32,
                        intermediate_size=64,
                        num_blocks=1,
                        num_attention_heads=2,
                        ext_pw_out_channel=32,
                        depthwise_separable_out_channel=32,
                        nemo_conv_channels=32,
                        input_size=16,
                        audio_token_id=297,
                    ),
                )
            ),
            "model.embed_tokens_extend.image_embed.img_processor",
            0,
            attention=None,
        ),
        # InstructBLIP-Video: a video VLM whose ViT (vision_model) runs each frame alone, folded into its batch;
        # only the Q-Former mixes frames. clipviz runs the tower on images: an image tower, not a video one
        Family(
            "InstructBLIP-Video (its ViT sees each frame alone)",
            "transformers",
            _hf(
                lambda: T.InstructBlipVideoForConditionalGeneration(
                    T.InstructBlipVideoConfig(
                        vision_config=dict(_V),
                        qformer_config=_QFORMER,
                        text_config=_OPT,
                        num_query_tokens=4,
                        video_token_index=299,
                    )
                )
            ),
            _seq("vision_model.encoder.layers", 2),
            ("act", "mlp.activation_fn"),
            (1, (4, 4)),
            (1, (4, 4)),
            "hf:vision_model",
            "eager",
        ),
        # PaliGemma: vision_tower = AutoModel(SiglipVisionConfig) -> SiglipVisionModel (no class token, MAP head)
        _tower(
            "PaliGemma (SigLIP tower)",
            lambda: T.PaliGemmaForConditionalGeneration(
                T.PaliGemmaConfig(
                    vision_config=_SIGLIP,
                    text_config=dict(_L, model_type="gemma", head_dim=16),
                    image_token_index=299,
                    projection_dim=32,
                    hidden_size=32,
                )
            ),
            "model.vision_tower",
            0,
        ),
        # Gemma 3: the same SigLIP tower at model.vision_tower; the projector average-pools to mm_tokens_per_image
        _tower(
            "Gemma3 (SigLIP tower)",
            lambda: T.Gemma3ForConditionalGeneration(
                T.Gemma3Config(
                    vision_config=_SIGLIP,
                    text_config=dict(
                        _L, model_type="gemma3_text", head_dim=16, query_pre_attn_scalar=16, sliding_window=8
                    ),
                    mm_tokens_per_image=4,
                    image_token_index=299,
                    boi_token_index=297,
                    eoi_token_index=298,
                )
            ),
            "model.vision_tower",
            0,
        ),
        # Janus: JanusVisionModel at model.vision_model (SigLIP-like: no class token, learned positions; the
        # attention's output projection is called projection_layer); its VQ-VAE (image generation) is not hooked
        _tower(
            "Janus (SigLIP-like understanding tower)",
            lambda: T.JanusForConditionalGeneration(
                T.JanusConfig(
                    vision_config=dict(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        image_size=IMAGE,
                        patch_size=8,
                        mlp_ratio=2,
                        projection_dim=32,
                        num_image_tokens=16,
                    ),
                    text_config=_LLAMA,
                    vq_config=dict(
                        embed_dim=8,
                        num_embeddings=32,
                        latent_channels=32,
                        base_channels=32,
                        channel_multiplier=[1, 1],
                        num_res_blocks=1,
                        num_patches=4,
                        projection_dim=32,
                        image_token_embed_dim=32,
                    ),
                    image_token_id=299,
                )
            ),
            "model.vision_model",
            0,
        ),
        # BLIP-2: Blip2VisionModel at vision_model (class_embedding: one class token; fused qkv)
        _tower(
            "BLIP-2 vision (OPT)",
            lambda: T.Blip2ForConditionalGeneration(
                T.Blip2Config(
                    vision_config=dict(_V),
                    qformer_config=_QFORMER,
                    text_config=_OPT,
                    num_query_tokens=4,
                    image_token_index=299,
                )
            ),
            "vision_model",
            1,
        ),
        # BlipModel (contrastive, get_image_features): BlipVisionModel at vision_model, one class token
        _tower(
            "BLIP (BlipModel, image-text embeddings)",
            lambda: T.BlipModel(T.BlipConfig(vision_config=dict(_V), text_config=_BLIP_TEXT, projection_dim=16)),
            "vision_model",
            1,
        ),
        # LLaVA-NeXT: CLIPVisionModel at model.vision_tower; anyres tiling happens in the processor, the tower sees
        # ordinary (B, 3, H, W) crops
        _tower(
            "LLaVA-NeXT (CLIP tower, anyres)",
            lambda: T.LlavaNextForConditionalGeneration(
                T.LlavaNextConfig(
                    vision_config=_CLIP,
                    text_config=_LLAMA,
                    image_token_index=299,
                    image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]],
                )
            ),
            "model.vision_tower",
            1,
        ),
        # VipLlava: CLIP tower at model.vision_tower, features from several layers (vision_feature_layer list)
        _tower(
            "VipLlava (CLIP tower, multi-layer features)",
            lambda: T.VipLlavaForConditionalGeneration(
                T.VipLlavaConfig(
                    vision_config=_CLIP, text_config=_LLAMA, image_token_index=299, vision_feature_layer=[-1, -2]
                )
            ),
            "model.vision_tower",
            1,
        ),
        # Video-LLaVA: two CLIP towers, model.image_tower and model.video_tower; clipviz's tower is the image tower
        _tower(
            "Video-LLaVA (CLIP image tower)",
            lambda: T.VideoLlavaForConditionalGeneration(
                T.VideoLlavaConfig(
                    vision_config=_CLIP,
                    text_config=_LLAMA,
                    image_token_index=299,
                    video_token_index=298,
                    image_seq_length=16,
                    video_seq_length=128,
                )
            ),
            "model.image_tower",
            1,
        ),
        # InternVL (the whole VLM, not the bare tower): InternVLVisionModel at model.vision_tower, a cls_token,
        # blocks at encoder.layer; its attention goes unchecked (left out), so no native reference is needed
        _tower(
            "InternVL (InternViT tower inside the VLM)",
            lambda: T.InternVLForConditionalGeneration(
                T.InternVLConfig(
                    vision_config=dict(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        image_size=[IMAGE, IMAGE],
                        patch_size=[8, 8],
                    ),
                    text_config=dict(_L, model_type="qwen2"),
                    image_token_id=299,
                    image_seq_length=4,
                )
            ),
            "model.vision_tower",
            1,
            layers="encoder.layer",
            attention="eager",
        ),
        # Idefics2: Idefics2VisionTransformer at model.vision_model (SigLIP-like, no class token; an optional
        # patch_attention_mask that defaults to all patches)
        _tower(
            "Idefics2 (SigLIP-like tower, perceiver resampler)",
            lambda: T.Idefics2ForConditionalGeneration(
                T.Idefics2Config(
                    vision_config=dict(_V),
                    perceiver_config=dict(
                        hidden_size=32,
                        resampler_n_latents=4,
                        resampler_depth=1,
                        resampler_n_heads=2,
                        resampler_head_dim=16,
                        num_key_value_heads=2,
                    ),
                    text_config=dict(_L, model_type="mistral"),
                    image_token_id=299,
                )
            ),
            "model.vision_model",
            0,
        ),
    ]


def _refused() -> list[Family]:
    import transformers as T

    def refused(name, make, phrase):
        return Family(name, "transformers", _hf(make), refuse=phrase)

    return [
        # Mistral3 / Mistral-Small-3.1: a Pixtral tower, which packs every image into one sequence (batch 1)
        refused(
            "Mistral3 (Pixtral tower)",
            lambda: T.Mistral3ForConditionalGeneration(
                T.Mistral3Config(
                    vision_config=dict(
                        model_type="pixtral",
                        hidden_size=32,
                        intermediate_size=64,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        image_size=IMAGE,
                        patch_size=8,
                    ),
                    text_config=dict(_L, model_type="mistral", head_dim=16),
                    image_token_index=299,
                )
            ),
            "not the batch",
        ),
        # Gemma 3n: a MobileNetV5 tower (timm, through TimmWrapper): convolutions and mobile attention, no ViT
        # blocks (channel_multiplier 1/8 keeps it at 16M parameters)
        refused(
            "Gemma3n (MobileNetV5 tower)",
            lambda: T.Gemma3nForConditionalGeneration(
                T.Gemma3nConfig(
                    text_config=dict(
                        hidden_size=32,
                        intermediate_size=64,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        num_key_value_heads=1,
                        head_dim=16,
                        vocab_size=300,
                        vocab_size_per_layer_input=300,
                        hidden_size_per_layer_input=8,
                        num_kv_shared_layers=0,
                        laurel_rank=4,
                        layer_types=["sliding_attention", "full_attention"],
                        sliding_window=8,
                        altup_num_inputs=2,
                        activation_sparsity_pattern=[0.0, 0.0],
                    ),
                    vision_config=dict(
                        architecture="mobilenetv5_300m_enc",
                        model_args=dict(channel_multiplier=0.125),
                        vocab_size=8,
                        vocab_offset=300,
                    ),
                    audio_config=dict(
                        vocab_size=8,
                        vocab_offset=308,
                        input_feat_size=16,
                        hidden_size=32,
                        conf_attention_chunk_size=4,
                        conf_attention_context_left=5,
                        conf_num_attention_heads=2,
                        conf_num_hidden_layers=1,
                        sscp_conv_channel_size=[8, 8],
                    ),
                    vision_soft_tokens_per_image=4,
                    audio_soft_tokens_per_image=4,
                    boi_token_id=290,
                    eoi_token_id=291,
                    image_token_id=292,
                    boa_token_id=293,
                    eoa_token_id=294,
                    audio_token_id=295,
                )
            ),
            "no pre-norm transformer blocks found",
        ),
        # Emu3 and Chameleon: images become VQ-VAE codes read by the language model: there is no vision transformer
        refused(
            "Emu3 (VQ-VAE image tokenizer, no ViT)",
            lambda: T.Emu3ForConditionalGeneration(
                T.Emu3Config(
                    vq_config=dict(
                        codebook_size=32,
                        embed_dim=4,
                        latent_channels=4,
                        base_channels=32,
                        channel_multiplier=[1, 1],
                        num_res_blocks=1,
                        attn_resolutions=[],
                        hidden_size=32,
                        temporal_downsample_factor=1,
                    ),
                    text_config=dict(_L, model_type="emu3_text", **_IDS),
                    vocabulary_map={"<image>": 299},
                )
            ),
            "without a vision transformer tower",
        ),
        refused(
            "Chameleon (VQ-VAE image tokenizer, no ViT)",
            lambda: T.ChameleonForConditionalGeneration(
                T.ChameleonConfig(
                    **dict(_L, pad_token_id=0),
                    vq_config=dict(
                        embed_dim=8,
                        num_embeddings=32,
                        latent_channels=8,
                        resolution=IMAGE,
                        base_channels=32,
                        channel_multiplier=[1, 1],
                        num_res_blocks=1,
                        attn_resolutions=[],
                    ),
                    vocabulary_map={"<image>": 299},
                )
            ),
            "without a vision transformer tower",
        ),
        # GOT-OCR2: a SAM ViTDet-style encoder at model.vision_tower whose MLP is lin1/act/lin2 (SAM's MLPBlock)
        refused(
            "GOT-OCR2 (SAM ViTDet encoder)",
            lambda: T.GotOcr2ForConditionalGeneration(
                T.GotOcr2Config(
                    vision_config=dict(
                        hidden_size=32,
                        output_channels=16,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        image_size=64,
                        patch_size=8,
                        window_size=4,
                        global_attn_indexes=[1],
                        mlp_dim=64,
                    ),
                    text_config=dict(_L, model_type="qwen2"),
                    image_token_index=299,
                    image_seq_length=4,
                )
            ),
            "its MLP is not recognised",
        ),
        # Kosmos-2.5: a Pix2Struct-style tower (flattened patches with row/column ids; gated MLP wi_0/wi_1/wo)
        refused(
            "Kosmos-2.5 (Pix2Struct-style tower, flattened patches)",
            lambda: T.Kosmos2_5ForConditionalGeneration(
                T.Kosmos2_5Config(
                    vision_config=dict(
                        hidden_size=32,
                        patch_embed_hidden_size=32,
                        intermediate_size=64,
                        head_dim=16,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        max_num_patches=64,
                    ),
                    text_config=dict(embed_dim=32, layers=1, ffn_dim=64, attention_heads=2, vocab_size=300),
                    latent_query_num=4,
                )
            ),
            "gated MLP is not recognised",
        ),
        # Llama 4: Llama4VisionModel at vision_model; blocks with input_layernorm/post_attention_layernorm, 2-D RoPE
        # and a class token appended AFTER the patches (a suffix token)
        refused(
            "Llama4 vision (suffix class token, 2-D RoPE)",
            lambda: T.Llama4ForConditionalGeneration(
                T.Llama4Config(
                    vision_config=dict(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=128,  # the pixel-shuffle adapter reads 4 * hidden_size channels
                        vision_output_dim=32,
                        image_size=IMAGE,
                        patch_size=8,
                        projector_input_dim=32,
                        projector_output_dim=32,
                        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
                    ),
                    text_config=dict(_L, head_dim=16, intermediate_size_mlp=64, num_local_experts=2, **_IDS),
                    image_token_index=299,
                    boi_token_index=297,
                    eoi_token_index=298,
                )
            ),
            "norms of its blocks are not recognised",
        ),
        # Mllama (Llama 3.2 Vision): 6-D tiled pixel values with aspect_ratio_ids / aspect_ratio_mask, gated tile
        # and position embeddings, a local and a gated global encoder
        refused(
            "Mllama (tiled images, aspect-ratio inputs)",
            lambda: T.MllamaForConditionalGeneration(
                T.MllamaConfig(
                    vision_config=dict(
                        hidden_size=32,
                        attention_heads=2,
                        num_hidden_layers=2,
                        num_global_layers=1,
                        intermediate_size=64,
                        image_size=IMAGE,
                        patch_size=8,
                        max_num_tiles=2,
                        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
                        intermediate_layers_indices=[0],
                        vision_output_dim=64,
                    ),
                    text_config=dict(
                        _L, model_type="mllama_text_model", num_hidden_layers=2, cross_attention_layers=[1], **_IDS
                    ),
                    image_token_index=299,
                )
            ),
            "norms of its blocks are not recognised",
        ),
        # FastVLM: a FastViT-MCi (timm, through TimmWrapper) hybrid convolutional tower
        refused(
            "FastVLM (FastViT hybrid tower)",
            lambda: T.FastVlmForConditionalGeneration(
                T.FastVlmConfig(
                    vision_config=dict(
                        model_type="timm_wrapper",
                        architecture="fastvit_mci0",
                        do_pooling=False,
                        hidden_size=1024,
                        model_args=dict(inference_mode=True),
                    ),
                    text_config=dict(_L, model_type="qwen2"),
                    image_token_index=299,
                )
            ),
            "no pre-norm transformer blocks found",
        ),
        # Phi-4-multimodal: its SigLIP-like tower sits at model.embed_tokens_extend.image_embed.img_processor, a
        # path clipviz does not look at; the refusal says so and points at clipviz.wrap
        # GIT, BLIP image-text matching and ColPali: their forward needs text; the refusal says to wrap the tower
        refused(
            "GIT (image encoder + text decoder)",
            lambda: T.GitForCausalLM(
                T.GitConfig(vision_config=dict(_V), **dict(_L, max_position_embeddings=64, **_IDS))
            ),
            "its forward needs text",
        ),
        refused(
            "BLIP image-text matching",
            lambda: T.BlipForImageTextRetrieval(
                T.BlipConfig(vision_config=dict(_V), text_config=_BLIP_TEXT, projection_dim=16)
            ),
            "its forward needs text",
        ),
        refused(
            "ColPali (PaliGemma retriever)",
            lambda: T.ColPaliForRetrieval(
                T.ColPaliConfig(
                    vlm_config=dict(
                        model_type="paligemma",
                        vision_config=_SIGLIP,
                        text_config=dict(_L, model_type="gemma", head_dim=16),
                        image_token_index=299,
                        projection_dim=32,
                        hidden_size=32,
                    ),
                    embedding_dim=16,
                )
            ),
            "its forward needs text",
        ),
    ]


def _found_from_outside() -> list[Family]:
    """Refused with a wrong or unclear reason until 2026-12-02 (a missing tower path, BLIP's text decoder, a NaFlex
    tower inside a VLM, DaViT's attention blamed on its MLP)."""
    import transformers as T

    packed = "packed patches"  # what clipviz's own _refuse_packed says of grid_thw towers
    return [
        # Qwen2-VL: Qwen2VisionTransformerPretrainedModel at model.visual, forward(hidden_states, grid_thw): patches
        # of all images packed into one sequence, attention split by cu_seqlens
        Family(
            "Qwen2-VL (packed patches, cu_seqlens)",
            "transformers",
            _hf(
                lambda: T.Qwen2VLForConditionalGeneration(
                    T.Qwen2VLConfig(
                        vision_config=dict(
                            depth=2, embed_dim=32, hidden_size=32, num_heads=2, patch_size=8, mlp_ratio=2
                        ),
                        text_config=dict(_MROPE, model_type="qwen2_vl_text"),
                        **_QWEN_IDS,
                    )
                )
            ),
            refuse=packed,
        ),
        Family(
            "Qwen2.5-VL (packed patches, window attention)",
            "transformers",
            _hf(
                lambda: T.Qwen2_5_VLForConditionalGeneration(
                    T.Qwen2_5_VLConfig(
                        vision_config=dict(
                            depth=2,
                            hidden_size=32,
                            num_heads=2,
                            patch_size=8,
                            intermediate_size=64,
                            out_hidden_size=32,
                            window_size=32,
                            fullatt_block_indexes=[1],
                        ),
                        text_config=dict(_MROPE, model_type="qwen2_5_vl_text"),
                        **_QWEN_IDS,
                    )
                )
            ),
            refuse=packed,
        ),
        Family(
            "Qwen3-VL (packed patches, deepstack)",
            "transformers",
            _hf(
                lambda: T.Qwen3VLForConditionalGeneration(
                    T.Qwen3VLConfig(
                        vision_config=dict(
                            depth=2,
                            hidden_size=32,
                            num_heads=2,
                            patch_size=8,
                            intermediate_size=64,
                            out_hidden_size=32,
                            num_position_embeddings=16,
                            deepstack_visual_indexes=[0],
                        ),
                        text_config=dict(
                            _L,
                            **_IDS,
                            model_type="qwen3_vl_text",
                            head_dim=16,
                            rope_parameters=dict(
                                rope_type="default", rope_theta=10000.0, mrope_section=[2, 2, 4], mrope_interleaved=True
                            ),
                        ),
                        **_QWEN_IDS,
                    )
                )
            ),
            refuse=packed,
        ),
        # GLM-4.1V / GLM-4.5V: Glm4vVisionModel at model.visual, forward(hidden_states, grid_thw), as Qwen2.5-VL
        Family(
            "GLM-4V (packed patches)",
            "transformers",
            _hf(
                lambda: T.Glm4vForConditionalGeneration(
                    T.Glm4vConfig(
                        vision_config=dict(
                            depth=2,
                            hidden_size=32,
                            num_heads=2,
                            image_size=IMAGE,
                            patch_size=8,
                            out_hidden_size=32,
                            intermediate_size=64,
                        ),
                        text_config=dict(_L, model_type="glm4v_text"),
                        image_token_id=299,
                        video_token_id=298,
                        image_start_token_id=297,
                        image_end_token_id=296,
                        video_start_token_id=295,
                        video_end_token_id=294,
                    )
                )
            ),
            refuse=packed,
        ),
        # PaddleOCR-VL: PaddleOCRVisionModel at model.visual, forward(pixel_values as packed patches, grid_thw)
        Family(
            "PaddleOCR-VL (packed patches)",
            "transformers",
            _hf(
                lambda: T.PaddleOCRVLForConditionalGeneration(
                    T.PaddleOCRVLConfig(
                        vision_config=dict(
                            hidden_size=32,
                            intermediate_size=64,
                            num_hidden_layers=2,
                            num_attention_heads=2,
                            image_size=IMAGE,
                            patch_size=8,
                        ),
                        text_config=dict(_L, head_dim=16),
                        image_token_id=299,
                    )
                )
            ),
            refuse=packed,
        ),
        # BLIP captioning: BlipVisionModel at vision_model (one class token) and a text decoder that needs
        # input_ids: clipviz should run the tower alone, as it does for the VLMs with a language_model
        _tower(
            "BLIP captioning (BlipForConditionalGeneration)",
            lambda: T.BlipForConditionalGeneration(
                T.BlipConfig(vision_config=dict(_V), text_config=_BLIP_TEXT, projection_dim=16)
            ),
            "vision_model",
            1,
        ),
        # LFM2-VL: a SigLIP2 NaFlex tower (Siglip2VisionModel at model.vision_tower; forward(pixel_values as patches,
        # pixel_attention_mask, spatial_shapes)), which clipviz runs on a fixed grid when it is loaded alone
        Family(
            "LFM2-VL (SigLIP2 NaFlex tower)",
            "transformers",
            _hf(
                lambda: T.Lfm2VlForConditionalGeneration(
                    T.Lfm2VlConfig(
                        vision_config=dict(
                            hidden_size=32,
                            num_hidden_layers=2,
                            num_attention_heads=2,
                            intermediate_size=64,
                            patch_size=8,
                            num_patches=16,
                        ),
                        text_config=dict(
                            hidden_size=32,
                            num_hidden_layers=2,
                            num_attention_heads=2,
                            num_key_value_heads=2,
                            intermediate_size=64,
                            vocab_size=300,
                            layer_types=["conv", "full_attention"],
                        ),
                        image_token_id=299,
                        projector_hidden_size=32,
                    )
                )
            ),
            _seq("model.vision_tower.encoder.layers", 2),
            ("act", "mlp.activation_fn"),
            (0, (4, 4)),
            (0, (4, 4)),
            None,
            "eager",
        ),
        # Florence-2: a DaViT tower (Florence2VisionBackbone at model.vision_tower): each stage's blocks are
        # (spatial_block, channel_block) pairs held as attributes, with a depth-wise conv on the residual stream
        # before each sub-layer; the MLP is ffn.fc1/ffn.fc2, the attention window_attn / channel_attn. A refusal is
        # right, but it must name what is not recognised (window_attn), not claim the MLP lacks fc1/fc2
        Family(
            "Florence-2 (DaViT tower)",
            "transformers",
            _hf(
                lambda: T.Florence2ForConditionalGeneration(
                    T.Florence2Config(
                        vision_config=dict(
                            depths=[1, 1],
                            patch_size=[7, 3],
                            patch_stride=[4, 2],
                            patch_padding=[3, 1],
                            patch_prenorm=[False, True],
                            embed_dim=[16, 32],
                            num_heads=[1, 2],
                            num_groups=[1, 2],
                            window_size=4,
                            projection_dim=32,
                            drop_path_rate=0.0,
                        ),
                        text_config=dict(
                            d_model=32,
                            encoder_layers=1,
                            decoder_layers=1,
                            encoder_attention_heads=2,
                            decoder_attention_heads=2,
                            encoder_ffn_dim=64,
                            decoder_ffn_dim=64,
                            vocab_size=300,
                            max_position_embeddings=64,
                        ),
                        image_token_id=299,
                    )
                )
            ),
            refuse="window_attn",
        ),
    ]


def vlm_families() -> list[Family]:
    return [*_supported(), *_refused(), *_found_from_outside()]
