"""The words a bundled model's text tower was trained on, where a plug-in says (``registry().text_words``).

A text tower trained on a small world (world-clip: its 60 words) leaves every other token's embedding where
initialisation put it: a prompt with such a word is read as noise, yet its score can beat every trained prompt's.
So naming neurons with such concepts, or rendering such a prompt, is refused or left out, never done silently.

>>> import clipviz
>>> model = clipviz.load("world-clip")
>>> untrained_words(model, ["a red star", "a zebra", "a red."])
{'a zebra': ['zebra'], 'a red.': ['red.']}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from clipviz.plugins import registry

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel


def token_ids(model: HookedVisionModel, texts: Sequence[str]) -> list[list[int]]:
    """The token ids the model's text tower reads for each text, as lists (padding included)."""
    tokens = model.tokenize(list(texts))
    values = tokens.get("input_ids") if isinstance(tokens, dict) or hasattr(tokens, "keys") else tokens
    return values.tolist() if hasattr(values, "tolist") else [list(v) for v in values]


def trained_words(model: HookedVisionModel) -> list[str] | None:
    """The words ``model``'s text tower was trained on, or ``None`` where no plug-in says (then all are taken as
    trained: a hub model's tokenizer and text tower were trained together)."""
    factory = registry().text_words.get(model.spec)
    return None if factory is None else list(factory())


def untrained_words(model: HookedVisionModel, texts: Sequence[str]) -> dict[str, list[str]]:
    """For each text with any, its words (split on spaces) that use a token the text tower was never trained on;
    empty where every word was, or where no plug-in says which were."""
    known = trained_words(model)
    if known is None:
        return {}
    trained = {i for row in token_ids(model, known) for i in row}
    found: dict[str, list[str]] = {}
    for text in texts:
        words = text.split()
        bad = [w for w, ids in zip(words, token_ids(model, words), strict=True) if not set(ids) <= trained]
        if bad:
            found[text] = list(dict.fromkeys(bad))
    return found


def some_trained_words(model: HookedVisionModel, count: int = 12) -> str:
    """A few of the trained words, for an error message: ``a, an, are, ..., ...``."""
    known = sorted(trained_words(model) or [])
    return ", ".join(known[:count]) + (", ..." if len(known) > count else "")
