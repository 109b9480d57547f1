"""What every backend (transformers, open_clip, timm) hands to ``HookedVisionModel``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from clipviz.errors import ClipvizError


def trained_logit_scale(model: nn.Module) -> Callable[[], float] | None:
    """The model's ``exp(logit_scale)`` as a function (``None`` when it has no such parameter)."""
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        return None
    return lambda: float(scale.detach().float().exp())


def settings_text(*parts) -> str:
    """Configuration dictionaries as one canonical text for ``Backend.settings``: keys sorted, private keys
    (``_name_or_path``) and library versions left out, so the same settings read the same wherever they were
    loaded from."""
    import json

    def clean(value):
        if isinstance(value, dict):
            return {
                str(k): clean(v)
                for k, v in value.items()
                if not str(k).startswith("_") and str(k) not in ("transformers_version", "architectures")
            }
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)

    return json.dumps([clean(p) for p in parts], sort_keys=True)


def pair(value) -> tuple[int, int]:
    """``16`` or ``(16, 16)`` -> ``(16, 16)``."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


@dataclass
class TextTower:
    """Tokenise and encode text into the joint image-text space (unnormalised, like the backend's own)."""

    tokenize: Callable[[Sequence[str]], object]
    encode_tokens: Callable[[object], torch.Tensor]
    context_length: int | None = None
    # The trained temperature of image-text logits (CLIP: logit_scale.exp(), 100 for OpenAI's), read at call time.
    logit_scale: Callable[[], float] | None = None


def check_text_lengths(texts: Sequence[str], lengths: Sequence[int], limit: int | None) -> None:
    """Refuse, in one line, a text longer than the text tower reads: its tokenizer would cut it without a word
    (two long prompts that differ only at the end would get one embedding).

    >>> check_text_lengths(["a red star"], [5], 77)
    >>> check_text_lengths(["a very long prompt"], [80], 77)
    Traceback (most recent call last):
    ...
    clipviz.errors.ClipvizError: text 'a very long prompt' is 80 tokens long; this model's text tower reads at ...
    """
    if limit is None:
        return
    for text, n in zip(texts, lengths, strict=True):
        if n > limit:
            shown = repr(text[:60] + ("..." if len(text) > 60 else ""))
            raise ClipvizError(
                f"text {shown} is {n} tokens long; this model's text tower reads at most {limit}: shorten it"
            )


@dataclass
class ImageProjection:
    """How the pooled token becomes the image embedding: ``embedding = matrix @ final_norm(token)``.

    ``pooled_token`` is the index of the token the model pools (0 for CLS pooling).
    """

    final_norm: nn.Module
    matrix: Callable[[], torch.Tensor]  # (embed_dim, d_model), read at call time (weights may move device)
    pooled_token: int = 0


@dataclass
class Backend:
    """A loaded native model and the facts clipviz needs about it."""

    kind: str  # "hf", "open_clip" or "timm"
    spec: str  # the spec it was loaded from
    native: nn.Module
    vision_root: nn.Module  # where the transformer blocks live
    vision_path: str  # path of ``vision_root`` inside ``native`` ("" when it is the model itself)
    architecture: str
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: tuple[int, int]
    prefix_tokens: tuple[str, ...]  # kinds of the tokens before the patches: "cls", "distillation", "register"
    forward: Callable[[torch.Tensor], torch.Tensor]  # normalised pixels -> the model's head output
    output_kind: str  # "image_embedding", "logits" or "pooled"
    seq_first: bool = False
    text: TextTower | None = None
    text_missing: str | None = None  # why a model with a text tower has none here (no tokenizer found)
    # The configuration and preprocessing settings that decide its results beyond the weights (a config's
    # activation or norm epsilon, an image processor's resize), as text: part of ``HookedVisionModel.identity``
    settings: str = ""
    projection: ImageProjection | None = None
    preprocessing_source: str = "model"
    # where ``image_size`` comes from when the model does not declare it (said if the model fails at that size)
    image_size_source: str = ""
    hierarchical: bool = False  # Swin-like: patch grid halves at every stage, no prefix tokens
    # The backend's own PIL preprocessing without normalisation: PIL image -> (3, H, W) in [0, 1] at its input size
    # (the image processor / open_clip / timm transform: resize, centre crop as the library does it).
    pil_transform: Callable[[object], torch.Tensor] | None = None
    notes: tuple[str, ...] = ()  # facts about how clipviz runs this model (shown by ``summary()``)
