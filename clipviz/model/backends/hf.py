"""Hugging Face ``transformers`` vision models: ViT, DeiT, BEiT, CLIP, SigLIP, DINOv2, Swin and their kin."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from clipviz.errors import UnsupportedModelError
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
from clipviz.model.backends.hf_families import (
    _is_generative,
    _naflex,
    _no_masking,
    _pooled,
    _processor_size,
    _timm_wrapper,
)
from clipviz.model.backends.hub import fetching
from clipviz.model.backends.preprocessing import hf_transform, pixel_scale

_DEFAULT_MEAN = (0.5, 0.5, 0.5)
_DEFAULT_STD = (0.5, 0.5, 0.5)


def _model_class(config, trust_remote_code: bool):
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    if trust_remote_code and getattr(config, "auto_map", None):
        return transformers.AutoModel
    model_type = getattr(config, "model_type", "?")
    try:
        transformers.AutoModel._model_mapping[type(config)]  # noqa: B018 - raises for unknown configs
    except KeyError as error:
        raise UnsupportedModelError(
            f"unsupported architecture '{model_type}': transformers has no vision model for it "
            "(supported vision transformers are listed in docs/architectures.md)"
        ) from error
    return transformers.AutoModel


#: A task model around a backbone (Depth Anything, ViTPose, UperNet; Mask2Former's and MaskFormer's pixel-level
#: module): clipviz runs the backbone alone.
_BACKBONES = ("backbone", "model.pixel_level_module.encoder")
_ROOTS = (
    "vision_model",
    "model.vision_tower.vision_model",
    "model.vision_tower",
    "vision_tower.vision_model",
    "vision_tower",
    "timm_model",
    "model.vision_model",  # Idefics2/3, SmolVLM
    "vit",
    "deit",
    "beit",
    "dinov2",
    "dinov2_with_registers",
    "data2vec_vision",
    "swin",
    "swinv2",
    "dinov3",
    "pixio",
    "radio",
    "model.image_tower",  # Video-LLaVA's image tower
    "model.embed_tokens_extend.image_embed.img_processor",  # Phi-4-multimodal
    "model.visual",  # Qwen-VL, GLM-4V (packed patches: refused by name)
    "visual",
    *_BACKBONES,
)


def _vision_root(model: nn.Module) -> tuple[nn.Module, str]:
    """The vision tower clipviz hooks: a known path or the encoder of a VisionEncoderDecoder (TrOCR); else the
    model itself. A vision-language generator without a recognisable tower is refused, so that its refusal is not
    about its language model."""
    for path in _ROOTS:
        try:
            sub = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(sub, nn.Module) and sub is not model:
            return sub, path
    if getattr(getattr(model, "config", None), "model_type", "") == "vision-encoder-decoder":
        return model.encoder, "encoder"
    if _is_generative(model):
        raise UnsupportedModelError(
            f"unsupported architecture {type(model).__name__}: a vision-language model without a vision "
            f"transformer tower clipviz recognises (looked for {', '.join(_ROOTS[:7])}, ...); if it has one, "
            "wrap it alone: clipviz.wrap(<the tower module>)"
        )
    return model, ""


_TOKEN_PARAMETERS = ("cls_token", "class_embedding", "distillation_token", "register_tokens", "cls_register_token")


def _embedding_tokens(vision: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of the tower's embeddings module that holds its prefix tokens, by their last name: the
    shallowest ``embeddings`` module with one (``embeddings.cls_token``, Kosmos-2's ``model.embeddings...``)."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in vision.named_parameters():
        head, _, leaf = name.rpartition(".")
        if head == "embeddings" or head.endswith(".embeddings"):
            found.setdefault(head, {})[leaf] = param
    holding = [h for h, params in found.items() if any(t in params for t in _TOKEN_PARAMETERS)]
    return found[min(holding, key=lambda h: (h.count("."), h))] if holding else {}


def _prefix_tokens(vision: nn.Module) -> tuple[str, ...]:
    from clipviz.model.backends.timm import timm_prefix_tokens

    if type(vision).__module__.startswith("timm."):  # the transformers wrapper of a timm model
        return timm_prefix_tokens(vision)
    kinds: list[str] = []
    names = _embedding_tokens(vision)
    if "cls_token" in names:
        kinds += ["cls"] * (int(names["cls_token"].shape[1]) if names["cls_token"].ndim == 3 else 1)
    elif "class_embedding" in names:
        kinds.append("cls")
    if "distillation_token" in names:
        kinds.append("distillation")
    if "register_tokens" in names:
        kinds += ["register"] * int(names["register_tokens"].shape[1])
    if not kinds and any(n.endswith("cls_token") and not _in_head(n) for n, _ in vision.named_parameters()):
        kinds.append("cls")  # a class token that joins in a later stage (CvT), not one of a pooling head (AIMv2)
    if "cls_register_token" in names:  # RADIO: several CLS tokens, then registers
        config = getattr(vision, "config", None)
        n_cls = int(getattr(config, "num_cls_tokens", 1))
        kinds += ["cls"] * n_cls + ["register"] * (int(names["cls_register_token"].shape[0]) - n_cls)
    return tuple(kinds)


def _in_head(name: str) -> bool:
    """Whether parameter ``name`` belongs to a pooling head after the blocks (AIMv2's ``head.cls_token``)."""
    return any("head" in part or "pool" in part for part in name.split(".")[:-1])


def _preprocessing(ref: str, config, kwargs):
    """``(mean, std, source, processor)`` from the model's image processor (``processor`` is ``None`` without one)."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(ref, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        warnings.warn(
            f"{ref}: no image processor config found; using mean {_DEFAULT_MEAN} and std {_DEFAULT_STD}",
            stacklevel=3,
        )
        return _DEFAULT_MEAN, _DEFAULT_STD, "default (no preprocessor_config.json)", None
    mean = _channels(getattr(processor, "image_mean", None), _DEFAULT_MEAN)
    std = _channels(getattr(processor, "image_std", None), _DEFAULT_STD)
    if getattr(processor, "do_normalize", True) is False:  # the model normalises inside (RADIO's input conditioner)
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    scale = pixel_scale(processor)  # the processor's own rescale (x * rescale_factor), folded into mean and std
    return tuple(m / scale for m in mean), tuple(s / scale for s in std), "preprocessor_config.json", processor


def _channels(value, default: tuple[float, ...]) -> tuple[float, ...]:
    """An image processor's ``image_mean`` / ``image_std``: three values, or one for every channel (transformers
    accepts a scalar)."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    return tuple(float(v) for v in value)


