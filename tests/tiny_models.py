"""Tiny models of every supported architecture, built from configs and saved to local directories.

Each entry says where the architecture's native MLP activation module lives (written out by hand from the
libraries' module trees, independently of clipviz's resolver) and how many prefix tokens it has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

IMAGE = 32
PATCH = 8


@dataclass(frozen=True)
class Tiny:
    name: str
    spec_prefix: str
    act_path: str  # native path of block {i}'s MLP activation module, with {i}
    n_prefix: int
    n_blocks: int
    d_mlp: int


def _vit_kwargs(**extra):
    return dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=IMAGE,
        patch_size=PATCH,
        **extra,
    )


def write_clip_tokenizer(directory: Path) -> None:
    """A real CLIP BPE tokenizer (the vocabulary open_clip ships), saved in transformers' format."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = open_clip.SimpleTokenizer()
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(tok, tok): idx for tok, idx in bpe.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    tok.save_pretrained(directory)


def _save_processor(directory: Path, mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3)) -> None:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(
        size={"shortest_edge": IMAGE},
        crop_size={"height": IMAGE, "width": IMAGE},
        image_mean=list(mean),
        image_std=list(std),
    ).save_pretrained(directory)


def build_all(root: Path) -> dict[str, tuple[Tiny, str]]:
    """Build and save every tiny model under ``root``; returns name -> (facts, spec)."""
    import open_clip
    import timm
    import transformers as T

    torch.manual_seed(0)
    out: dict[str, tuple[Tiny, str]] = {}
    hf = {
        "vit": (T.ViTModel, T.ViTConfig(**_vit_kwargs()), "layers.{i}.mlp.activation_fn", 1),
        "vit-classifier": (
            T.ViTForImageClassification,
            T.ViTConfig(**_vit_kwargs(num_labels=5)),
            "vit.layers.{i}.mlp.activation_fn",
            1,
        ),
        "deit": (T.DeiTModel, T.DeiTConfig(**_vit_kwargs()), "layers.{i}.mlp.activation_fn", 2),
        "beit": (T.BeitModel, T.BeitConfig(**_vit_kwargs()), "layers.{i}.mlp.activation_fn", 1),
        "clip-vision": (
            T.CLIPVisionModel,
            T.CLIPVisionConfig(**_vit_kwargs()),
            "encoder.layers.{i}.mlp.activation_fn",
            1,
        ),
        "siglip-vision": (
            T.SiglipVisionModel,
            T.SiglipVisionConfig(**_vit_kwargs()),
            "encoder.layers.{i}.mlp.activation_fn",
            0,
        ),
        "dinov2": (
            T.Dinov2Model,
            T.Dinov2Config(
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=2,
                mlp_ratio=2,
                image_size=IMAGE,
                patch_size=PATCH,
            ),
            "encoder.layer.{i}.mlp.activation_fn",
            1,
        ),
        "dinov2-registers": (
            T.Dinov2WithRegistersModel,
            T.Dinov2WithRegistersConfig(
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=2,
                mlp_ratio=2,
                image_size=IMAGE,
                patch_size=PATCH,
                num_register_tokens=4,
            ),
            "encoder.layer.{i}.mlp.activation_fn",
            5,
        ),
        "clip": (
            T.CLIPModel,
            T.CLIPConfig(
                vision_config=_vit_kwargs(),
                text_config=dict(
                    hidden_size=32,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    intermediate_size=64,
                    max_position_embeddings=32,
                ),
                projection_dim=16,
            ),
            "vision_model.encoder.layers.{i}.mlp.activation_fn",
            1,
        ),
    }
    for name, (cls, config, act, n_prefix) in hf.items():
        directory = root / name
        cls(config).eval().save_pretrained(directory)
        _save_processor(directory)
        if name == "clip":
            write_clip_tokenizer(directory)
        out[name] = (Tiny(name, "hf:", act, n_prefix, 3, 64), f"hf:{directory}")

    swin = T.SwinModel(
        T.SwinConfig(
            embed_dim=16, depths=[1, 2], num_heads=[1, 2], image_size=IMAGE, patch_size=4, window_size=4, mlp_ratio=2.0
        )
    )
    swin.eval().save_pretrained(root / "swin")
    _save_processor(root / "swin")
    out["swin"] = (
        Tiny("swin", "hf:", "encoder.layers.{s}.blocks.{j}.mlp.activation_fn", 0, 3, 32),
        f"hf:{root / 'swin'}",
    )

    oc = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=IMAGE, patch_size=PATCH, width=64, layers=3, head_width=32),
        text_cfg=dict(width=32, heads=2, layers=1),
    )
    oc_dir = root / "open_clip"
    oc_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, str(oc_dir / "open_clip_model.safetensors"))
    cfg = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": dict(image_size=IMAGE, patch_size=PATCH, width=64, layers=3, head_width=32),
            "text_cfg": dict(width=32, heads=2, layers=1),
        },
        "preprocess_cfg": {"mean": [0.3, 0.4, 0.5], "std": [0.2, 0.3, 0.4]},
    }
    (oc_dir / "open_clip_config.json").write_text(json.dumps(cfg))
    out["open_clip"] = (
        Tiny("open_clip", "open_clip:", "visual.transformer.resblocks.{i}.mlp.gelu", 1, 3, 256),
        str(oc_dir),
    )

    tm = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMAGE,
        patch_size=PATCH,
        depth=3,
        embed_dim=32,
        num_heads=2,
        reg_tokens=2,
        num_classes=7,
    )
    from timm.models import save_for_hf

    save_for_hf(tm.eval(), str(root / "timm"), safe_serialization=True)
    out["timm"] = (Tiny("timm", "timm:", "blocks.{i}.mlp.act", 3, 3, 128), str(root / "timm"))
    return out
