"""``clipviz.load(spec)``: one entry point for transformers, open_clip and timm vision models.

How a spec is read, in order:

1. ``hf:<hub id or dir>``, ``open_clip:<name>[/<tag>]``, ``open_clip:hf-hub:<id>``, ``open_clip:<dir>``,
   ``timm:<name>``, ``timm:<dir>``: the backend is the one named.
2. A short name of a model that ships with clipviz (``world-clip``, see ``bundled_models()``).
3. An existing directory, by its files: ``open_clip_config.json`` -> open_clip; ``config.json`` with an
   ``architecture`` key -> timm; ``config.json`` with a ``model_type`` key -> transformers.
4. ``hf-hub:<id>`` -> open_clip (open_clip's own spelling).
5. ``<org>/<name>`` -> a transformers model on the Hugging Face Hub.
6. An open_clip architecture name (``ViT-B-32``, optionally ``/tag``), then a timm model name.

Anything else is an error that lists these forms.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from clipviz.errors import ClipvizError
from clipviz.model.backends.base import Backend
from clipviz.model.hooked import HookedVisionModel
from clipviz.plugins import registry

ACCEPTED = (
    "hf:<hub id or dir>, open_clip:<name>[/<tag>], open_clip:hf-hub:<id>, timm:<name>, a local directory, "
    "or a bundled model ({})"
)


def bundled_models() -> dict[str, Path]:
    """Short names of the models that plug-ins ship (``world-clip``), and their directories."""
    return dict(registry().models)


def _accepted() -> str:
    return ACCEPTED.format(", ".join(bundled_models()) or "none installed")


def _check_configs(path: Path) -> None:
    """A config file that is not valid JSON is named as broken (not reported as an unknown model)."""
    for name in ("open_clip_config.json", "config.json"):
        config = path / name
        if config.is_file():
            try:
                json.loads(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as error:
                raise ClipvizError(
                    f"'{config}' is broken: not valid JSON ({str(error).splitlines()[0][:100]}); restore the file "
                    "the library saved"
                ) from None


def _by_directory(path: Path, spec: str) -> tuple[str, str]:
    from clipviz.model.backends.hf import is_hf_dir
    from clipviz.model.backends.openclip import is_open_clip_dir
    from clipviz.model.backends.timm import is_timm_dir

    _check_configs(path)
    if is_open_clip_dir(path):
        return "open_clip", f"local-dir:{path}"
    if is_timm_dir(path):
        return "timm", f"local-dir:{path}"
    if is_hf_dir(path):
        return "hf", str(path)
    raise ClipvizError(
        f"cannot tell which library saved '{spec}': expected open_clip_config.json, or config.json "
        "with 'model_type' (transformers) or 'architecture' (timm)"
    )


def _bundled_name(reference: str) -> str | None:
    """The bundled model a resolved reference points at (``clipviz:world-clip``, its folder, ``open_clip:<folder>``
    all do), or ``None``: its results, ground truth and trained words are found under that one name."""
    local = Path(reference.removeprefix("local-dir:")).expanduser()
    if not local.is_dir():
        return None
    here = local.resolve()
    return next((name for name, folder in bundled_models().items() if Path(folder).resolve() == here), None)


def canonical_spec(spec: str) -> str:
    """A bundled model's one name for any spelling of it (``clipviz:world-clip``, its folder), else ``spec``.

    >>> canonical_spec("clipviz:world-clip"), canonical_spec("hf:org/model")
    ('world-clip', 'hf:org/model')
    """
    try:
        _, reference = resolve_spec(spec)
    except ClipvizError:
        return spec
    return _bundled_name(reference) or spec


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two specs load one model: equal, or resolving to one library and one reference, a local folder
    compared by its real path (``hf:/models/vit`` and ``/models/vit``). A spec that no longer resolves (a folder
    since moved) equals only itself.

    >>> same_model("world-clip", "clipviz:world-clip"), same_model("world-clip", "hf:org/other")
    (True, False)
    """
    if a == b:
        return True
    if a is None or b is None:
        return False

    def key(spec: str):
        try:
            library, reference = resolve_spec(spec)
        except ClipvizError:
            return spec
        local = Path(reference.removeprefix("local-dir:")).expanduser()
        return (library, str(local.resolve())) if local.is_dir() else (library, reference)

    return key(a) == key(b)


