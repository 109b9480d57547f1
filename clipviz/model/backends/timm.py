"""timm vision transformers (``timm:<name>`` or a local directory saved by timm)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from clipviz.errors import ClipvizError, UnsupportedModelError
from clipviz.model.backends.base import Backend, settings_text
from clipviz.model.backends.base import pair as _pair
from clipviz.model.backends.hub import fetching
from clipviz.model.backends.preprocessing import timm_transform


def _token(model: nn.Module, name: str) -> torch.Tensor | None:
    """A prefix-token parameter of a timm model, on the model or on its embedding module (NaFlexViT's ``embeds``)."""
    for owner in (model, getattr(model, "embeds", None)):
        value = getattr(owner, name, None) if owner is not None else None
        if isinstance(value, torch.Tensor):
            return value
    return None


def timm_prefix_tokens(model: nn.Module) -> tuple[str, ...]:
    """Prefix token kinds of a timm ViT, in the order timm concatenates them (CLS, distillation, registers)."""
    kinds: list[str] = []
    cls = _token(model, "cls_token")
    if cls is not None:
        # PiT's distilled models hold the class and distillation tokens in one (1, 2, C) parameter
        kinds += ["cls"] + ["distillation"] * (int(cls.shape[1]) - 1 if cls.ndim == 3 else 0)
    elif getattr(model, "cls_token_0", None) is not None:
        kinds.append("cls")  # CrossViT: one CLS token per branch
    if _token(model, "dist_token") is not None:
        kinds.append("distillation")
    reg = _token(model, "reg_token")
    if reg is not None:
        kinds += ["register"] * int(reg.shape[1])
    expected = getattr(model, "num_prefix_tokens", len(kinds))
    if expected < len(kinds):  # parameters the model holds but does not prepend (DeiT distilled ignores reg_tokens)
        kinds = kinds[:expected]
    kinds += ["prefix"] * (expected - len(kinds))
    return tuple(kinds)


def load_timm(
    ref: str, spec: str, *, pretrained: bool = True, dtype: torch.dtype | None = None, cache_dir: str | None = None
) -> Backend:
    """``ref`` is a timm model name or ``local-dir:/path``."""
    import timm

    if not ref.startswith("local-dir:") and ref not in timm.list_models(pretrained=False):
        raise ClipvizError(f"unknown timm model '{ref}'; see timm.list_models()")
    if not pretrained:
        warnings.warn(f"timm:{ref} loaded with random weights (pretrained=False)", stacklevel=3)
    extra = {"cache_dir": cache_dir} if cache_dir else {}
    model = fetching(
        spec, lambda: timm.create_model(ref, pretrained=pretrained or ref.startswith("local-dir:"), **extra)
    )
    if dtype is not None:
        model = model.to(dtype)
    return timm_backend(model, spec)


def timm_backend(model: nn.Module, spec: str) -> Backend:
    """The backend of a timm model already in memory."""
    if type(model).__name__ in ("FeatureListNet", "FeatureDictNet", "FeatureHookNet", "FeatureGetterNet"):
        raise UnsupportedModelError(
            f"unsupported timm model {type(model).__name__}: a features_only wrapper returns feature maps of its "
            "stages; load the model itself (timm.create_model without features_only=True)"
        )
    model.eval()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    patch_embed = getattr(model, "patch_embed", None)
    declared = _declared_size(model)
    image_size = _pair(declared or cfg.get("input_size", (3, 224, 224))[1:])
    size_source = (
        ""
        if declared
        else f"{image_size[0]}x{image_size[1]} is the input size of its pretrained_cfg; for a model built at another "
        "img_size, pass timm.create_model pretrained_cfg_overlay=dict(input_size=(3, H, W))"
    )
    from timm.data import resolve_data_config

    data = resolve_data_config(model=model)  # timm's own defaults (ImageNet's) where the model's config has none
    data = _channel_statistics(model, data, image_size)
    transform, stretch = timm_transform(model, image_size, config=data)  # one config for the transform and the stats
    return Backend(
        kind="timm",
        spec=spec,
        native=model,
        vision_root=model,
        vision_path="",
        architecture=type(model).__name__,
        image_size=image_size,
        mean=tuple(map(float, data["mean"])),
        std=tuple(map(float, data["std"])),
        preprocessing_source="the model's pretrained_cfg" if "mean" in cfg else "timm's default (ImageNet's)",
        image_size_source=size_source,
        settings=settings_text(dict(cfg), data),
        patch_size=_pair(getattr(patch_embed, "patch_size", 16)),
        prefix_tokens=timm_prefix_tokens(model),
        forward=model,
        output_kind="logits" if getattr(model, "num_classes", 0) else "pooled",
        pil_transform=transform,
        notes=(stretch,) if stretch else (),
    )


def _channel_statistics(model: nn.Module, data: dict, image_size: tuple[int, int]) -> dict:
    """``data`` with a grey model's mean and std as timm's own scripts resolve them: a model made with ``in_chans=1``
    keeps its pretrained config's three values, which timm's input resolver (``timm.data.model_config``) averages into
    one. Without that resolver they stay three, and clipviz refuses the model in one line
    (``clipviz.model.channels``)."""
    from clipviz.model.channels import readable_channels

    channels = readable_channels(model, model, image_size)  # refused here, before timm's transform runs on 3
    if channels == 3 or len(data["mean"]) in (1, channels) and len(data["std"]) in (1, channels):
        return data
    try:
        from timm.data.model_config import resolve_input_data_config
    except ImportError:
        return data
    resolved = resolve_input_data_config(model=model)
    return {**data, "mean": tuple(resolved["mean"]), "std": tuple(resolved["std"])}


def _declared_size(model: nn.Module):
    """The input size the model says it was built for: its patch embedding's ``img_size`` (ViTs), else its own
    (CrossViT); ``None`` otherwise (then timm's data config, the pretrained_cfg's, decides, as timm's own
    transform does)."""
    for module in (getattr(model, "patch_embed", None), model):
        size = getattr(module, "img_size", None)
        if size and not callable(size):
            return size
    return None


def is_timm_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return "architecture" in data and "model_type" not in data
