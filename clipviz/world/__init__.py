"""The synthetic world of coloured shapes, its ground truth and the bundled ``world-clip`` model: a plug-in.

The core of clipviz never imports this package; it reaches the world through ``clipviz.plugins`` (the
``world:<n>`` data source, the ``world`` vocabulary, the ``world-clip`` model). The generator is re-exported here:

>>> from clipviz import world
>>> world.generate(2, seed=0).images.shape
(2, 64, 64, 3)
"""

from clipviz.world.scene import (
    COLOURS,
    FACTORS,
    PLURALS,
    WorldBatch,
    as_dataset,
    caption,
    choose_mentions,
    generate,
    plural,
    prompt,
    render,
    sample_factors,
    vocabulary,
)

__all__ = [
    "COLOURS",
    "FACTORS",
    "PLURALS",
    "WorldBatch",
    "as_dataset",
    "caption",
    "choose_mentions",
    "generate",
    "plural",
    "prompt",
    "render",
    "sample_factors",
    "vocabulary",
]