def _text_limit(model: nn.Module, tokenizer) -> int | None:
    """The most tokens the text tower reads: its position table, less the positions RoBERTa-style embeddings skip
    (they number positions from ``padding_idx + 1``: AltCLIP's XLM-R reads 512 of 514), and no more than the
    tokenizer's own maximum where it sets one."""
    positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
    if positions is None:
        return None
    for name, module in model.named_modules():
        skipped = getattr(module, "padding_idx", None)
        if name.endswith("embeddings") and hasattr(module, "position_embeddings") and isinstance(skipped, int):
            positions -= skipped + 1
            break
    most = getattr(tokenizer, "model_max_length", None)
    return min(positions, most) if isinstance(most, int) and most < 1_000_000 else positions


def _text_tower(model: nn.Module, ref: str, kwargs) -> TextTower | None:
    if not hasattr(model, "get_text_features"):
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(tokenizer) <= len(tokenizer.all_special_tokens) + 1:  # no vocabulary files: transformers built an empty one
        return None
    limit = _text_limit(model, tokenizer)

    def tokenize(texts):
        texts = list(texts)
        check_text_lengths(texts, [len(ids) for ids in tokenizer(texts)["input_ids"]], limit)
        # SigLIP and SigLIP2 pool the last position whatever the mask: padded to the limit, as their processors do
        padding = "max_length" if getattr(model.config, "model_type", "").startswith("siglip") else True
        return tokenizer(texts, padding=padding, truncation=True, max_length=limit, return_tensors="pt")

    def encode(tokens) -> torch.Tensor:
        device = next(model.parameters()).device
        out = model.get_text_features(**{k: v.to(device) for k, v in tokens.items()})
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    return TextTower(
        tokenize=tokenize, encode_tokens=encode, context_length=limit, logit_scale=trained_logit_scale(model)
    )


def _refuse_packed(vision: nn.Module) -> None:
    """Towers that take one packed sequence of patches with a grid (Qwen-VL's ``grid_thw``), not images."""
    import inspect

    try:
        names = set(inspect.signature(vision.forward).parameters)
    except (TypeError, ValueError):
        return
    packed = sorted(names & {"grid_thw", "image_grid_thw"})
    if packed:
        raise UnsupportedModelError(
            f"unsupported architecture {type(vision).__name__}: its vision tower takes packed patches with a grid "
            f"({packed[0]}), not (batch, 3, H, W) images; clipviz does not run packed towers"
        )


