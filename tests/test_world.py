"""The synthetic world: deterministic, captions true of their images, factors visible in the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from clipviz import world


def test_generation_is_deterministic_and_seed_dependent():
    a, b, c = world.generate(32, seed=5), world.generate(32, seed=5), world.generate(32, seed=6)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (32, 64, 64, 3) and a.images.dtype == np.uint8


def test_captions_name_only_true_factors():
    batch = world.generate(400, seed=1)
    for i, text in enumerate(batch.captions):
        names = batch.factor_names(i)
        words = text.split()
        for family, values in world.FACTORS.items():
            if family in ("count", "shape"):
                continue
            for value in values:
                if value in words and value not in ("center",):
                    assert value == names[family] or (family, value) == ("background", "plain"), (text, names)
        for shape in world.FACTORS["shape"]:
            if shape in words or world.plural(shape) in words:
                assert shape == names["shape"], (text, names)
        several = (
            any(w in words for w in ("two", "three", "some", "are"))
            or any(world.plural(s) in words for s in world.FACTORS["shape"])
            or words[-1].endswith(("objects", "things"))
        )
        assert several == (names["count"] != "one") or "things" in text or "shapes" in text or "objects" in text


def test_vocabulary_is_exactly_the_words_captions_and_prompts_use():
    used = {w for seed in range(12) for text in world.generate(400, seed=seed).captions for w in text.split()}
    used |= {w for fam, values in world.FACTORS.items() for v in values for w in world.prompt(fam, v).split()}
    assert used == set(world.vocabulary())
    assert world.vocabulary() == sorted(world.vocabulary())


def test_caption_matches_matrix_is_consistent_with_mentions():
    batch = world.generate(64, seed=2)
    m = batch.caption_matches()
    assert m.diagonal().all()  # every caption describes its own image
    for i in range(64):
        for j in range(64):
            if m[i, j]:
                for fam in world.FACTORS:
                    if batch.mentions[fam][i] and fam != "count":
                        assert batch.factors[fam][i] == batch.factors[fam][j]


def test_colour_is_in_the_pixels():
    batch = world.generate(200, seed=3, single_object=True)
    palette = np.array(list(world.COLOURS.values()))
    for i in range(200):
        img = batch.images[i].reshape(-1, 3) / 255.0
        colour = palette[batch.factors["colour"][i]]
        # some pixels are (almost) the object's colour
        assert (np.abs(img - colour).max(axis=1) < 0.15).sum() >= 10


def test_prompts_and_dataset():
    assert world.prompt("colour", "red") == "a red object"
    assert world.prompt("colour", "orange") == "an orange object"  # as the generator writes it
    assert world.prompt("shape", "star") == "a star"
    assert world.prompt("position", "left") == "an object on the left"
    with pytest.raises(ValueError, match="unknown factor"):
        world.prompt("colour", "pink")
    ds = world.as_dataset(5, seed=0)
    assert len(ds) == 5 and ds.features["shape"].names == list(world.FACTORS["shape"])
    assert ds[0]["caption"] == world.generate(5, seed=0).captions[0]


def test_given_factors_fix_the_scenes():
    """Scenes given their factors (the trainer's hard negatives differ in shape only): the truth, the captions
    and the pixels follow them."""
    n = 6
    factors = {fam: np.zeros(n, dtype=np.int64) for fam in world.FACTORS}
    factors["shape"] = np.arange(n)
    factors["size"][:] = 1
    batch = world.generate(n, seed=9, factors=factors)
    assert np.array_equal(batch.factors["shape"], np.arange(n))
    for i, text in enumerate(batch.captions):
        if batch.mentions["shape"][i]:
            assert world.FACTORS["shape"][i] in text.split()
    red = np.array(world.COLOURS["red"])
    for image in batch.images:  # every scene shows the given colour (red, index 0)
        assert (np.abs(image.reshape(-1, 3) / 255.0 - red).max(axis=1) < 0.15).sum() >= 10
    with pytest.raises(ValueError, match="indices must lie"):
        world.generate(n, seed=9, factors={**factors, "colour": np.full(n, 8)})
    with pytest.raises(ValueError, match="factors must give"):
        world.generate(n + 1, seed=9, factors=factors)


def test_rendering_is_pinned():
    """The shipped model and its ground truth were made from exactly these pixels and captions: a change to the
    renderer (e.g. an optimisation) must keep them bit for bit."""
    import hashlib

    batch = world.generate(64, seed=0)
    digest = hashlib.sha256(batch.images.tobytes() + "|".join(batch.captions).encode()).hexdigest()
    assert digest == "ca80c3fb415ca0b54c36e423c10c37c83dc4c458afbef2a7002dfccd0fd61282"
