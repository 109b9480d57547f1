"""open_clip models: named architectures with pretrained tags, ``hf-hub:`` repos and local directories."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path

import torch
from torch import nn

from clipviz.errors import ClipvizError, UnsupportedModelError
from clipviz.model.architecture import find_blocks
from clipviz.model.backends.base import (
    Backend,
    ImageProjection,
    TextTower,
    check_text_lengths,
    settings_text,
    trained_logit_scale,
)
from clipviz.model.backends.base import pair as _pair
from clipviz.model.backends.hub import fetching
from clipviz.model.backends.preprocessing import open_clip_transform
from clipviz.model.backends.timm import timm_prefix_tokens


def _check_name(name: str) -> None:
    import open_clip

    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
        raise ClipvizError(f"unknown open_clip model '{name}'{hint}")


def _tokenizer(name: str, spec: str, cache_dir: str | None = None):
    """open_clip's tokenizer for ``name``, or ``(None, why)``: some configs name a tokenizer on the Hugging Face Hub,
    which cannot be fetched offline; the image tower works without it and text asks fail with one line."""
    import open_clip

    try:
        return open_clip.get_tokenizer(name, cache_dir=cache_dir), None
    except Exception as error:  # noqa: BLE001 - hub / tokenizer-library failures share no base class
        first = (str(error).splitlines() or [""])[0][:160]
        return None, (
            f"model '{spec}' has no usable text tokenizer here: its tokenizer must be fetched from the "
            f"Hugging Face Hub or needs a missing library ({type(error).__name__}: {first})"
        )


#: The weight files open_clip looks for in a local folder, in its order of preference.
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


def _check_weights(folder: Path) -> None:
    """Refuse a local open_clip folder without one of open_clip's weight files: open_clip would build the model with
    random weights (a log line), or load whichever other checkpoint it finds there."""
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ClipvizError(
            f"no weights in '{folder}': an open_clip folder needs {WEIGHT_FILES[0]} (or "
            f"{', '.join(WEIGHT_FILES[1:4])}) next to its open_clip_config.json"
        )


def _token_counts(tokenizer, texts: list[str]) -> list[int] | None:
    """How many tokens each text takes with its start and end tokens, for open_clip's BPE tokenizer and its Hugging
    Face ones; ``None`` for a tokenizer of another kind."""
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and callable(inner):  # open_clip's HFTokenizer: the transformers tokenizer it wraps
        if getattr(tokenizer, "tokenizer_mode", None) == "clips":
            return None  # its own way of fitting long texts, not a cut
        clean = getattr(tokenizer, "clean_fn", None) or (lambda text: text)  # as its __call__ cleans them first
        return [len(ids) for ids in inner([clean(text) for text in texts])["input_ids"]]
    if callable(getattr(tokenizer, "encode", None)):  # SimpleTokenizer: the BPE ids, without <start> and <end>
        return [len(tokenizer.encode(text)) + 2 for text in texts]
    return None


def load_open_clip(ref: str, spec: str, *, dtype: torch.dtype | None = None, cache_dir: str | None = None) -> Backend:
    """``ref`` is ``name``, ``name/tag``, ``hf-hub:org/repo`` or ``local-dir:/path``."""
    import open_clip

    if ref.startswith("local-dir:"):
        _check_weights(Path(ref.removeprefix("local-dir:")))
    if ref.startswith(("hf-hub:", "local-dir:")):
        name, tag = ref, None
    else:
        name, _, tag = ref.partition("/")
        tag = tag or None
        _check_name(name)
        if tag is not None and not Path(tag).expanduser().is_file():
            tags = open_clip.list_pretrained_tags_by_model(name)
            if tag not in tags:
                shown = ", ".join(tags) if tags else "none (it has no pretrained weights)"
                raise ClipvizError(f"unknown pretrained tag '{tag}' for open_clip model '{name}'; its tags: {shown}")
        if tag is None:
            warnings.warn(f"open_clip:{name} has no pretrained tag: its weights are random", stacklevel=3)
    # OpenAI's weights were trained with QuickGELU; a model name without "-quickgelu" would silently differ.
    quick = tag == "openai" and not name.endswith("-quickgelu")
    model = fetching(
        spec, lambda: open_clip.create_model(name, pretrained=tag, force_quick_gelu=quick, cache_dir=cache_dir)
    )
    if dtype is not None:
        model = model.to(dtype)
    tokenizer, why = _tokenizer(name, spec, cache_dir)
    return open_clip_backend(model, spec, tokenizer, why)


def open_clip_backend(model: nn.Module, spec: str, tokenizer=None, tokenizer_error: str | None = None) -> Backend:
    """The backend of an open_clip model already in memory (``tokenizer``: open_clip's for its name; by default
    the CLIP BPE tokenizer with the model's context length; ``tokenizer_error``: why there is none, said when text
    is asked for)."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    model.eval()
    visual = _visual(model, spec)
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean, std = tuple(cfg.get("mean", OPENAI_DATASET_MEAN)), tuple(cfg.get("std", OPENAI_DATASET_STD))
    source = (
        "the model's preprocess config"
        if "mean" in cfg
        else "open_clip's default (OpenAI CLIP's mean and std): the model carries no preprocess config"
    )
    notes = []
    if tokenizer is None and tokenizer_error is None:
        tokenizer, tokenizer_error = _default_tokenizer(model)
        if tokenizer is not None:
            notes.append("its texts are tokenised with open_clip's CLIP BPE tokenizer (no tokenizer was given)")

    def tokenize(texts):
        if tokenizer is None:
            raise ClipvizError(tokenizer_error)
        texts = list(texts)
        lengths = _token_counts(tokenizer, texts)
        if lengths is not None:
            check_text_lengths(texts, lengths, getattr(tokenizer, "context_length", None))
        return tokenizer(texts)

    text = TextTower(
        tokenize=tokenize,
        encode_tokens=lambda tokens: model.encode_text(tokens.to(next(model.parameters()).device)),
        context_length=getattr(tokenizer, "context_length", None),
        logit_scale=trained_logit_scale(model),
    )
    transform, stretch = open_clip_transform(model)
    notes += [stretch] if stretch else []
    common = {
        "kind": "open_clip",
        "spec": spec,
        "native": model,
        "mean": mean,
        "std": std,
        "forward": model.encode_image,
        "output_kind": "image_embedding",
        "text": text,
        "pil_transform": transform,
        "notes": tuple(notes),
        "preprocessing_source": source,
        "settings": settings_text(cfg),
    }
    trunk = getattr(visual, "trunk", None)
    if isinstance(trunk, nn.Module):  # a timm trunk (SigLIP, EVA, ...)
        find_blocks(trunk)  # a convolutional trunk (ConvNeXt) is refused here, with the reason
        return Backend(
            vision_root=trunk,
            vision_path="visual.trunk",
            architecture=f"open_clip/{type(trunk).__name__}",
            image_size=_pair(visual.image_size),
            patch_size=_pair(trunk.patch_embed.patch_size),
            prefix_tokens=timm_prefix_tokens(trunk),
            **common,
        )
    if not hasattr(visual, "transformer"):
        raise UnsupportedModelError(
            f"unsupported architecture {type(visual).__name__}: clipviz needs a vision transformer tower "
            "(open_clip VisionTransformer or a timm ViT trunk)"
        )
    projection = None
    if (
        getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", "tok") == "tok"
        and isinstance(getattr(visual, "proj", None), torch.Tensor)
    ):
        projection = ImageProjection(final_norm=visual.ln_post, matrix=lambda: visual.proj.T, pooled_token=0)
    has_cls = isinstance(getattr(visual, "class_embedding", None), torch.Tensor) and not getattr(
        visual, "no_cls", False
    )
    return Backend(
        vision_root=visual,
        vision_path="visual",
        architecture="open_clip/VisionTransformer",
        image_size=_pair(visual.image_size),
        patch_size=_pair(visual.patch_size),
        prefix_tokens=("cls",) if has_cls else (),
        projection=projection,
        seq_first=not getattr(visual.transformer, "batch_first", True),
        **common,
    )