def _refuse_video(model: nn.Module, vision: nn.Module) -> None:
    """Video towers (VideoMAE, ViViT, TimeSformer, X-CLIP): they take (batch, frames, 3, H, W) clips and mix the
    frames in their blocks, so an image's activations are not its own. Asked of the tower clipviz runs: a video
    model whose vision tower sees each frame alone (InstructBLIP-Video) is an image tower to clipviz."""
    config = getattr(vision, "config", None) if vision is not model else None
    config = config or getattr(model.config, "vision_config", None) or model.config
    frames = getattr(config, "num_frames", None)
    video_only = vision is model and hasattr(model, "get_video_features") and not hasattr(model, "get_image_features")
    if frames or video_only:
        raise UnsupportedModelError(
            f"unsupported architecture {type(model).__name__}: a video model (it takes clips of "
            f"{frames or 'several'} frames, (batch, frames, 3, H, W), and mixes the frames in its blocks); clipviz "
            "hooks image towers"
        )


def _forward(model: nn.Module, vision: nn.Module, vision_path: str, cls: bool):
    """The model's output for clipviz (``cls``: whether the tower's first token is a class token, the pooled
    output where the model gives none) and its kind."""
    if _is_generative(model) or vision_path in (*_BACKBONES, "encoder"):
        return (lambda x: _pooled(vision(pixel_values=x), cls)), "pooled"
    if hasattr(model, "get_image_features"):

        def embed(x: torch.Tensor) -> torch.Tensor:
            out = model.get_image_features(pixel_values=x)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        return embed, "image_embedding"
    if hasattr(model, "visual_projection"):  # CLIPVisionModelWithProjection
        return (lambda x: model(pixel_values=x).image_embeds), "image_embedding"
    if type(model).__name__.endswith(("ForImageClassification", "ForImageClassificationWithTeacher")):
        return (lambda x: model(pixel_values=x).logits), "logits"

    return _head_or_tower(model, vision, cls), "pooled"


def _head_or_tower(model: nn.Module, vision: nn.Module, cls: bool):
    """The model's pooled output; where its output has none clipviz can read (MGP-STR's text logits), the pooled
    output of its vision tower or base model (``base_model_prefix``: MGP-STR's ``mgp_str``), decided on the first
    call; with neither, a one-line refusal."""
    use_tower: list[bool] = []
    if vision is model:
        base = getattr(model, getattr(model, "base_model_prefix", "") or "_", None)
        vision = base if isinstance(base, nn.Module) else model

    def embed(x: torch.Tensor) -> torch.Tensor:
        if use_tower and use_tower[0]:
            return _pooled(vision(pixel_values=x), cls)
        out = model(pixel_values=x)
        readable = any(getattr(out, a, None) is not None for a in ("pooler_output", "last_hidden_state"))
        readable = readable or bool(getattr(out, "feature_maps", None))
        if not use_tower:
            use_tower.append(not readable and vision is not model)
            said = embed.backend  # set once the backend exists: the decision is said in its notes
            if use_tower[0] and said is not None:
                said.notes = (
                    *said.notes,
                    f"the output of {type(model).__name__} ({type(out).__name__}) is not an image representation: "
                    f"clipviz's output is the pooled output of {type(vision).__name__} (the heads are not run)",
                )
        if readable:
            return _pooled(out, cls)
        if use_tower[0]:
            return _pooled(vision(pixel_values=x), cls)
        raise UnsupportedModelError(
            f"the output of {type(model).__name__} ({type(out).__name__}) has no pooled output, hidden state or "
            "feature maps clipviz can read"
        )

    embed.backend = None
    return embed


def _projection(model: nn.Module, vision: nn.Module) -> ImageProjection | None:
    proj = getattr(model, "visual_projection", None)
    norm = getattr(vision, "post_layernorm", None)
    if isinstance(proj, nn.Linear) and isinstance(norm, nn.Module) and proj.bias is None:
        return ImageProjection(final_norm=norm, matrix=lambda: proj.weight, pooled_token=0)
    return None


def load_hf(
    ref: str,
    spec: str,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
) -> Backend:
    from transformers import AutoConfig

    kwargs = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    config = fetching(spec, lambda: AutoConfig.from_pretrained(ref, **kwargs))
    cls = _model_class(config, trust_remote_code)
    load_kwargs = dict(kwargs)
    if dtype is not None:
        load_kwargs["dtype"] = dtype

    def weights():
        # weights the checkpoint lacks (a ViT saved without its pooler) are drawn at random: the same in every
        # process and every run, so that the model's identity, and what it resumes, does not change per load
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return cls.from_pretrained(ref, output_loading_info=True, **load_kwargs)

    model, info = fetching(spec, weights)
    backend = hf_backend(model, spec, ref, kwargs)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        backend.notes = (
            *backend.notes,
            f"{len(missing)} weights are not in the checkpoint and were drawn at random with seed 0 (e.g. "
            f"{missing[0]}): results that depend on them are not the published model's",
        )
    return backend


