"""Tiny random models of more families (see ``families.py`` for what a ``Family`` records): CLIP-like dual encoders
(OWL-ViT, OWLv2, AltCLIP, Chinese-CLIP, CLIPSeg, X-CLIP, GroupViT, MetaCLIP 2, SigLIP) and ViT relatives (Data2Vec
vision, ViT-MSN, video transformers, PVT, FocalNet, ...). Facts written out by hand from transformers 5.24's
modelling code, independently of clipviz."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from families import IMAGE, Family, _seq, _stages, noisy
from torch import nn

g = (4, 4)
A = ("act", "mlp.activation_fn")
_V = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=IMAGE, patch_size=8
)
_TX = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)


def _build(make: Callable[[], nn.Module], processor: Callable[[Path], None] | None = None) -> Callable[[Path], str]:
    """Save a noisy tiny model, and its own image processor where the family has one."""

    def build(directory: Path) -> str:
        torch.manual_seed(0)
        noisy(make()).save_pretrained(directory)
        if processor is not None:
            processor(directory)
        return f"hf:{directory}"

    return build


def _proc(name: str, **kw) -> Callable[[Path], None]:
    """The family's own image processor class, sized for the tiny model."""

    def save(directory: Path) -> None:
        import transformers as T

        getattr(T, name)(image_mean=[0.4, 0.45, 0.5], image_std=[0.2, 0.25, 0.3], **kw).save_pretrained(directory)

    return save


_CLIP_PROC = _proc("CLIPImageProcessor", size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
_OWL_PROC = _proc(
    "OwlViTImageProcessor", size={"height": IMAGE, "width": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
)
_OWL2_PROC = _proc("Owlv2ImageProcessor", size={"height": IMAGE, "width": IMAGE})


def _clip_tokenizer(directory: Path) -> None:
    """A tiny CLIP BPE tokenizer (characters only, no merges): ids 0 and 1 are start and end of text."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in letters:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(directory)


def _bert_tokenizer(directory: Path) -> None:
    """A tiny BERT WordPiece tokenizer (Chinese-CLIP's text tower): letters and their ``##`` continuations."""
    from transformers import BertTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters)]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(directory)


def _xlmr_tokenizer(directory: Path) -> None:
    """A tiny XLM-R unigram tokenizer (AltCLIP's text tower): letters, with and without the word-start mark."""
    from transformers import XLMRobertaTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -1.0) for c in letters] + [("\u2581" + c, -1.0) for c in letters]
    XLMRobertaTokenizer(vocab=pieces).save_pretrained(directory)


def _clip_text(**extra) -> dict:
    return dict(_TX, bos_token_id=0, eos_token_id=1, pad_token_id=1, max_position_embeddings=16, **extra)


def _with_text(processor: Callable[[Path], None], tokenizer: Callable[[Path], None]) -> Callable[[Path], None]:
    def save(directory: Path) -> None:
        processor(directory)
        tokenizer(directory)

    return save


