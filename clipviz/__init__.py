"""clipviz: see what the neurons of vision transformers respond to.

>>> import clipviz
>>> model = clipviz.load("world-clip")
>>> model.hook_names(0)[:3]
['blocks.0.hook_resid_pre', 'blocks.0.attn.hook_pattern', 'blocks.0.hook_attn_out']

The public names below are imported on first use, so ``import clipviz`` (and ``clipviz --help``) stays fast.
The layers, lowest first: ``errors``, ``plugins``, ``results``, ``images`` -> ``model`` (loading, backends, hooks,
token layouts) -> ``visualization`` and ``data`` -> ``analysis`` (examples, concepts, dissect) -> ``apps`` (CLI,
demo, atlas, Space, publish); ``world`` is a plug-in (docs/architecture.md).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from clipviz.errors import ClipvizError, HookNameError, UnsupportedModelError

try:
    __version__ = version("clipviz")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

_LAZY = {
    "ActivationCache": "clipviz.model.hooked",
    "HookedVisionModel": "clipviz.model.hooked",
    "bundled_models": "clipviz.model.loading",
    "load": "clipviz.model.loading",
    "wrap": "clipviz.model.loading",
    "resolve_spec": "clipviz.model.loading",
    "visualize": "clipviz.visualization.visualize",
    "mine_examples": "clipviz.analysis.examples",
    "open_source": "clipviz.data.sources",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clipviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ActivationCache",
    "ClipvizError",
    "HookNameError",
    "HookedVisionModel",
    "UnsupportedModelError",
    "__version__",
    "bundled_models",
    "load",
    "mine_examples",
    "open_source",
    "resolve_spec",
    "visualize",
    "wrap",
]