def _visual(model: nn.Module, spec: str) -> nn.Module:
    visual = getattr(model, "visual", None)
    if not isinstance(visual, nn.Module):
        raise ClipvizError(
            f"'{spec}' is an open_clip {type(model).__name__} without a .visual image tower: wrap the whole open_clip "
            "model (CLIP or CustomTextCLIP), not its parts"
        )
    return visual


def _default_tokenizer(model: nn.Module) -> tuple[object | None, str | None]:
    """``(tokenizer, None)``: open_clip's CLIP BPE tokenizer, for a model wrapped without one whose text tower reads
    that tokenizer's vocabulary; else ``(None, why)``: any other vocabulary would be read with the wrong ids."""
    import open_clip

    tokenizer = open_clip.SimpleTokenizer(context_length=getattr(model, "context_length", None) or 77)
    vocabulary = getattr(model, "vocab_size", None)
    if vocabulary == len(tokenizer.encoder):
        return tokenizer, None
    return None, (
        f"this open_clip model was wrapped without its tokenizer and its text tower reads "
        f"{vocabulary if vocabulary is not None else 'an unknown number of'} token ids, not the CLIP BPE "
        f"tokenizer's {len(tokenizer.encoder)}: pass tokenizer=open_clip.get_tokenizer(<its model name>) to "
        "clipviz.wrap"
    )


def is_open_clip_dir(path: Path) -> bool:
    return (path / "open_clip_config.json").is_file()