def _clip_like() -> list[Family]:
    import transformers as T

    vis = _seq("vision_model.encoder.layers", 2)
    return [
        Family(
            "OWL-ViT vision",
            "transformers",
            _build(lambda: T.OwlViTVisionModel(T.OwlViTVisionConfig(**_V)), _OWL_PROC),
            vis,
            A,
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "OWL-ViT (text + vision)",
            "transformers",
            _build(
                lambda: T.OwlViTModel(T.OwlViTConfig(text_config=_clip_text(), vision_config=_V)),
                _with_text(_OWL_PROC, _clip_tokenizer),
            ),
            vis,
            A,
            (1, g),
            (1, g),
            "hf:vision_model",
            "hf:vision_model",
            text=True,
        ),
        Family(
            "OWL-ViT detector (vision tower at owlvit.vision_model)",
            "transformers",
            _build(
                lambda: T.OwlViTForObjectDetection(T.OwlViTConfig(text_config=_clip_text(), vision_config=_V)),
                _with_text(_OWL_PROC, _clip_tokenizer),
            ),
            refuse="its forward needs text (input_ids)",
        ),
        Family(
            "OWLv2 vision (pads to a square)",
            "transformers",
            _build(lambda: T.Owlv2VisionModel(T.Owlv2VisionConfig(**_V)), _OWL2_PROC),
            vis,
            A,
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "OWLv2 (text + vision)",
            "transformers",
            _build(
                lambda: T.Owlv2Model(T.Owlv2Config(text_config=_clip_text(), vision_config=_V)),
                _with_text(_OWL2_PROC, _clip_tokenizer),
            ),
            vis,
            A,
            (1, g),
            (1, g),
            "hf:vision_model",
            "hf:vision_model",
            text=True,
        ),
        Family(
            "AltCLIP (XLM-R text, CLIP vision)",
            "transformers",
            _build(
                lambda: T.AltCLIPModel(
                    T.AltCLIPConfig(text_config=dict(_TX, project_dim=32, max_position_embeddings=20), vision_config=_V)
                ),
                _with_text(_CLIP_PROC, _xlmr_tokenizer),
            ),
            vis,
            A,
            (1, g),
            (1, g),
            "hf:vision_model",
            "hf:vision_model",
            text=True,
        ),
        Family(
            "Chinese-CLIP (BERT text, CLIP vision)",
            "transformers",
            _build(
                lambda: T.ChineseCLIPModel(
                    T.ChineseCLIPConfig(text_config=dict(_TX, max_position_embeddings=16), vision_config=_V)
                ),
                _with_text(
                    _proc(
                        "ChineseCLIPImageProcessor",
                        size={"shortest_edge": IMAGE},
                        crop_size={"height": IMAGE, "width": IMAGE},
                    ),
                    _bert_tokenizer,
                ),
            ),
            vis,
            A,
            (1, g),
            (1, g),
            "hf:vision_model",
            "hf:vision_model",
            text=True,
        ),
        Family(
            "CLIPSeg (text + vision)",
            "transformers",
            _build(
                lambda: T.CLIPSegModel(T.CLIPSegConfig(text_config=_clip_text(), vision_config=_V)),
                _with_text(_CLIP_PROC, _clip_tokenizer),
            ),
            vis,
            A,
            (1, g),
            (1, g),
            "hf:vision_model",
            "hf:vision_model",
            text=True,
        ),
        Family(
            "CLIPSeg segmentation (CLIP at clip.vision_model, decoder)",
            "transformers",
            _build(
                lambda: T.CLIPSegForImageSegmentation(
                    T.CLIPSegConfig(text_config=_clip_text(), vision_config=_V, extract_layers=[0, 1], reduce_dim=16)
                ),
                _CLIP_PROC,
            ),
            refuse="its forward needs text (input_ids)",
        ),
        Family(
            "X-CLIP (video: frames folded into the batch)",
            "transformers",
            _build(
                lambda: T.XCLIPModel(
                    T.XCLIPConfig(
                        text_config=_clip_text(),
                        vision_config=dict(
                            _V,
                            num_frames=2,
                            mit_hidden_size=32,
                            mit_intermediate_size=64,
                            mit_num_hidden_layers=1,
                            mit_num_attention_heads=2,
                        ),
                        prompt_layers=1,
                        projection_dim=32,
                    )
                ),
                _CLIP_PROC,
            ),
            refuse="video",
        ),
        Family(
            "X-CLIP vision (cross-frame message tokens mix the images of a batch)",
            "transformers",
            _build(lambda: T.XCLIPVisionModel(T.XCLIPVisionConfig(**_V, num_frames=2)), _CLIP_PROC),
            refuse="a video model",
        ),
        Family(
            "GroupViT (group tokens after the patches, grouping blocks)",
            "transformers",
            _build(
                lambda: T.GroupViTModel(
                    T.GroupViTConfig(
                        text_config=_clip_text(),
                        vision_config=dict(
                            hidden_size=32,
                            intermediate_size=64,
                            depths=[1, 1, 1],
                            num_hidden_layers=3,
                            num_group_tokens=[4, 2, 0],
                            num_output_groups=[4, 2, 2],
                            num_attention_heads=2,
                            image_size=IMAGE,
                            patch_size=8,
                        ),
                        projection_dim=16,
                        projection_intermediate_dim=32,
                    )
                ),
                _CLIP_PROC,
            ),
            refuse="cannot give its tokens a layout",
        ),
        Family(
            "MetaCLIP 2 (text + vision)",
            "transformers",
            _build(
                lambda: T.MetaClip2Model(T.MetaClip2Config(text_config=_clip_text(), vision_config=_V)),
                _with_text(_CLIP_PROC, _clip_tokenizer),
            ),
            vis,
            A,
            (1, g),
            (1, g),
            "hf:vision_model",
            "hf:vision_model",
            text=True,
        ),
        Family(
            "SigLIP (text + vision model)",
            "transformers",
            _build(lambda: T.SiglipModel(T.SiglipConfig(text_config=_TX, vision_config=_V)), _CLIP_PROC),
            vis,
            A,
            (0, g),
            (0, g),
            "hf:vision_model",
            "hf:vision_model",
        ),
    ]