def resolve_spec(spec: str) -> tuple[str, str]:
    """``(backend, reference)`` for a spec string, following the rules in this module's docstring."""
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str):
        raise ClipvizError(f"a model spec is a string, got {type(spec).__name__}; accepted: {_accepted()}")
    if not spec.strip():
        raise ClipvizError(f"empty model spec; accepted: {_accepted()}")
    spec = spec.strip()
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in ("hf", "open_clip", "timm"):
        if not rest:
            raise ClipvizError(f"model spec '{spec}' names no model after '{scheme}:'")
        path = Path(rest).expanduser()
        if path.is_dir():
            _check_configs(path)
        if scheme == "hf":
            return "hf", str(path) if path.is_dir() else rest
        if path.is_dir():
            return scheme, f"local-dir:{path}"
        return scheme, rest
    bundled = bundled_models()
    if spec in bundled:
        return "open_clip", f"local-dir:{bundled[spec]}"
    if spec.startswith("clipviz:") and spec.partition(":")[2] in bundled:
        return "open_clip", f"local-dir:{bundled[spec.partition(':')[2]]}"
    path = Path(spec).expanduser()
    if path.is_dir():
        return _by_directory(path, spec)
    if spec.startswith("hf-hub:"):
        return "open_clip", spec
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        import open_clip

        if spec.split("/")[0] in open_clip.list_models():
            return "open_clip", spec
        return "hf", spec
    import open_clip
    import timm

    if spec in open_clip.list_models():
        return "open_clip", spec
    if spec in timm.list_models(pretrained=False):
        return "timm", spec
    if path.suffix or "/" in spec or spec.startswith((".", "~")):
        raise ClipvizError(f"unknown model '{spec}': no such directory; accepted: {_accepted()}")
    raise ClipvizError(f"unknown model '{spec}'; accepted: {_accepted()}")


