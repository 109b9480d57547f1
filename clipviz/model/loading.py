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


def _by_directory(path: Path, spec: str) -> tuple[str, str]:
    from clipviz.model.backends.hf import is_hf_dir
    from clipviz.model.backends.openclip import is_open_clip_dir
    from clipviz.model.backends.timm import is_timm_dir

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


def resolve_spec(spec: str) -> tuple[str, str]:
    """``(backend, reference)`` for a spec string, following the rules in this module's docstring."""
    if not isinstance(spec, str) or not spec.strip():
        raise ClipvizError(f"empty model spec; accepted: {_accepted()}")
    spec = spec.strip()
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in ("hf", "open_clip", "timm"):
        if not rest:
            raise ClipvizError(f"model spec '{spec}' names no model after '{scheme}:'")
        path = Path(rest).expanduser()
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
) -> HookedVisionModel:
    """Load a vision transformer and wrap it behind clipviz's hook interface.

    ``device`` defaults to the CPU; ``dtype`` to the weights' own. ``trust_remote_code`` stays off unless you
    ask; ``pretrained=False`` gives a timm model random weights (for benchmarks).

    >>> import clipviz
    >>> model = clipviz.load("world-clip")
    >>> model.n_blocks, model.d_mlp, model.prefix_tokens
    (4, 512, ('cls',))
    >>> _, cache = model.run_with_cache(torch.rand(1, 3, 64, 64), ["blocks.1.mlp.hook_post"])
    >>> tuple(cache["blocks.1.mlp.hook_post"].shape)
    (1, 65, 512)
    """
    backend_kind, ref = resolve_spec(spec)
    backend: Backend
    if backend_kind == "hf":
        from clipviz.model.backends.hf import load_hf

        backend = load_hf(ref, spec, trust_remote_code=trust_remote_code, revision=revision, dtype=dtype)
    elif backend_kind == "open_clip":
        from clipviz.model.backends.openclip import load_open_clip

        backend = load_open_clip(ref, spec, dtype=dtype)
    else:
        from clipviz.model.backends.timm import load_timm

        backend = load_timm(ref, spec, pretrained=pretrained, dtype=dtype)
    model = HookedVisionModel(backend)
    if device is not None:
        try:
            model = model.to(device)
        except (RuntimeError, AssertionError) as error:
            raise ClipvizError(
                f"device '{device}' is not available here ({str(error).splitlines()[0]}); accepted: "
                "cpu, or cuda / cuda:N on a machine with a GPU"
            ) from error
    return model