def hf_backend(model: nn.Module, spec: str, ref: str | None = None, kwargs: dict | None = None) -> Backend:
    """The backend of a transformers model already in memory; its image processor and tokenizer are read from
    ``ref`` (by default where it was loaded from, ``model.name_or_path``), with default preprocessing if there is
    none."""
    kwargs = dict(kwargs or {})
    ref = ref if ref is not None else getattr(model, "name_or_path", "") or ""
    config = model.config
    model.eval()
    vision, vision_path = _vision_root(model)
    _refuse_packed(vision)
    find_blocks(vision)  # an unsupported architecture fails here, before its processor and tokenizer are read
    _refuse_video(model, vision)
    vcfg = getattr(config, "vision_config", None) or config
    if vision_path in (*_BACKBONES, "encoder"):  # a task head's backbone, a VisionEncoderDecoder's encoder
        own = "encoder_config" if vision_path == "encoder" else "backbone_config"
        vcfg = getattr(config, own, None) or getattr(vision, "config", None) or config
    if ref:
        mean, std, source, processor = _preprocessing(ref, config, kwargs)
    else:  # a module built in memory with no saved processor
        mean, std, source, processor = _DEFAULT_MEAN, _DEFAULT_STD, "default (no preprocessor_config.json)", None
    prefix = _prefix_tokens(vision)
    forward, output_kind = _forward(model, vision, vision_path, cls=prefix[:1] == ("cls",))
    # the image processor's output size first: what the library's own pipeline feeds the model (DINOv2's config
    # says 518 while its processor crops 224; running it at 518 would up-sample every data image)
    # (what it produces is measured: a crop_size it carries but does not apply is not its output)
    guess = _pair(_processor_size(processor) or getattr(vcfg, "image_size", None) or 224)
    transform, fitted, image_size = hf_transform(processor, guess)
    notes = [fitted] if fitted else []
    if vision_path in _BACKBONES:
        notes.append(
            f"runs the backbone alone ({type(vision).__name__}): the task head is not run, and the output is the "
            "mean of the backbone's last feature map"
        )
    elif vision_path == "encoder":
        notes.append(f"runs the encoder alone ({type(vision).__name__}): the text decoder is not run")
    facts = {
        "image_size": image_size,
        "patch_size": _pair(getattr(vcfg, "patch_size", 16)),
        "forward": forward,
        "pil_transform": transform,
        "notes": tuple(notes),
    }
    model_type = getattr(config, "model_type", "")
    if model_type == "timm_wrapper":
        _timm_wrapper(model, vision, facts, processor)
    elif model_type.startswith("siglip2") or getattr(vcfg, "model_type", "").startswith("siglip2"):
        _naflex(model, vision, vcfg, facts)
    elif model_type == "vit_mae":
        _no_masking(model, vision, facts)
    hierarchical = hasattr(vcfg, "depths") and hasattr(vcfg, "embed_dim")
    text = None if _is_generative(model) or not ref else _text_tower(model, ref, kwargs)
    text_missing = None
    if text is None and hasattr(model, "get_text_features") and not _is_generative(model):
        text_missing = (
            f"no tokenizer was found at '{ref}'"
            if ref
            else "it was wrapped from memory with no processor= to read its tokenizer from"
        ) + ", so its text tower cannot be used (image hooks and embeddings work)"
    backend = Backend(
        kind="hf",
        spec=spec,
        native=model,
        vision_root=vision,
        vision_path=vision_path,
        architecture=type(model).__name__,
        image_size=facts["image_size"],
        mean=facts.get("mean", mean),
        std=facts.get("std", std),
        patch_size=facts["patch_size"],
        prefix_tokens=prefix,
        forward=facts["forward"],
        output_kind=output_kind,
        text=text,
        text_missing=text_missing,
        settings=settings_text(config.to_dict(), processor.to_dict() if hasattr(processor, "to_dict") else None),
        projection=_projection(model, vision),
        preprocessing_source=source,
        hierarchical=hierarchical,
        pil_transform=facts["pil_transform"],
        notes=facts["notes"],
    )
    if hasattr(backend.forward, "backend"):  # _head_or_tower: it notes its choice on the first forward pass
        backend.forward.backend = backend
    return backend


def is_hf_dir(path: Path) -> bool:
    import json

    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False