def load(
    spec: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    pretrained: bool = True,
    trust_remote_code: bool = False,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> HookedVisionModel:
    """Load a vision transformer and wrap it behind clipviz's hook interface.

    ``device`` defaults to the CPU; ``dtype`` to the weights' own. ``trust_remote_code`` stays off unless you
    ask; ``pretrained=False`` gives a timm model random weights (for benchmarks). ``revision`` (a branch, tag or
    commit of a transformers model on the Hub) and ``cache_dir`` (where downloads are kept) are passed on to the
    library that loads the model. ``HookedVisionModel.from_pretrained(spec, ...)`` is the same function.

    >>> import clipviz
    >>> model = clipviz.load("world-clip")
    >>> model.n_blocks, model.d_mlp, model.prefix_tokens
    (4, 512, ('cls',))
    >>> _, cache = model.run_with_cache(torch.rand(1, 3, 64, 64), ["blocks.1.mlp.hook_post"])
    >>> tuple(cache["blocks.1.mlp.hook_post"].shape)
    (1, 65, 512)
    """
    spec = str(spec) if isinstance(spec, Path) else spec
    backend_kind, ref = resolve_spec(spec)
    spec = _bundled_name(ref) or spec  # one name for a bundled model, however it was spelled
    check_device(device)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ClipvizError(
            f"dtype must be a floating-point torch dtype (torch.float32, torch.bfloat16, torch.float16), got {dtype!r}"
        )
    local = Path(ref.removeprefix("local-dir:"))
    if local.is_dir():  # a truncated or corrupt weight file is named, not reported as an unknown model
        from clipviz.model.backends.hub import first_unreadable_weights

        broken = first_unreadable_weights(local)
        if broken is not None:
            raise ClipvizError(f"cannot load '{spec}': {broken}")
    cache = str(Path(cache_dir).expanduser()) if cache_dir is not None else None
    if revision and backend_kind != "hf":
        raise ClipvizError(
            f"--revision is for transformers models on the Hub (hf:<id>); '{spec}' loads with {backend_kind}"
        )
    if revision and local.is_dir():
        raise ClipvizError(f"--revision is for models on the Hub; '{spec}' is a local folder, read as it is")
    backend: Backend
    if backend_kind == "hf":
        from clipviz.model.backends.hf import load_hf

        backend = load_hf(
            ref, spec, trust_remote_code=trust_remote_code, revision=revision, dtype=dtype, cache_dir=cache
        )
    elif backend_kind == "open_clip":
        from clipviz.model.backends.openclip import load_open_clip

        backend = load_open_clip(ref, spec, dtype=dtype, cache_dir=cache)
    else:
        from clipviz.model.backends.timm import load_timm

        backend = load_timm(ref, spec, pretrained=pretrained, dtype=dtype, cache_dir=cache)
    backend.revision = revision  # part of the identity of cached results (text embeddings)
    return _placed(HookedVisionModel(backend), device)


def wrap(
    module,
    *,
    spec: str | None = None,
    device: str | torch.device | None = None,
    tokenizer=None,
    processor: str | None = None,
) -> HookedVisionModel:
    """Put clipviz's hook interface on a transformers, open_clip or timm model you already hold (fine-tuned,
    built from a config, ...). The library is told by the module's class.

    ``spec`` names it in results (default: ``wrapped:<class name>``); ``tokenizer`` (open_clip) is its text
    tokenizer, by default the CLIP BPE tokenizer where its text tower reads that vocabulary (else its text asks are
    refused, never read with the wrong ids); ``processor`` (transformers) is where its image processor and
    tokenizer are read from, by default where it was loaded from (``name_or_path``). The module is used as it is
    (not copied) and stays on its device unless ``device`` is given; clipviz freezes its parameters
    (``requires_grad_(False)``: optimising an image must not fill their gradients) and puts it in eval mode. Every
    clipviz pass runs it in eval mode without activation checkpointing, whatever mode it is switched to later.

    >>> import clipviz
    >>> held = clipviz.load("world-clip").native  # an open_clip CLIP in memory
    >>> model = clipviz.wrap(held)
    >>> model.spec, model.n_blocks, model.is_clip
    ('wrapped:CLIP', 4, True)
    """
    from torch import nn

    if isinstance(module, HookedVisionModel):
        return _placed(module, device)
    if not isinstance(module, nn.Module):
        raise ClipvizError(f"clipviz.wrap needs a torch module, got {type(module).__name__}")
    if isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile's wrapper
        raise ClipvizError(
            "clipviz.wrap needs the model itself, not its torch.compile wrapper: wrap compiled._orig_mod (clipviz "
            "installs hooks, which compiled graphs do not call)"
        )
    library = type(module).__module__.split(".", 1)[0]
    spec = spec or f"wrapped:{type(module).__name__}"
    if library == "transformers":
        from clipviz.model.backends.hf import hf_backend

        backend = hf_backend(module, spec, ref=processor)
    elif library == "open_clip":
        from clipviz.model.backends.openclip import open_clip_backend

        backend = open_clip_backend(module, spec, tokenizer)
    elif library == "timm":
        from clipviz.model.backends.timm import timm_backend

        backend = timm_backend(module, spec)
    else:
        raise ClipvizError(
            f"clipviz.wrap reads transformers, open_clip and timm models; {type(module).__name__} comes from "
            f"'{type(module).__module__}'"
        )
    return _placed(HookedVisionModel(backend), device)


def check_device(device) -> None:
    """Refuse a device string torch cannot parse, and ``meta`` (it holds no data), in one line."""
    if device is None or isinstance(device, torch.device) and device.type != "meta":
        return
    try:
        parsed = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise ClipvizError(f"unknown device {device!r}; accepted: cpu, cuda or cuda:N (with a GPU)") from None
    if parsed.type == "meta":
        raise ClipvizError("device 'meta' holds no data, so nothing can run on it; accepted: cpu, cuda or cuda:N")


def _placed(model: HookedVisionModel, device) -> HookedVisionModel:
    if device is not None:
        try:
            model = model.to(device)
        except (RuntimeError, AssertionError) as error:
            raise ClipvizError(
                f"device '{device}' is not available here ({str(error).splitlines()[0]}); accepted: "
                "cpu, or cuda / cuda:N on a machine with a GPU"
            ) from error
    return model
