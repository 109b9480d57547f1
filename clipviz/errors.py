"""User-facing errors: one line that says what was wrong and what is accepted."""

from __future__ import annotations

import math
import re

MAX_STEPS = 100_000  # optimisation steps per stage: more is a typo, not a run
MAX_SAMPLES = 1000  # feature visualizations per target
MAX_WORKERS = 64  # decoding processes: more is a typo, and each is a process with its own memory
MAX_SEED = 2**32 - 1  # seeds are offset per target and sample; torch takes at most 2**63 - 1
_INT = re.compile(r"^[+-]?[0-9]+$")  # ASCII digits only: '٣' is a digit to Python's int(), not to clipviz


class ClipvizError(ValueError):
    """A mistake in what the user asked for (model, hook, neuron, file, data).

    The CLI prints ``str(error)`` on one line and exits with code 2, with no traceback.
    """


class Terminated(BaseException):  # noqa: N818 (named as KeyboardInterrupt is: a signal, not an error)
    """SIGTERM arrived. Raised where a KeyboardInterrupt would be, so that the same clean-up runs: the CLI prints one
    line and exits with code 143, and no file is left half-written."""


#: The exit code of the stop signal that arrived (130 Ctrl-C, 143 SIGTERM), once one has: what else goes wrong
#: while the run unwinds (a data loader reporting its worker killed by the same signal) is that stop, not an error.
STOPPING: list[int] = []


class UnsupportedModelError(ClipvizError):
    """The model loaded, but clipviz cannot find the transformer blocks it needs in it."""


class HookNameError(ClipvizError):
    """A hook name that does not exist in the model."""


def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` (an int, an integral float or a string of ASCII digits) as an int within ``[low, high]``; anything
    else (None, nan, inf, '٣', '1.5', True) is a one-line ``ClipvizError`` naming ``name`` and the accepted range.

    >>> check_int("12", "steps", 1, 100)
    12
    >>> check_int(float("nan"), "steps", 1, 100)
    Traceback (most recent call last):
    ...
    clipviz.errors.ClipvizError: steps must be a whole number between 1 and 100, got nan
    """
    accepted = _range_text(low, high)
    number = None
    if isinstance(value, bool) or value is None:
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = int(value) if math.isfinite(value) and value == int(value) else None
    elif isinstance(value, str) and _INT.match(value.strip()):
        number = int(value.strip())
    if number is None:
        raise ClipvizError(f"{name} must be a whole number{accepted}, got {str(value)[:40]}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise ClipvizError(f"{name} must be{accepted.replace(' of ', ' ')}, got {number}")
    return number


def check_positive(value: object, name: str) -> float:
    """``value`` as a finite float greater than 0 (learning rates): nan, inf, 0, negative values and non-numbers
    are a one-line ``ClipvizError``."""
    number = None
    if not isinstance(value, bool) and value is not None:
        try:
            number = float(value if isinstance(value, (int, float)) else str(value).strip())
        except (TypeError, ValueError, OverflowError):
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise ClipvizError(f"{name} must be a finite number greater than 0, got {str(value)[:40]}")
    return number


def _range_text(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" between {low} and {high}"
    if low is not None:
        return f" of at least {low}"
    if high is not None:
        return f" of at most {high}"
    return ""


def check_indices(values: object, what: str = "neuron") -> list[int]:
    """``values`` as a list of distinct whole numbers (ints, numpy or one-element torch integers), else a one-line
    ``ClipvizError``: a float would be truncated, and a repeated index rendered and counted twice, without a word.

    >>> check_indices([3, 1])
    [3, 1]
    >>> check_indices([1.5])
    Traceback (most recent call last):
    ...
    clipviz.errors.ClipvizError: neuron indices must be whole numbers, got 1.5
    """
    import operator

    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ClipvizError(f"{what}s must be a list of indices, got {str(values)[:40]}")
    out: list[int] = []
    seen: set[int] = set()
    for v in values:
        try:
            if isinstance(v, bool) or str(getattr(v, "dtype", "")) in ("bool", "torch.bool"):
                raise TypeError
            index = operator.index(v)
        except TypeError:
            raise ClipvizError(f"{what} indices must be whole numbers, got {str(v)[:40]}") from None
        if index in seen:
            raise ClipvizError(f"{what} {index} is listed twice: give each {what} once")
        seen.add(index)
        out.append(index)
    return out
