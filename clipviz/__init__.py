"""clipviz: see what the neurons of vision transformers respond to.

>>> import clipviz
>>> model = clipviz.load("world-clip")
>>> model.hook_names(0)[:3]
['blocks.0.hook_resid_pre', 'blocks.0.attn.hook_pattern', 'blocks.0.hook_attn_out']
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import ClipvizError, HookNameError, UnsupportedModelError
from .loading import bundled_models, load, resolve_spec
from .model import ActivationCache, HookedVisionModel

try:
    __version__ = version("clipviz")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "ActivationCache",
    "ClipvizError",
    "HookNameError",
    "HookedVisionModel",
    "UnsupportedModelError",
    "__version__",
    "bundled_models",
    "load",
    "resolve_spec",
]
