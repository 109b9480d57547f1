"""Checks of command-line values, done before any work: argparse types that give one-line errors, index lists that
are counted before they are expanded, and output folders that must be writable.

>>> spans = parse_spans("0:4,10")
>>> count(spans), expand(spans, width=16, what="neuron")
(5, [0, 1, 2, 3, 10])
>>> expand(parse_spans("0:30000000"), width=512, what="neuron")
Traceback (most recent call last):
...
clipviz.errors.ClipvizError: neuron index 29999999 out of range: it has 512 (0..511)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clipviz.errors import _INT, ClipvizError, check_int, check_positive

MAX_INDICES = 1_000_000  # indices in one list, whatever the width (a list this long is a typo)


# ------------------------------------------------------------------------------------------------ numbers
def int_type(name: str, low: int | None = 1, high: int | None = None):
    """An argparse ``type=`` that checks a bound (the message names the option and the accepted range)."""

    def convert(text: str) -> int:
        try:
            return check_int(text, name, low, high)
        except ClipvizError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"{name} ")) from None

    convert.__name__ = "integer"
    return convert


def float_type(name: str):
    def convert(text: str) -> float:
        try:
            return check_positive(text, name)
        except ClipvizError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"{name} ")) from None

    convert.__name__ = "number"
    return convert


def text_type(text: str) -> str:
    """A non-blank text argument (prompts)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty or blank: give a phrase such as 'a red star'")
    return text


# ------------------------------------------------------------------------------------------------ index lists
_ACCEPTED = "use ranges and lists such as 0:64, 1,5,9 or 0:4,10 (ranges are half-open)"


def parse_spans(text: str, what: str = "index") -> list[range]:
    """``"0:64"``, ``"3,7,9"`` or ``"0:4,10"`` -> ranges, without expanding them (``0:30000000`` costs nothing)."""
    spans: list[range] = []
    shown = str(text)[:40]
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ClipvizError(f"empty index list '{shown}': {_ACCEPTED}")
    for part in parts:
        if not part:
            raise ClipvizError(f"bad index list '{shown}': an empty item between commas; {_ACCEPTED}")
        lo, sep, hi = part.partition(":")
        if not _INT.match(lo.strip() or "x") or (sep and not _INT.match(hi.strip() or "x")):
            raise ClipvizError(f"bad index list '{shown}': '{part[:20]}' is not a number or range; {_ACCEPTED}")
        lo_i = int(lo)
        hi_i = int(hi) if sep else lo_i + 1
        if lo_i < 0 or hi_i < 0:
            raise ClipvizError(f"bad index list '{shown}': indices must be >= 0")
        if hi_i <= lo_i:
            raise ClipvizError(f"bad index list '{shown}': the range {part} is empty (use LO:HI with LO < HI)")
        spans.append(range(lo_i, hi_i))
    return spans


def count(spans: list[range]) -> int:
    return sum(len(s) for s in spans)


def expand(spans: list[range], width: int | None, what: str = "index", where: str = "") -> list[int]:
    """The indices of ``spans`` once their count and bounds are known to be sane (checked before expanding)."""
    top = max(s.stop for s in spans) - 1
    if width is not None and top >= width:
        raise ClipvizError(f"{what} index {top} out of range{where}: it has {width} (0..{width - 1})")
    total = count(spans)
    if total > MAX_INDICES:
        raise ClipvizError(f"{total} {what} indices in one list; at most {MAX_INDICES}")
    return [i for s in spans for i in s]


# ------------------------------------------------------------------------------------------------ folders
def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Refuse an output folder that cannot be one (a file, under a file, unwritable) before any work is done;
    nothing is created."""
    if not str(path).strip():
        raise ClipvizError(f"{option} is empty: name a folder for the results")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ClipvizError(f"{option} '{path}' is a file, not a folder: choose a folder for the results")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ClipvizError(f"{option} '{path}' lies under '{probe}', which is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ClipvizError(f"{option} '{path}': cannot write in '{probe}' (permission denied)")
    return path


def check_new_folder(path: str | Path, option: str, *, replaceable: str | None = None) -> Path:
    """A folder to be written from scratch: new or empty, or one holding the file ``replaceable`` (a previous build
    of the same thing, which is replaced), and writable; refused in one line before any work, so that nothing of the
    user's is overwritten."""
    path = check_output_dir(path, option)
    if path.exists() and any(path.iterdir()) and not (replaceable and (path / replaceable).is_file()):
        what = f"is not empty and holds no {replaceable}" if replaceable else "is not empty"
        raise ClipvizError(f"{option} '{path}' exists and {what}: choose a new or empty folder")
    return path
