"""User-facing errors: one line that says what was wrong and what is accepted."""

from __future__ import annotations


class ClipvizError(ValueError):
    """A mistake in what the user asked for (model, hook, neuron, file, data).

    The CLI prints ``str(error)`` on one line and exits with code 2, with no traceback.
    """


class UnsupportedModelError(ClipvizError):
    """The model loaded, but clipviz cannot find the transformer blocks it needs in it."""


class HookNameError(ClipvizError):
    """A hook name that does not exist in the model."""