def _vit_relatives() -> list[Family]:
    import transformers as T

    vit_proc = _proc("ViTImageProcessor", size={"height": IMAGE, "width": IMAGE})
    video = dict(_V, num_frames=2)
    swin = dict(
        image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[1, 2], window_size=4, mlp_ratio=2.0
    )
    return [
        Family(
            "Data2Vec vision (BEiT-like: relative position bias, layer scale)",
            "transformers",
            _build(
                lambda: T.Data2VecVisionModel(
                    T.Data2VecVisionConfig(**_V, use_relative_position_bias=True, layer_scale_init_value=0.1)
                ),
                vit_proc,
            ),
            _seq("encoder.layer", 2),
            ("act", "intermediate.intermediate_act_fn"),
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        # shared relative position bias: transformers' Data2Vec has no dynamic eager switch, so the suite cannot read a
        # plain-attention pattern; without the bias, attn.hook_pattern was checked by hand against an eager-loaded copy
        Family(
            "Data2Vec vision classifier (mean pooling)",
            "transformers",
            _build(
                lambda: T.Data2VecVisionForImageClassification(
                    T.Data2VecVisionConfig(
                        **_V, use_mean_pooling=True, use_shared_relative_position_bias=True, num_labels=3
                    )
                ),
                vit_proc,
            ),
            _seq("data2vec_vision.encoder.layer", 2),
            ("act", "intermediate.intermediate_act_fn"),
            (1, g),
            (1, g),
            "hf:data2vec_vision",
            "hf:data2vec_vision",
        ),
        Family(
            "ViT-MSN",
            "transformers",
            _build(lambda: T.ViTMSNModel(T.ViTMSNConfig(**_V)), vit_proc),
            _seq("layers", 2),
            A,
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "VideoMAE (video: tubelets of 2 frames)",
            "transformers",
            _build(lambda: T.VideoMAEModel(T.VideoMAEConfig(**video, tubelet_size=2)), vit_proc),
            refuse="video",
        ),
        Family(
            "ViViT (video)",
            "transformers",
            _build(lambda: T.VivitModel(T.VivitConfig(**video, tubelet_size=[2, 8, 8])), vit_proc),
            refuse="video",
        ),
        Family(
            "TimeSformer (video: divided space-time attention)",
            "transformers",
            _build(lambda: T.TimesformerModel(T.TimesformerConfig(**video)), vit_proc),
            refuse="video",
        ),
        Family(
            "PVT (reduced keys; class token joins in the last stage)",
            "transformers",
            _build(
                lambda: T.PvtModel(
                    T.PvtConfig(
                        image_size=IMAGE,
                        num_encoder_blocks=2,
                        depths=[1, 1],
                        sequence_reduction_ratios=[2, 1],
                        hidden_sizes=[16, 32],
                        patch_sizes=[4, 2],
                        strides=[4, 2],
                        num_attention_heads=[1, 2],
                        mlp_ratios=[2, 2],
                    )
                ),
                vit_proc,
            ),
            lambda m: ["encoder.block.0.0", "encoder.block.1.0"],
            ("act", "mlp.intermediate_act_fn"),
            (0, (8, 8)),
            (1, (4, 4)),  # the class token joins in the last stage
            None,  # its hidden states are the stages' normalised outputs
            "eager",  # the last stage's full attention (the first stage's reduced keys are left out)
        ),
        Family(
            "PVTv2 (overlapping stem, conv in the MLP)",
            "transformers",
            _build(
                lambda: T.PvtV2Model(
                    T.PvtV2Config(
                        image_size=IMAGE,
                        num_encoder_blocks=2,
                        depths=[1, 1],
                        sr_ratios=[2, 1],
                        hidden_sizes=[16, 32],
                        patch_sizes=[7, 3],
                        strides=[4, 2],
                        num_attention_heads=[1, 2],
                        mlp_ratios=[2, 2],
                    )
                ),
                vit_proc,
            ),
            # its MLP is dense1 / dwconv / dense2, a Mix-FFN as SegFormer's
            lambda m: ["encoder.layers.0.blocks.0", "encoder.layers.1.blocks.0"],
            ("act", "mlp.intermediate_act_fn"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            "eager",
            overlap=True,
        ),
        Family(
            "GLPN (SegFormer-like encoder)",
            "transformers",
            _build(
                lambda: T.GLPNModel(
                    T.GLPNConfig(
                        num_encoder_blocks=2,
                        depths=[1, 1],
                        sr_ratios=[2, 1],
                        hidden_sizes=[16, 32],
                        patch_sizes=[7, 3],
                        strides=[4, 2],
                        num_attention_heads=[1, 2],
                        mlp_ratios=[2, 2],
                        decoder_hidden_size=16,
                    )
                ),
                vit_proc,
            ),
            lambda m: ["encoder.block.0.0", "encoder.block.1.0"],
            ("act", "mlp.intermediate_act_fn"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            "eager",
            overlap=True,
        ),
        Family(
            "FocalNet (focal modulation, no attention)",
            "transformers",
            _build(
                lambda: T.FocalNetModel(
                    T.FocalNetConfig(image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], focal_levels=[2, 2])
                ),
                vit_proc,
            ),
            refuse="no attention module",
        ),
        Family(
            "BiT (convolutional)",
            "transformers",
            _build(
                lambda: T.BitModel(T.BitConfig(depths=[1, 1], hidden_sizes=[16, 32], embedding_size=16, num_groups=4)),
                vit_proc,
            ),
            refuse="convolutional tower",
        ),
        Family(
            "Donut Swin (document encoder)",
            "transformers",
            _build(lambda: T.DonutSwinModel(T.DonutSwinConfig(**swin)), vit_proc),
            _stages("encoder.layers", "blocks", [1, 2]),
            ("act", "intermediate.intermediate_act_fn"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
        ),
        Family(
            "DPT (plain ViT encoder)",
            "transformers",
            _build(
                lambda: T.DPTModel(
                    T.DPTConfig(
                        **_V,
                        backbone_out_indices=[0, 1],
                        neck_hidden_sizes=[8, 8],
                        reassemble_factors=[1, 1],
                        fusion_hidden_size=8,
                    )
                ),
                _proc("DPTImageProcessor", size={"height": IMAGE, "width": IMAGE}),
            ),
            _seq("encoder.layer", 2),
            ("act", "intermediate.intermediate_act_fn"),
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "LayoutLMv3 (image patches alone, post-norm BERT layers)",
            "transformers",
            _build(
                lambda: T.LayoutLMv3Model(
                    T.LayoutLMv3Config(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        input_size=IMAGE,
                        patch_size=8,
                        vocab_size=99,
                        max_2d_position_embeddings=64,
                        coordinate_size=8,
                        shape_size=8,
                    )
                ),
                _proc("LayoutLMv3ImageProcessor", size={"height": IMAGE, "width": IMAGE}, apply_ocr=False),
            ),
            refuse="no norm before attention and MLP",
        ),
        Family(
            "SegGPT (needs a prompt image and mask)",
            "transformers",
            _build(
                lambda: T.SegGptModel(
                    T.SegGptConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        mlp_ratio=2.0,
                        image_size=[32, 16],
                        patch_size=8,
                        pretrain_image_size=32,
                        merge_index=0,
                        intermediate_hidden_state_indices=[0, 1],
                        decoder_hidden_size=8,
                    )
                ),
                _proc("SegGptImageProcessor", size={"height": 16, "width": 16}),
            ),
            refuse="its MLP is not recognised",
        ),
        Family(
            "DiNAT (neighbourhood attention, needs natten)",
            "transformers",
            _build(
                lambda: T.DinatModel(
                    T.DinatConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], kernel_size=3, dilations=[[1], [1]])
                ),
                vit_proc,
            ),
            untested="DiNAT's neighbourhood attention needs the natten package, which is not installed here",
        ),
    ]


