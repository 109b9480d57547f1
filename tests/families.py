"""Tiny random models of every vision-transformer family clipviz is tested on, built from configs (no network).

Each ``Family`` says how to build and save the model, and what is known about it *independently of clipviz*
(written out by hand from the libraries' code): where its blocks live, where the MLP's activation (or the gate and
up projections of a gated MLP) sits, the token layout of its first and last block, how to read its own hidden
states and attention probabilities, or the reason clipviz must refuse it. Every parameter gets small random noise
before saving, so zero-initialised biases (relative-position tables, layer scales) cannot hide a mistake.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

IMAGE = 32


@dataclass(frozen=True)
class Family:
    name: str
    backend: str  # "transformers", "timm" or "open_clip"
    build: Callable[[Path], str]  # saves a tiny model under the directory, returns the spec clipviz loads
    blocks: Callable[[nn.Module], list[str]] | None = None  # native block paths in order (relative to model.native)
    mlp: tuple = ()  # ("act", rel path) | ("gated", mlp rel path, gate, up, act) | ("packed", mlp, fc1, act, last)
    first: tuple[int, tuple[int, int]] | None = None  # (prefix tokens, grid) of the first block's resid_post
    last: tuple[int, tuple[int, int]] | None = None  # the same for the last block clipviz keeps
    hidden: str | None = None  # "hf:<tower path>" or "timm": where the library exposes per-block hidden states
    attention: str | None = None  # "hf:<tower path>", "timm" or "mha": how to read native attention probabilities
    refuse: str | None = None  # a phrase the one-line refusal must contain
    untested: str | None = None  # why it cannot be built offline here
    text: bool = False  # a text tower to check
    overlap: bool = False  # an overlapping convolutional stem: the order check allows a neighbouring token


def noisy(model: nn.Module, std: float = 0.02) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)
    return model.eval()


# ----------------------------------------------------------------------------------------------- transformers
def _processor(directory: Path, side: int = IMAGE) -> None:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_mean=[0.4, 0.45, 0.5],
        image_std=[0.2, 0.25, 0.3],
    ).save_pretrained(directory)


def _hf(make: Callable[[], nn.Module], processor: bool = True, side: int = IMAGE) -> Callable[[Path], str]:
    def build(directory: Path) -> str:
        torch.manual_seed(0)
        noisy(make()).save_pretrained(directory)
        if processor:
            _processor(directory, side)
        return f"hf:{directory}"

    return build


def _grey_vit(directory: Path) -> str:
    """A ViT that reads one channel (grey scans), with a processor that normalises it with one mean and std."""
    import transformers as T

    torch.manual_seed(0)
    noisy(T.ViTModel(T.ViTConfig(**_vit(num_channels=1)))).save_pretrained(directory)
    T.ViTImageProcessor(
        size={"height": IMAGE, "width": IMAGE}, image_mean=[0.45], image_std=[0.25], do_convert_rgb=False
    ).save_pretrained(directory)
    return f"hf:{directory}"


def _vit(**extra):
    return dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=IMAGE,
        patch_size=8,
        **extra,
    )


def _dinov2_registers(**extra):
    import transformers as T

    return T.Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=IMAGE,
        patch_size=8,
        num_register_tokens=4,
        **extra,
    )


def _seq(prefix: str, n: int) -> Callable[[nn.Module], list[str]]:
    return lambda m: [f"{prefix}.{i}" for i in range(n)]


def _stages(prefix: str, inner: str, depths) -> Callable[[nn.Module], list[str]]:
    mid = f".{inner}." if inner else "."
    return lambda m: [f"{prefix}.{s}{mid}{j}" for s, d in enumerate(depths) for j in range(d)]


def _hf_families() -> list[Family]:
    import transformers as T

    g = (4, 4)
    out = [
        Family(
            "ViT",
            "transformers",
            _hf(lambda: T.ViTModel(T.ViTConfig(**_vit()))),
            _seq("layers", 3),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "ViT classifier",
            "transformers",
            _hf(lambda: T.ViTForImageClassification(T.ViTConfig(**_vit(num_labels=5)))),
            _seq("vit.layers", 3),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:vit",
            "hf:vit",
        ),
        Family(
            "ViT (grey: 1 input channel)",
            "transformers",
            _grey_vit,
            _seq("layers", 3),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "DeiT",
            "transformers",
            _hf(lambda: T.DeiTModel(T.DeiTConfig(**_vit()))),
            _seq("layers", 3),
            ("act", "mlp.activation_fn"),
            (2, g),
            (2, g),
            "hf:",
            "hf:",
        ),
        Family(
            "BEiT (relative position bias)",
            "transformers",
            _hf(lambda: T.BeitModel(T.BeitConfig(**_vit(use_relative_position_bias=True, layer_scale_init_value=0.1)))),
            _seq("layers", 3),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "CLIP vision",
            "transformers",
            _hf(lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**_vit()))),
            _seq("encoder.layers", 3),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "SigLIP vision",
            "transformers",
            _hf(lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**_vit()))),
            _seq("encoder.layers", 3),
            ("act", "mlp.activation_fn"),
            (0, g),
            (0, g),
            "hf:",
            "hf:",
        ),
        Family(
            "SigLIP2 NaFlex",
            "transformers",
            _hf(
                lambda: T.Siglip2VisionModel(
                    T.Siglip2VisionConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        patch_size=8,
                        num_patches=16,
                    )
                )
            ),
            _seq("encoder.layers", 2),
            ("act", "mlp.activation_fn"),
            (0, g),
            (0, g),
            "naflex",
            "naflex",
        ),
        Family(
            "DINOv2",
            "transformers",
            _hf(
                lambda: T.Dinov2Model(
                    T.Dinov2Config(
                        hidden_size=32,
                        num_hidden_layers=3,
                        num_attention_heads=2,
                        mlp_ratio=2,
                        image_size=IMAGE,
                        patch_size=8,
                    )
                )
            ),
            _seq("encoder.layer", 3),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "DINOv2 + registers",
            "transformers",
            _hf(lambda: T.Dinov2WithRegistersModel(_dinov2_registers())),
            _seq("encoder.layer", 2),
            ("act", "mlp.activation_fn"),
            (5, g),
            (5, g),
            "hf:",
            "hf:",
        ),
        Family(
            "DINOv2 SwiGLU (giant)",
            "transformers",
            _hf(
                lambda: T.Dinov2Model(
                    T.Dinov2Config(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        mlp_ratio=2,
                        image_size=IMAGE,
                        patch_size=8,
                        use_swiglu_ffn=True,
                    )
                )
            ),
            _seq("encoder.layer", 2),
            ("gated", "mlp", "gate_proj", "up_proj", "act_fn"),
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "DINOv3 ViT (gated MLP)",
            "transformers",
            _hf(
                lambda: T.DINOv3ViTModel(
                    T.DINOv3ViTConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        image_size=IMAGE,
                        patch_size=8,
                        num_register_tokens=2,
                        use_gated_mlp=True,
                    )
                )
            ),
            _seq("model.layer", 2),
            ("gated", "mlp", "gate_proj", "up_proj", "act_fn"),
            (3, g),
            (3, g),
            "hf:",
            None,
        ),
        Family(
            "DINOv3 ViT (plain MLP, up_proj/down_proj)",
            "transformers",
            _hf(
                lambda: T.DINOv3ViTModel(
                    T.DINOv3ViTConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        image_size=IMAGE,
                        patch_size=8,
                        num_register_tokens=0,
                    )
                )
            ),
            _seq("model.layer", 2),
            ("act", "mlp.act_fn"),
            (1, g),
            (1, g),
            "hf:",
            None,
        ),
        Family(
            "AIMv2 vision",
            "transformers",
            _hf(
                lambda: T.Aimv2VisionModel(
                    T.Aimv2VisionConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        image_size=IMAGE,
                        patch_size=8,
                    )
                )
            ),
            _seq("encoder.layers", 2),
            ("gated", "ffn", "gate_proj", "up_proj", "act_fn"),
            (0, g),
            (0, g),
            "hf:",
            "hf:",
        ),
        Family(
            "Swin",
            "transformers",
            _hf(
                lambda: T.SwinModel(
                    T.SwinConfig(
                        embed_dim=16,
                        depths=[1, 2],
                        num_heads=[1, 2],
                        image_size=IMAGE,
                        patch_size=4,
                        window_size=4,
                        mlp_ratio=2.0,
                    )
                )
            ),
            _stages("encoder.layers", "blocks", [1, 2]),
            ("act", "mlp.activation_fn"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
        ),
        Family(
            "Swinv2 (post-norm, cosine attention)",
            "transformers",
            _hf(
                lambda: T.Swinv2Model(
                    T.Swinv2Config(
                        embed_dim=16,
                        depths=[1, 2],
                        num_heads=[1, 2],
                        image_size=IMAGE,
                        patch_size=4,
                        window_size=4,
                        mlp_ratio=2.0,
                    )
                )
            ),
            _stages("encoder.layers", "blocks", [1, 2]),
            ("act", "intermediate.intermediate_act_fn"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
        ),
        Family(
            "ViTMAE (masking off)",
            "transformers",
            _hf(lambda: T.ViTMAEModel(T.ViTMAEConfig(**_vit()))),
            _seq("layers", 3),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "I-JEPA",
            "transformers",
            _hf(lambda: T.IJepaModel(T.IJepaConfig(**_vit()))),
            _seq("layers", 3),
            ("act", "mlp.activation_fn"),
            (0, g),
            (0, g),
            "hf:",
            "hf:",
        ),
        Family(
            "Pixio (several CLS tokens)",
            "transformers",
            _hf(
                lambda: T.PixioModel(
                    T.PixioConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        mlp_ratio=2,
                        image_size=IMAGE,
                        patch_size=8,
                        n_cls_tokens=3,
                    )
                )
            ),
            _seq("layers", 2),
            ("act", "mlp.activation_fn"),
            (3, g),
            (3, g),
            "hf:",
            "hf:",
        ),
        Family(
            "RADIO (CLS + registers, SwiGLU)",
            "transformers",
            _radio,
            _seq("encoder.layer", 2),
            ("gated", "mlp", "gate_proj", "up_proj", "act_fn"),
            (4, g),
            (4, g),
            "hf:",
            "hf:",
        ),
        Family(
            "RADIO via trust_remote_code (nvidia/RADIO)",
            "transformers",
            lambda d: "",
            untested="its modelling code is remote code on the Hugging Face Hub (no network here)",
        ),
        Family(
            "MLCD (RoPE)",
            "transformers",
            _hf(lambda: T.MLCDVisionModel(T.MLCDVisionConfig(**_vit()))),
            _seq("encoder.layers", 3),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:",
            None,
        ),
        Family(
            "LLaVA (CLIP tower inside)",
            "transformers",
            _llava,
            _seq("model.vision_tower.encoder.layers", 2),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:model.vision_tower",
            "hf:model.vision_tower",
        ),
        Family(
            "timm wrapper (own image size)",
            "transformers",
            _timm_wrapper,
            _seq("timm_model.blocks", 2),
            ("act", "mlp.act"),
            (1, (6, 6)),
            (1, (6, 6)),
            None,
            "timm:timm_model",
        ),
        Family(
            "ViTDet (4-D activations)",
            "transformers",
            _hf(
                lambda: T.VitDetModel(
                    T.VitDetConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        mlp_ratio=2,
                        image_size=IMAGE,
                        pretrain_image_size=IMAGE,
                        patch_size=8,
                    )
                )
            ),
            _seq("encoder.layer", 2),
            ("act", "mlp.act"),
            (0, g),
            (0, g),
            "hf:",
            None,
        ),
        Family(
            "CvT (convolutional projections)",
            "transformers",
            _hf(
                lambda: T.CvtModel(
                    T.CvtConfig(
                        embed_dim=[16, 32],
                        num_heads=[1, 2],
                        depth=[1, 2],  # transformers indexes drop-path rates by stage: stage s needs > s blocks
                        patch_sizes=[7, 3],
                        patch_stride=[4, 2],
                        patch_padding=[2, 1],
                        mlp_ratio=[2.0, 2.0],
                        attention_drop_rate=[0.0, 0.0],
                        drop_rate=[0.0, 0.0],
                        drop_path_rate=[0.0, 0.0],
                        qkv_bias=[True, True],
                        cls_token=[False, True],
                        qkv_projection_method=["dw_bn", "dw_bn"],
                        kernel_qkv=[3, 3],
                        padding_kv=[1, 1],
                        stride_kv=[2, 2],
                        padding_q=[1, 1],
                        stride_q=[1, 1],
                    )
                )
            ),
            lambda m: ["encoder.stages.0.layers.0", "encoder.stages.1.layers.0", "encoder.stages.1.layers.1"],
            ("act", "intermediate.activation"),
            (0, (8, 8)),
            (1, (4, 4)),
            None,
            None,
            overlap=True,
        ),
        Family(
            "Pixtral vision (images packed into one sequence)",
            "transformers",
            _hf(
                lambda: T.PixtralVisionModel(
                    T.PixtralVisionConfig(
                        hidden_size=32,
                        intermediate_size=64,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        image_size=IMAGE,
                        patch_size=8,
                    )
                )
            ),
            refuse="not the batch",
        ),
        Family(
            "MobileViT (batch folding)",
            "transformers",
            _hf(
                lambda: T.MobileViTModel(
                    T.MobileViTConfig(
                        image_size=IMAGE, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32]
                    )
                )
            ),
            refuse="not the batch",
        ),
        Family(
            "Hiera (transformers)",
            "transformers",
            _hf(
                lambda: T.HieraModel(
                    T.HieraConfig(
                        embed_dim=8,
                        image_size=[64, 64],
                        depths=[1, 1, 1, 1],
                        num_heads=[1, 1, 1, 1],
                        masked_unit_size=[8, 8],
                    )
                )
            ),
            refuse="not row-major",
        ),
        Family(
            "SegFormer (Mix-FFN, reduced keys)",
            "transformers",
            _hf(
                lambda: T.SegformerModel(
                    T.SegformerConfig(
                        num_encoder_blocks=2,
                        depths=[1, 1],
                        sr_ratios=[2, 1],
                        hidden_sizes=[16, 32],
                        num_attention_heads=[1, 2],
                        decoder_hidden_size=32,
                        image_size=IMAGE,
                    )
                )
            ),
            _stages("stages", "blocks", [1, 1]),
            ("act", "mlp.activation_fn"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            "hf:",
            overlap=True,
        ),
        Family(
            "DeiT distilled classifier (with teacher)",
            "transformers",
            _hf(lambda: T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**_vit(), num_labels=5))),
            _seq("deit.layers", 3),
            ("act", "mlp.activation_fn"),
            (2, g),
            (2, g),
            "hf:deit",
            "hf:deit",
        ),
        Family(
            "DINOv2 backbone (feature maps out)",
            "transformers",
            _hf(
                lambda: T.Dinov2Backbone(
                    T.Dinov2Config(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        mlp_ratio=2,
                        image_size=IMAGE,
                        patch_size=8,
                        out_indices=[1, 2],
                    )
                )
            ),
            _seq("encoder.layer", 2),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:",
            "hf:",
        ),
        Family(
            "ViTPose backbone (non-square input, no CLS)",
            "transformers",
            _hf(
                lambda: T.VitPoseBackbone(
                    T.VitPoseBackboneConfig(
                        hidden_size=32,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        image_size=[64, 48],
                        patch_size=[8, 8],
                        out_indices=[2],
                    )
                ),
                processor=False,
            ),
            _seq("encoder.layer", 2),
            ("act", "mlp.activation"),
            (0, (8, 6)),
            (0, (8, 6)),
            "hf:",
            "hf:",
        ),
        Family(
            "Depth Anything (a task head around a DINOv2 backbone)",
            "transformers",
            _hf(
                lambda: T.DepthAnythingForDepthEstimation(
                    T.DepthAnythingConfig(
                        backbone_config=T.Dinov2Config(
                            hidden_size=32,
                            num_hidden_layers=2,
                            num_attention_heads=2,
                            mlp_ratio=2,
                            image_size=IMAGE,
                            patch_size=8,
                            out_indices=[1, 2],
                            reshape_hidden_states=False,
                        ),
                        patch_size=8,
                        reassemble_factors=[1, 1],
                        neck_hidden_sizes=[8, 8],
                        fusion_hidden_size=8,
                        reassemble_hidden_size=32,
                        head_hidden_size=8,
                    )
                )
            ),
            _seq("backbone.encoder.layer", 2),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:backbone",
            "hf:backbone",
        ),
        Family(
            "ViTPose (pose head around its backbone)",
            "transformers",
            _hf(
                lambda: T.VitPoseForPoseEstimation(
                    T.VitPoseConfig(
                        backbone_config=T.VitPoseBackboneConfig(
                            hidden_size=32,
                            num_hidden_layers=2,
                            num_attention_heads=2,
                            image_size=[64, 48],
                            patch_size=[8, 8],
                            out_indices=[2],
                        )
                    )
                ),
                processor=False,
            ),
            _seq("backbone.encoder.layer", 2),
            ("act", "mlp.activation"),
            (0, (8, 6)),
            (0, (8, 6)),
            "hf:backbone",
            "hf:backbone",
        ),
        Family(
            "DINOv2 + registers classifier",
            "transformers",
            _hf(lambda: T.Dinov2WithRegistersForImageClassification(_dinov2_registers(num_labels=3))),
            _seq("dinov2_with_registers.encoder.layer", 2),
            ("act", "mlp.activation_fn"),
            (5, g),
            (5, g),
            "hf:dinov2_with_registers",
            "hf:dinov2_with_registers",
        ),
        Family(
            "Kosmos-2 vision (class token one level down)",
            "transformers",
            _hf(
                lambda: T.Kosmos2ForConditionalGeneration(
                    T.Kosmos2Config(
                        vision_config=dict(_vit(), num_hidden_layers=2),
                        text_config=dict(embed_dim=32, layers=1, attention_heads=2, ffn_dim=64, vocab_size=99),
                        latent_query_num=4,
                    )
                )
            ),
            _seq("vision_model.model.encoder.layers", 2),
            ("act", "mlp.activation_fn"),
            (1, g),
            (1, g),
            "hf:vision_model.model",
            "hf:vision_model.model",
        ),
        Family(
            "Idefics3 / SmolVLM vision (tower at model.vision_model)",
            "transformers",
            _hf(
                lambda: T.Idefics3ForConditionalGeneration(
                    T.Idefics3Config(
                        vision_config=dict(_vit(), num_hidden_layers=2),
                        text_config=dict(
                            hidden_size=32,
                            num_hidden_layers=1,
                            num_attention_heads=2,
                            intermediate_size=64,
                            vocab_size=300,
                            num_key_value_heads=2,
                        ),
                        scale_factor=2,
                        image_token_id=299,
                    )
                )
            ),
            _seq("model.vision_model.encoder.layers", 2),
            ("act", "mlp.activation_fn"),
            (0, g),
            (0, g),
            "hf:model.vision_model",
            "hf:model.vision_model",
        ),
        Family(
            "YOLOS (detection tokens after the patches)",
            "transformers",
            # 9 detection tokens: 1 + 16 + 9 tokens, which a class token and a 5x5 grid would also explain
            _hf(lambda: T.YolosModel(T.YolosConfig(**dict(_vit(), image_size=[IMAGE, IMAGE]), num_detection_tokens=9))),
            refuse="cannot place its tokens",
        ),
        Family(
            "ConvNeXt (convolutional)",
            "transformers",
            _hf(lambda: T.ConvNextModel(T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2))),
            refuse="convolutional tower",
        ),
    ]
    return out


def _radio(directory: Path) -> str:
    import transformers as T

    torch.manual_seed(0)
    cfg = T.RadioConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2.0,
        patch_size=8,
        image_size=IMAGE,
        use_swiglu_ffn=True,
        num_cls_tokens=2,
        num_registers=2,
        max_img_size=IMAGE,
    )
    noisy(T.RadioModel(cfg)).save_pretrained(directory)
    _processor(directory)
    return f"hf:{directory}"


def _llava(directory: Path) -> str:
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=IMAGE,
            patch_size=8,
        ),
        text_config=T.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=128,
            num_key_value_heads=2,
        ),
        image_token_index=127,
    )
    noisy(T.LlavaForConditionalGeneration(cfg)).save_pretrained(directory)
    _processor(directory)
    return f"hf:{directory}"


def _timm_wrapper(directory: Path) -> str:
    import transformers as T

    torch.manual_seed(0)
    cfg = T.TimmWrapperConfig(
        architecture="vit_tiny_patch16_224",
        model_args=dict(img_size=48, patch_size=8, embed_dim=32, depth=2, num_heads=2),
    )
    noisy(T.TimmWrapperModel(cfg)).save_pretrained(directory)
    return f"hf:{directory}"


# ----------------------------------------------------------------------------------------------------- timm
def _timm(name: str, safe: bool = True, input_size: int | None = None, **kw) -> Callable[[Path], str]:
    def build(directory: Path) -> str:
        import timm
        from timm.models import save_for_hf

        if name.startswith("clipviz_tiny_"):
            _register_tiny_trunks()
        torch.manual_seed(0)
        model = noisy(timm.create_model(name, pretrained=False, num_classes=5, **kw))
        if input_size is not None:  # models without img_size: their pretrained config carries the input size
            model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, input_size, input_size))
        save_for_hf(model, str(directory), safe_serialization=safe, model_args=kw)
        if name.startswith("clipviz_tiny_"):  # timm writes the variant it was built from: name the tiny one
            config = json.loads((directory / "config.json").read_text())
            config["architecture"] = name
            (directory / "config.json").write_text(json.dumps(config))
        return f"timm:{directory}"

    return build


_T = dict(img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _timm_families() -> list[Family]:
    g = (4, 4)
    blocks2 = _seq("blocks", 2)
    return [
        Family(
            "timm ViT + registers",
            "timm",
            _timm("vit_tiny_patch16_224", reg_tokens=2, **_T),
            blocks2,
            ("act", "mlp.act"),
            (3, g),
            (3, g),
            "timm",
            "timm",
        ),
        Family(
            "timm ViT (grey: in_chans=1)",
            "timm",
            _timm("vit_tiny_patch16_224", in_chans=1, **_T),
            blocks2,
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            "timm",
            "timm",
        ),
        Family(
            "timm DeiT3 (grey: in_chans=1, ImageNet's means averaged as timm does)",
            "timm",
            _timm("deit3_small_patch16_224", in_chans=1, **_T),
            blocks2,
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            "timm",
            "timm",
        ),
        Family(
            "timm ViT (4 input channels)",
            "timm",
            _timm("vit_tiny_patch16_224", in_chans=4, **_T),
            refuse="the model takes 4 input channels",
        ),
        Family(
            "timm DeiT3 (layer scale)",
            "timm",
            _timm("deit3_small_patch16_224", **_T),
            blocks2,
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            "timm",
            "timm",
        ),
        Family(
            "timm EVA02 (packed SwiGLU, RoPE)",
            "timm",
            _timm("eva02_tiny_patch14_224", **_T),
            blocks2,
            ("packed", "mlp", "fc1", "act", False),
            (1, g),
            (1, g),
            "timm",
            None,
        ),
        Family(
            "timm EVA02 (SwiGLU + norm, RoPE)",
            "timm",
            _timm("eva02_tiny_patch14_224", scale_mlp=True, **_T),
            blocks2,
            ("gated", "mlp", "fc1_g", "fc1_x", "act"),
            (1, g),
            (1, g),
            "timm",
            None,
        ),
        Family(
            "timm AIMv2",
            "timm",
            _timm("aimv2_1b_patch14_224", **_T),
            blocks2,
            ("gated", "mlp", "fc1_g", "fc1_x", "act"),
            (0, g),
            (0, g),
            "timm",
            "timm",
        ),
        Family(
            "timm ViT relpos",
            "timm",
            _timm("vit_relpos_small_patch16_224", **_T),
            blocks2,
            ("act", "mlp.act"),
            (0, g),
            (0, g),
            None,
            None,
        ),
        Family(
            "timm RoPE ViT",
            "timm",
            _timm("vit_base_patch16_rope_224", **_T),
            blocks2,
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            "timm",
            None,
        ),
        Family(
            "timm DINOv3",
            "timm",
            _timm("vit_base_patch16_dinov3", **_T),
            blocks2,
            ("act", "mlp.act"),
            (5, g),
            (5, g),
            "timm",
            None,
        ),
        Family(
            "timm Perception Encoder",
            "timm",
            _timm("vit_pe_core_tiny_patch16_384", **_T),
            blocks2,
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            "timm",
            None,
        ),
        Family(
            "timm BEiT",
            "timm",
            _timm("beit_base_patch16_224", **_T),
            blocks2,
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            None,
            None,
        ),
        Family(
            "timm SigLIP ViT",
            "timm",
            _timm("vit_base_patch16_siglip_224", **_T),
            blocks2,
            ("act", "mlp.act"),
            (0, g),
            (0, g),
            "timm",
            "timm",
        ),
        Family(
            "timm CaiT (class token joins late)",
            "timm",
            _timm(
                "cait_xxs24_224", img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2, depth_token_only=1
            ),
            blocks2,
            ("act", "mlp.act"),
            (0, g),
            (0, g),
            None,
            "timm",
        ),
        Family(
            "timm ConViT (class token joins late)",
            "timm",
            _timm("convit_tiny", img_size=IMAGE, patch_size=8, embed_dim=32, depth=3, num_heads=2, local_up_to_layer=1),
            _seq("blocks", 3),
            ("act", "mlp.act"),
            (0, g),
            (1, g),
            None,
            "timm",
        ),
        Family(
            "timm PiT (pooling stages)",
            "timm",
            _timm("pit_ti_224", img_size=IMAGE, patch_size=8, stride=4, base_dims=[16, 16], depth=[1, 1], heads=[1, 2]),
            lambda m: ["transformers.0.blocks.0", "transformers.1.blocks.0"],
            ("act", "mlp.act"),
            (1, (7, 7)),
            (1, (4, 4)),
            None,
            "timm",
        ),
        Family(
            "timm Twins-SVT",
            "timm",
            _timm(
                "twins_svt_small",
                img_size=IMAGE,
                embed_dims=(16, 32),
                depths=(1, 1),
                num_heads=(1, 2),
                mlp_ratios=(2, 2),
                sr_ratios=(2, 1),
                wss=(2, 2),
                patch_size=4,
            ),
            lambda m: ["blocks.0.0", "blocks.1.0"],
            ("act", "mlp.act"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
        ),
        Family(
            "timm Twins-PCPVT",
            "timm",
            _timm(
                "twins_pcpvt_small",
                img_size=IMAGE,
                embed_dims=(16, 32),
                depths=(1, 1),
                num_heads=(1, 2),
                mlp_ratios=(2, 2),
                sr_ratios=(2, 1),
                patch_size=4,
            ),
            lambda m: ["blocks.0.0", "blocks.1.0"],
            ("act", "mlp.act"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
        ),
        Family(
            "timm Swin (NHWC)",
            "timm",
            _timm(
                "swin_tiny_patch4_window7_224",
                img_size=IMAGE,
                patch_size=4,
                window_size=4,
                embed_dim=16,
                depths=(1, 1),
                num_heads=(1, 2),
            ),
            lambda m: ["layers.0.blocks.0", "layers.1.blocks.0"],
            ("act", "mlp.act"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
        ),
        Family(
            "timm Swinv2 (NHWC, post-norm)",
            "timm",
            _timm(
                "swinv2_tiny_window8_256",
                img_size=IMAGE,
                patch_size=4,
                window_size=4,
                embed_dim=16,
                depths=(1, 1),
                num_heads=(1, 2),
            ),
            lambda m: ["layers.0.blocks.0", "layers.1.blocks.0"],
            ("act", "mlp.act"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
        ),
        Family(
            "timm CrossViT (two branches)",
            "timm",
            _timm(
                "crossvit_tiny_240",
                img_size=(IMAGE, IMAGE),
                img_scale=(1.0, 1.0),
                patch_size=(8, 16),
                embed_dim=(16, 32),
                depth=((1, 1, 0),),
                num_heads=(1, 2),
                mlp_ratio=(2, 2, 1),
            ),
            lambda m: ["blocks.0.blocks.0.0", "blocks.0.blocks.1.0"],
            ("act", "mlp.act"),
            (1, g),
            (1, (2, 2)),
            None,
            "timm",
        ),
        Family(
            "timm XCiT (channel attention)",
            "timm",
            _timm(
                "xcit_nano_12_p8_224",
                img_size=IMAGE,
                patch_size=8,
                embed_dim=32,
                depth=2,
                num_heads=2,
                cls_attn_layers=1,
            ),
            blocks2,
            ("act", "mlp.act"),
            (0, g),
            (0, g),
            None,
            None,
        ),
        Family(
            "timm MViTv2 (pooled attention)",
            "timm",
            _timm("clipviz_tiny_mvitv2"),
            lambda m: ["stages.0.blocks.0", "stages.1.blocks.0"],
            ("act", "mlp.act"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            None,
            overlap=True,
        ),
        Family(
            "timm VOLO (outlookers, NHWC)",
            "timm",
            _timm("clipviz_tiny_volo"),
            lambda m: ["network.0.0", "network.2.0", "network.3.0", "network.4.0"],
            ("act", "mlp.act"),
            (0, (4, 4)),
            (0, (2, 2)),
            None,
            None,
        ),
        Family(
            "timm DaViT (spatial + channel attention)",
            "timm",
            _timm(
                "davit_tiny",
                depths=(1, 1),
                embed_dims=(16, 32),
                num_heads=(1, 2),
                window_size=4,
                input_size=IMAGE,
            ),
            lambda m: ["stages.0.blocks.0.0", "stages.0.blocks.0.1", "stages.1.blocks.0.0", "stages.1.blocks.0.1"],
            ("act", "mlp.act"),
            (0, (8, 8)),
            (0, (4, 4)),
            None,
            "timm",
            overlap=True,
        ),
        Family(
            "timm Hiera (unrolled order)",
            "timm",
            _timm("hiera_tiny_224", img_size=64, embed_dim=16, num_heads=1, stages=(1, 1, 1, 1)),
            refuse="not row-major",
        ),
        Family("timm LeViT", "timm", _timm("levit_128", img_size=IMAGE), refuse="no norm before attention and MLP"),
        Family("timm MobileViT (batch folding)", "timm", _timm("mobilevit_xxs"), refuse="not the batch"),
        Family(
            "timm MaxViT (attention blocks held as attributes)",
            "timm",
            _timm("maxvit_pico_rw_256", img_size=64),
            refuse="not items of a list of blocks",
        ),
        Family(
            "timm CoaT",
            "timm",
            _timm(
                "coat_tiny",
                safe=False,
                img_size=IMAGE,
                embed_dims=(16, 16, 16, 16),
                serial_depths=(1, 1, 1, 1),
                parallel_depth=0,
                num_heads=2,
            ),
            refuse="attention module of its blocks is not recognised",
        ),
        Family(
            "timm PiT distilled (two prefix tokens in one parameter)",
            "timm",
            _timm(
                "pit_ti_distilled_224",
                img_size=IMAGE,
                patch_size=8,
                stride=4,
                base_dims=[16, 16],
                depth=[1, 1],
                heads=[1, 2],
            ),
            lambda m: ["transformers.0.blocks.0", "transformers.1.blocks.0"],
            ("act", "mlp.act"),
            (2, (7, 7)),
            (2, (4, 4)),
            None,
            "timm",
        ),
        Family(
            "timm NaFlexViT (in-place position embedding)",
            "timm",
            _timm("naflexvit_base_patch16_gap", input_size=IMAGE, **_T),
            blocks2,
            ("act", "mlp.act"),
            (4, g),
            (4, g),
            None,
            "timm",
        ),
        Family(
            "timm NesT (blocks of tokens)",
            "timm",
            _timm("clipviz_tiny_nest"),
            refuse="cannot place its tokens",
        ),
        Family(
            "timm ViTamin (conv stem + GeGLU)",
            "timm",
            _timm("clipviz_tiny_vitamin"),
            blocks2,
            ("gated", "mlp", "w0", "w1", "act"),
            (0, (2, 2)),
            (0, (2, 2)),
            "timm",
            "timm",
        ),
    ]


# ------------------------------------------------------------------------------------------------ open_clip
def _register_tiny_trunks() -> None:
    """Tiny timm trunks under their own names, so an open_clip config can name them (open_clip passes no sizes)."""
    import timm
    from timm.models import register_model

    if "clipviz_tiny_eva02" in timm.list_models("clipviz_tiny_*"):
        return
    from timm.models.eva import _create_eva
    from timm.models.vision_transformer import _create_vision_transformer

    @register_model
    def clipviz_tiny_eva02(pretrained=False, **kwargs):  # noqa: ARG001 - timm's signature
        args = dict(
            img_size=IMAGE,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_ratio=4 * 2 / 3,
            swiglu_mlp=True,
            use_rot_pos_emb=True,
            ref_feat_shape=(4, 4),
        )
        return _create_eva("eva02_tiny_patch14_224", pretrained=False, **dict(args, **kwargs))

    @register_model
    def clipviz_tiny_nest(pretrained=False, **kwargs):  # noqa: ARG001
        from timm.models.nest import _create_nest

        args = dict(img_size=IMAGE, patch_size=2, embed_dims=(16, 16, 16), num_heads=(1, 1, 1), depths=(1, 1, 1))
        return _create_nest("nest_tiny", pretrained=False, **dict(args, **kwargs))

    @register_model
    def clipviz_tiny_vitamin(pretrained=False, **kwargs):  # noqa: ARG001
        from timm.models.vitamin import GeGluMlp, VitCfg, VitConvCfg, _create_vitamin

        embed_cfg = VitCfg(
            embed_dim=(16, 32, 32),
            depths=(1, 1, 1),
            stem_width=16,
            conv_cfg=VitConvCfg(norm_layer="layernorm2d", norm_eps=1e-6),
            head_type="1d",
        )
        args = dict(
            img_size=IMAGE,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_layer=GeGluMlp,
            mlp_ratio=2.0,
            class_token=False,
            global_pool="avg",
        )
        return _create_vitamin("vitamin_small_224", pretrained=False, embed_cfg=embed_cfg, **dict(args, **kwargs))

    @register_model
    def clipviz_tiny_mvitv2(pretrained=False, **kwargs):  # noqa: ARG001
        from timm.models._builder import build_model_with_cfg
        from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

        cfg = MultiScaleVitCfg(depths=(1, 1), embed_dim=(16, 32), num_heads=(1, 2))
        return build_model_with_cfg(
            MultiScaleVit, "mvitv2_tiny", False, model_cfg=cfg, **dict(dict(img_size=IMAGE), **kwargs)
        )

    @register_model
    def clipviz_tiny_volo(pretrained=False, **kwargs):  # noqa: ARG001
        from timm.models.volo import _create_volo

        args = dict(
            img_size=IMAGE,
            layers=(1, 1, 1, 1),
            embed_dims=(16, 32, 32, 32),
            num_heads=(1, 2, 2, 2),
            stem_hidden_dim=16,
            patch_size=8,
        )
        return _create_volo("volo_d1_224", pretrained=False, **dict(args, **kwargs))

    @register_model
    def clipviz_tiny_pe(pretrained=False, **kwargs):  # noqa: ARG001
        args = dict(
            img_size=IMAGE,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            global_pool="map",
            attn_type="rope",
            use_pre_transformer_norm=True,
            use_rot_pos_emb=True,
            ref_feat_shape=(4, 4),
        )
        return _create_eva("vit_pe_core_tiny_patch16_384", pretrained=False, **dict(args, **kwargs))

    @register_model
    def clipviz_tiny_siglip(pretrained=False, **kwargs):  # noqa: ARG001
        args = dict(
            img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=False, global_pool="map"
        )
        return _create_vision_transformer("vit_base_patch16_siglip_224", pretrained=False, **dict(args, **kwargs))


def _open_clip(vision_cfg: dict, text_cfg: dict | None = None, register: bool = False) -> Callable[[Path], str]:
    def build(directory: Path) -> str:
        import open_clip
        from safetensors.torch import save_file

        if register:
            _register_tiny_trunks()
        torch.manual_seed(0)
        text = text_cfg or dict(width=32, heads=2, layers=1)
        model = noisy(open_clip.CLIP(embed_dim=16, vision_cfg=vision_cfg, text_cfg=text))
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors")
        )
        cfg = {
            "model_cfg": {"embed_dim": 16, "vision_cfg": vision_cfg, "text_cfg": text},
            "preprocess_cfg": {"mean": [0.3, 0.4, 0.5], "std": [0.2, 0.3, 0.4]},
        }
        (directory / "open_clip_config.json").write_text(json.dumps(cfg))
        return f"open_clip:{directory}"

    return build


def _open_clip_families() -> list[Family]:
    g = (4, 4)
    return [
        Family(
            "open_clip ViT",
            "open_clip",
            _open_clip(dict(image_size=IMAGE, patch_size=8, width=64, layers=2, head_width=32)),
            _seq("visual.transformer.resblocks", 2),
            ("act", "mlp.gelu"),
            (1, g),
            (1, g),
            "open_clip",
            "mha",
            text=True,
        ),
        Family(
            "open_clip EVA02 trunk (timm)",
            "open_clip",
            _open_clip(
                dict(image_size=IMAGE, timm_model_name="clipviz_tiny_eva02", timm_pool="token", timm_proj="linear"),
                register=True,
            ),
            _seq("visual.trunk.blocks", 2),
            ("packed", "mlp", "fc1", "act", False),
            (1, g),
            (1, g),
            None,
            None,
            text=True,
        ),
        Family(
            "open_clip SigLIP trunk (timm)",
            "open_clip",
            _open_clip(
                dict(image_size=IMAGE, timm_model_name="clipviz_tiny_siglip", timm_pool="map", timm_proj="none"),
                register=True,
            ),
            _seq("visual.trunk.blocks", 2),
            ("act", "mlp.act"),
            (0, g),
            (0, g),
            None,
            "timm:visual.trunk",
            text=True,
        ),
        Family(
            "open_clip ViTamin trunk (timm)",
            "open_clip",
            _open_clip(
                dict(image_size=IMAGE, timm_model_name="clipviz_tiny_vitamin", timm_pool="", timm_proj="linear"),
                register=True,
            ),
            _seq("visual.trunk.blocks", 2),
            ("gated", "mlp", "w0", "w1", "act"),
            (0, (2, 2)),
            (0, (2, 2)),
            None,
            "timm:visual.trunk",
            text=True,
        ),
        Family(
            "open_clip Perception Encoder trunk (timm)",
            "open_clip",
            _open_clip(
                dict(image_size=IMAGE, timm_model_name="clipviz_tiny_pe", timm_pool="", timm_proj="linear"),
                register=True,
            ),
            _seq("visual.trunk.blocks", 2),
            ("act", "mlp.act"),
            (1, g),
            (1, g),
            None,
            None,
            text=True,
        ),
        Family(
            "open_clip, tokenizer on the Hub (offline)",
            "open_clip",
            _open_clip(
                dict(image_size=IMAGE, patch_size=8, width=64, layers=2, head_width=32),
                dict(width=32, heads=2, layers=1, hf_tokenizer_name="timm/ViT-B-16-SigLIP"),
            ),
            _seq("visual.transformer.resblocks", 2),
            ("act", "mlp.gelu"),
            (1, g),
            (1, g),
            None,
            "mha",
        ),
        Family(
            "open_clip ConvNeXt trunk (timm, convolutional)",
            "open_clip",
            _open_clip(dict(image_size=IMAGE, timm_model_name="convnext_atto", timm_pool="avg", timm_proj="linear")),
            refuse="convolutional tower",
        ),
    ]


def all_families() -> list[Family]:
    from families_clip import clip_families
    from families_more import more_families
    from families_timm_more import timm_more_families
    from families_vlm import vlm_families

    return [
        *_hf_families(),
        *_timm_families(),
        *_open_clip_families(),
        *more_families(),
        *vlm_families(),
        *clip_families(),
        *timm_more_families(),
    ]
