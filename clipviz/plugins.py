"""Registries that plug-ins fill: data-source schemes, vocabularies, bundled models and their ground truths.

The core never imports a plug-in. A plug-in is a function ``register(registry)`` named in the entry-point group
``clipviz.plugins`` of an installed distribution; clipviz's own synthetic world is one
(``clipviz.world.plugin:register``). Plug-ins are loaded once, the first time a registry is read.

>>> from clipviz.plugins import registry
>>> "world" in registry().sources and "world-clip" in registry().models
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENTRY_POINT_GROUP = "clipviz.plugins"


@dataclass
class Registry:
    """What the plug-ins provide.

    ``sources``: scheme -> factory(argument) returning a ``clipviz.data.Source`` (``world:2000`` calls the
    ``world`` factory with ``"2000"``); ``vocabularies``: name -> factory(templates) returning a
    ``clipviz.analysis.concepts.Vocabulary``; ``models``: short name -> directory of a bundled model; ``probes``:
    scheme -> factory(argument, n=, size=, seed=) returning a labelled ``clipviz.analysis.studies.Probe``;
    ``guides``: bundled model name -> the data source its data-guided recipes read reference images from when
    none is given; ``datasets``: bundled model name -> its own held-out data source, what ``sweep`` mines top
    examples from when no dataset is given; ``ground_truths``: bundled model name -> factory() returning the
    neurons whose concept is known, ``{hook: {neuron: description}}`` (the atlas shows and searches them);
    ``text_words``: bundled model name -> factory() returning every word its text tower was trained on (a concept
    with another word has an embedding no training shaped, and is left out of the rankings with a warning).
    """

    sources: dict[str, Callable[[str], object]] = field(default_factory=dict)
    vocabularies: dict[str, Callable[..., object]] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)
    probes: dict[str, Callable[..., object]] = field(default_factory=dict)
    guides: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)
    ground_truths: dict[str, Callable[[], dict[str, dict[int, str]]]] = field(default_factory=dict)
    text_words: dict[str, Callable[[], Sequence[str]]] = field(default_factory=dict)

    def add_source(self, scheme: str, factory: Callable[[str], object]) -> None:
        self.sources[scheme] = factory

    def add_vocabulary(self, name: str, factory: Callable[..., object]) -> None:
        self.vocabularies[name] = factory

    def add_model(self, name: str, directory: Path) -> None:
        self.models[name] = Path(directory)

    def add_probe(self, scheme: str, factory: Callable[..., object]) -> None:
        self.probes[scheme] = factory

    def add_guide(self, model: str, source: str) -> None:
        self.guides[model] = source

    def add_dataset(self, model: str, source: str) -> None:
        self.datasets[model] = source

    def add_ground_truth(self, model: str, factory: Callable[[], dict[str, dict[int, str]]]) -> None:
        self.ground_truths[model] = factory

    def add_text_words(self, model: str, factory: Callable[[], Sequence[str]]) -> None:
        self.text_words[model] = factory


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The registry, filled by every installed plug-in on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        from importlib.metadata import entry_points

        filled = Registry()
        for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
            point.load()(filled)
        _REGISTRY = filled
    return _REGISTRY
