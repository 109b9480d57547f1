"""The synthetic world as a probe set for the analyses: exact foreground masks, factor labels and zero-shot tasks.

``world.generate`` does not return masks; :func:`foreground_masks` recovers them exactly, without copying the
renderer: it draws the same factors and renders the same scenes twice from the same random state, once with every
object red and once blue. Placement, texture phase, colour noise and background come from the random stream and do
not depend on the colour, so the two renders differ exactly on the object pixels (red and blue differ by more than
0.3 in the red channel in both tones of every texture).

>>> masks = foreground_masks(4, seed=0)
>>> masks.shape, masks.dtype, bool(masks.any())
((4, 64, 64), dtype('bool'), True)
"""

from __future__ import annotations

import numpy as np
import torch

from clipviz.world import scene as world

_RED, _BLUE = world.FACTORS["colour"].index("red"), world.FACTORS["colour"].index("blue")


def foreground_masks(
    n: int, seed: int, size: int = 64, single_object: bool = False, factors: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """(n, size, size) bool: the object pixels of ``world.generate(n, seed, size, single_object, factors)``."""
    rng = np.random.default_rng(seed)
    if factors is None:
        factors = world.sample_factors(n, rng, single_object=single_object)
    else:
        factors = {fam: np.asarray(factors[fam], dtype=np.int64) for fam in world.FACTORS}
    state = rng.bit_generator.state
    renders = []
    for colour in (_RED, _BLUE):
        again = np.random.default_rng()
        again.bit_generator.state = state
        renders.append(world.render({**factors, "colour": np.full(n, colour)}, again, size=size).astype(np.int16))
    return np.abs(renders[0] - renders[1]).max(-1) > 0


#: The seed of the analyses' world sample, away from the training stream and from the other held-out samples.
PROBE_SEED = 2_000_000_011 + 31


def world_probe(n: int, size: tuple[int, int] = (64, 64), seed: int = 0):
    """``n`` single-object world images as an analysis ``Probe``: one zero-shot task per factor family (the world's
    single-factor prompts; count is left out, it is always one), the factors as semantic concepts (one-hot) and
    exact foreground masks, rendered at the square ``size`` (masks exact at every size). A non-square size is
    refused: stretched, the world's shapes would not be its shapes; cropped, its positions would not be its
    positions."""
    from clipviz.analysis.studies.common import Probe, Task
    from clipviz.errors import ClipvizError

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size[0] != size[1]:
        raise ClipvizError(
            f"the world's probe images are square and the model runs at {size[0]}x{size[1]}: stretched or cropped, "
            "their shape and position labels would not hold; use a probe set of your own (a folder or a dataset)"
        )
    s = PROBE_SEED + seed
    side = int(size[0])
    batch = world.generate(n, seed=s, single_object=True, size=side)
    masks = torch.from_numpy(foreground_masks(n, seed=s, size=side, single_object=True))
    images = torch.from_numpy(batch.images).permute(0, 3, 1, 2).float() / 255.0
    tasks = [
        Task(fam, batch.factors[fam].copy(), list(values), [world.prompt(fam, v) for v in values])
        for fam, values in world.FACTORS.items()
        if fam != "count"
    ]
    names = [f"{fam}={v}" for fam, values in world.FACTORS.items() if fam != "count" for v in values]
    concepts = np.stack(
        [
            batch.factors[name.split("=")[0]] == world.FACTORS[name.split("=")[0]].index(name.split("=")[1])
            for name in names
        ],
        1,
    ).astype(np.float32)
    return Probe(
        f"world:{n}", images, tasks, captions=list(batch.captions), masks=masks, concepts=concepts, concept_names=names
    )