_SWIN4 = dict(
    model_type="swin",
    image_size=64,
    patch_size=4,
    embed_dim=16,
    depths=[1, 1, 1, 1],
    num_heads=[1, 1, 2, 2],
    window_size=2,
    mlp_ratio=2.0,
    out_features=["stage1", "stage2", "stage3", "stage4"],
)
_DV2_16 = dict(
    model_type="dinov2",
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_ratio=2,
    image_size=16,
    patch_size=8,
)


def _task_models() -> list[Family]:
    import transformers as T

    swin_blocks = [f"encoder.layers.{s}.blocks.0" for s in range(4)]
    return [
        Family(
            "VitMatte (ViTDet backbone on image + trimap: 4 channels)",
            "transformers",
            _build(
                lambda: T.VitMatteForImageMatting(
                    T.VitMatteConfig(
                        backbone_config=dict(
                            model_type="vitdet",
                            hidden_size=32,
                            num_hidden_layers=2,
                            num_attention_heads=2,
                            mlp_ratio=2,
                            image_size=64,
                            pretrain_image_size=64,
                            patch_size=16,
                            num_channels=4,
                            out_features=["stage2"],
                        ),
                        hidden_size=32,
                        convstream_hidden_sizes=[8, 8, 8],
                        fusion_hidden_sizes=[8, 8, 8, 8],
                    )
                ),
                _proc("VitMatteImageProcessor"),
            ),
            refuse="the model takes 4 input channels",
        ),
        Family(
            "Mask2Former (Swin backbone)",
            "transformers",
            _build(
                lambda: T.Mask2FormerForUniversalSegmentation(
                    T.Mask2FormerConfig(
                        backbone_config=_SWIN4,
                        feature_size=32,
                        mask_feature_size=32,
                        hidden_dim=32,
                        encoder_feedforward_dim=32,
                        dim_feedforward=32,
                        encoder_layers=1,
                        decoder_layers=2,
                        num_attention_heads=2,
                        num_queries=4,
                        num_labels=3,
                    )
                ),
                _proc("ViTImageProcessor", size={"height": 64, "width": 64}),
            ),
            lambda m: [f"model.pixel_level_module.encoder.swin.{b}" for b in swin_blocks],
            A,
            (0, (16, 16)),
            (0, (2, 2)),
            None,
            None,
        ),
        Family(
            "MaskFormer (Swin backbone)",
            "transformers",
            _build(
                lambda: T.MaskFormerForInstanceSegmentation(
                    T.MaskFormerConfig(
                        backbone_config=_SWIN4,
                        decoder_config=dict(
                            model_type="detr",
                            d_model=16,
                            encoder_layers=1,
                            decoder_layers=1,
                            encoder_attention_heads=2,
                            decoder_attention_heads=2,
                            encoder_ffn_dim=32,
                            decoder_ffn_dim=32,
                            num_queries=4,
                        ),
                        fpn_feature_size=32,
                        mask_feature_size=32,
                        num_labels=3,
                    )
                ),
                _proc("ViTImageProcessor", size={"height": 64, "width": 64}),
            ),
            lambda m: [f"model.pixel_level_module.encoder.model.{b}" for b in swin_blocks],
            ("act", "intermediate.intermediate_act_fn"),
            (0, (16, 16)),
            (0, (2, 2)),
            None,
            None,
        ),
        Family(
            "DepthPro (patches of scaled images folded into the batch)",
            "transformers",
            _build(
                lambda: T.DepthProModel(
                    T.DepthProConfig(
                        patch_size=16,
                        fusion_hidden_size=16,
                        intermediate_hook_ids=[0],
                        intermediate_feature_dims=[8],
                        scaled_images_ratios=[0.5, 1],
                        scaled_images_overlap_ratios=[0.0, 0.5],
                        scaled_images_feature_dims=[8, 8],
                        image_model_config=_DV2_16,
                        patch_model_config=_DV2_16,
                        fov_model_config=dict(_DV2_16, num_hidden_layers=1),
                    )
                ),
                _proc("DepthProImageProcessor", size={"height": IMAGE, "width": IMAGE}),
            ),
            refuse="not the batch",
        ),
    ]


def clip_families() -> list[Family]:
    return [*_clip_like(), *_vit_relatives(), *_task_models()]
