"""A procedurally generated world of coloured shapes, with captions and true factors.

Every image shows one to three identical objects (same colour, shape, texture and size) placed in one
region of a 64x64 canvas over one kind of background. The factors that made an image are returned
with it, so a model trained on the world can be checked against the truth.

Generation is vectorised over the batch and deterministic given ``(n, seed)``:

>>> from clipviz.world import generate
>>> batch = generate(4, seed=0)
>>> batch.images.shape, batch.images.dtype
((4, 64, 64, 3), dtype('uint8'))
>>> batch.factors["colour"].shape
(4,)
>>> isinstance(batch.captions[0], str)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.72, 0.15),
    "blue": (0.12, 0.22, 0.92),
    "yellow": (0.96, 0.90, 0.10),
    "purple": (0.58, 0.15, 0.75),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.98, 0.98, 0.98),
    "black": (0.03, 0.03, 0.03),
}

#: The factor families and their values, in a fixed order (indices in ``WorldBatch.factors`` refer to it).
FACTORS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": ("circle", "square", "triangle", "star", "cross", "ring"),
    "texture": ("solid", "striped", "dotted"),
    "size": ("small", "large"),
    "position": ("left", "right", "top", "bottom", "center"),
    "count": ("one", "two", "three"),
    "background": ("plain", "noise", "gradient"),
}

PLURALS = {"cross": "crosses"}
_POSITION_PHRASES = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top", "on the top"),
    "bottom": ("at the bottom", "near the bottom", "on the bottom"),
    "center": ("in the center", "in the middle", "at the center"),
}
_BACKGROUND_PHRASES = {
    "plain": ("on a plain background",),
    "noise": ("on a noise background", "on a noisy background"),
    "gradient": ("on a gradient background",),
}
_COUNT_WORDS = {"one": ("one", "a", "a single"), "two": ("two", "two"), "three": ("three",)}
_HEAD_NOUNS = ("object", "shape", "thing")
_DETERMINERS = ("a", "an", "some")  # an unnamed count: "a"/"an" for one object, "some" for several
_FRAMES = ("a picture of {}", "there is {}", "there are {}")  # optional openings of a caption
# How often a caption names each optional factor. Captions name only some factors, so that short prompts
# naming one factor ("a red object", "a shape on the left") are in the training distribution.
_MENTION_P = {
    "colour": 0.7,
    "shape": 0.7,
    "texture": 0.4,
    "size": 0.4,
    "count": 0.5,
    "position": 0.6,
    "background": 0.25,
}


@dataclass(frozen=True)
class WorldBatch:
    """Images (uint8, (n, H, W, 3)), one caption each, the true factor indices per family, and which
    factors each caption names (``mentions[family][i]``)."""

    images: np.ndarray
    captions: list[str]
    factors: dict[str, np.ndarray]
    mentions: dict[str, np.ndarray]

    def caption_matches(self) -> np.ndarray:
        """(n, n) bool: ``[i, j]`` is True where caption ``i`` is a true description of image ``j``.

        A caption is true of an image when every factor it names matches; a caption that names no count
        still fixes whether there is one object or several (through "a" / "some" and the plural).
        """
        ok = np.ones((len(self.captions),) * 2, dtype=bool)
        for fam, idx in self.factors.items():
            same = idx[:, None] == idx[None, :]
            if fam == "count":
                several = idx > 0
                same = np.where(self.mentions[fam][:, None], same, several[:, None] == several[None, :])
                ok &= same
            else:
                ok &= ~self.mentions[fam][:, None] | same
        return ok

    def factor_names(self, i: int) -> dict[str, str]:
        """The factor values of image ``i`` as words."""
        return {fam: FACTORS[fam][int(idx[i])] for fam, idx in self.factors.items()}


def plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


def sample_factors(n: int, rng: np.random.Generator, single_object: bool = False) -> dict[str, np.ndarray]:
    """Draw ``n`` independent factor combinations, uniformly within each family."""
    factors = {fam: rng.integers(0, len(vals), size=n) for fam, vals in FACTORS.items()}
    if single_object:
        factors["count"] = np.zeros(n, dtype=np.int64)
    return factors


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-mask of one shape; ``u, v`` are offsets from the centre in units of the radius."""
    if shape == 0:  # circle
        return u * u + v * v <= 1.0
    if shape == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == 2:  # triangle, apex up
        return (v <= 0.75) & (np.abs(u) <= (v + 1.0) * 0.6)
    if shape == 3:  # five-pointed star
        r = np.sqrt(u * u + v * v)
        spikes = 0.5 + 0.5 * np.cos(5 * (np.arctan2(v, u) + np.pi / 2))
        return r <= 0.38 + 0.62 * spikes * spikes
    if shape == 4:  # cross
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    r2 = u * u + v * v  # ring
    return (r2 <= 1.0) & (r2 >= 0.3)


def _centres(factors: dict[str, np.ndarray], radius: np.ndarray, size: int, rng: np.random.Generator):
    """Object centres (n, 3) x and y; objects beyond the image's count are placed but not drawn."""
    n = radius.shape[0]
    count = factors["count"] + 1
    slot = (np.arange(3)[None, :] + 0.5) / count[:, None]  # spread along the region's long side
    jitter = rng.uniform(-0.06, 0.06, size=(n, 3))
    along = np.clip(0.14 + 0.72 * slot + jitter, 0.1, 0.9) * size
    position = factors["position"]
    r = radius
    lo_near, hi_near = r + 1.0, 0.33 * size
    near = rng.uniform(0, 1, size=(n, 1)) * np.maximum(hi_near - lo_near, 0.0)[:, None] + lo_near[:, None]
    far = size - near
    mid = size / 2 + rng.uniform(-0.08, 0.08, size=(n, 1)) * size
    mid_along = np.where(
        count[:, None] == 1,
        size / 2 + rng.uniform(-0.1, 0.1, size=(n, 3)) * size,
        np.clip(0.3 + 0.4 * slot, 0.2, 0.8) * size,
    )
    cx = np.select(
        [position[:, None] == k for k in range(5)],
        [near.repeat(3, 1), far.repeat(3, 1), along, along, mid_along],
    )
    cy = np.select(
        [position[:, None] == k for k in range(5)],
        [along, along, near.repeat(3, 1), far.repeat(3, 1), mid.repeat(3, 1)],
    )
    return cx, cy


def _backgrounds(kind: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    n = kind.shape[0]
    grey = rng.uniform(0.3, 0.7, size=(n, 1, 1, 1)).astype(np.float32)
    tint = rng.uniform(-0.04, 0.04, size=(n, 1, 1, 3)).astype(np.float32)
    out = np.broadcast_to(grey + tint, (n, size, size, 3)).copy()
    noisy = np.flatnonzero(kind == 1)
    out[noisy] += 0.1 * rng.standard_normal(size=(noisy.size, size, size, 1), dtype=np.float32)
    graded = np.flatnonzero(kind == 2)
    angle = rng.uniform(0, 2 * np.pi, size=(graded.size, 1, 1)).astype(np.float32)
    coords = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = np.cos(angle) * coords[None, None, :] + np.sin(angle) * coords[None, :, None] + 0.5
    g0, g1 = rng.uniform(0.2, 0.8, size=(2, graded.size, 1, 1)).astype(np.float32)
    out[graded] = (g0 + (g1 - g0) * ramp)[..., None] + tint[graded]
    return out


def render(factors: dict[str, np.ndarray], rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Render images (uint8, (n, size, size, 3)) for the given factor indices.

    Striped and dotted objects alternate their colour with a darker tone of it (a lighter one for black),
    so that the silhouette, and so the shape, stays visible whatever the texture.
    """
    n = factors["colour"].shape[0]
    scale = size / 64.0
    small = rng.uniform(4.5, 6.0, size=n)
    large = rng.uniform(8.5, 10.5, size=n)
    radius = np.where(factors["size"] == 1, large, small) * scale
    cx, cy = _centres(factors, radius, size, rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    # Only the drawn objects are rasterised, grouped by shape: (image, slot) pairs.
    img, slot = np.nonzero(np.arange(3)[None, :] <= factors["count"][:, None])
    cover = np.zeros((n, size, size), dtype=bool)
    obj_shape = factors["shape"][img]
    for shape in range(len(FACTORS["shape"])):
        sel = np.flatnonzero(obj_shape == shape)
        if sel.size:
            i, k = img[sel], slot[sel]
            rad = radius[i, None, None].astype(np.float32)
            u = (xx - cx[i, k, None, None].astype(np.float32)) / rad
            v = (yy - cy[i, k, None, None].astype(np.float32)) / rad
            mask = _shape_mask(shape, u, v)
            for s in range(3):  # within one slot an image appears at most once, so plain indexing is exact
                here = k == s
                cover[i[here]] |= mask[here]
    phase = rng.integers(0, 8, size=n)
    # Textures depend on the image only through its phase (8 values): build the 8 patterns once and index them.
    phases = np.arange(8)[:, None, None]
    period = max(int(round(4 * scale)), 2)
    stripe = ((((xx + yy)[None] + phases) // (period / 2)) % 2 == 1)[phase]
    dot = max(int(round(4 * scale)), 3)
    spot = ((((xx[None] + phases) % dot) < dot / 2) & (((yy[None] + phases) % dot) < dot / 2))[phase]
    texture = factors["texture"][:, None, None]
    second_tone = np.where(texture == 1, stripe, (texture == 2) & spot)
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    colour = palette[factors["colour"]] + rng.normal(0, 0.03, size=(n, 3)).astype(np.float32)
    dark = colour.mean(axis=1, keepdims=True) < 0.2
    tone = np.where(dark, 0.45 + 0.0 * colour, colour * 0.45)
    image = _backgrounds(factors["background"], size, rng)
    np.copyto(image, colour[:, None, None, :], where=(cover & ~second_tone)[..., None])
    np.copyto(image, tone[:, None, None, :], where=(cover & second_tone)[..., None])
    image *= 255.0
    np.clip(image, 0.0, 255.0, out=image)
    return (image + 0.5).astype(np.uint8)


def choose_mentions(rng: np.random.Generator) -> dict[str, bool]:
    """Which factors a caption names, drawn independently with the generator's rates."""
    return {fam: bool(rng.random() < p) for fam, p in _MENTION_P.items()}


def caption(names: dict[str, str], rng: np.random.Generator, mention: dict[str, bool]) -> str:
    """A natural caption for one scene given its factor words, naming the factors that ``mention`` marks."""
    count = names["count"]
    many = count != "one"  # the plural tells whether there are several objects, named or not
    noun = names["shape"] if mention["shape"] else str(rng.choice(_HEAD_NOUNS))
    noun = plural(noun) if many else noun
    adjectives = [names[f] for f in ("size", "colour", "texture") if mention[f]]
    if mention["count"]:
        det = str(rng.choice(_COUNT_WORDS[count]))
    elif many:
        det = _DETERMINERS[2]
    else:
        det = _DETERMINERS[1] if (adjectives or [noun])[0][0] in "aeiou" else _DETERMINERS[0]
    words = [det, *adjectives, noun]
    if mention["position"]:
        words.append(str(rng.choice(_POSITION_PHRASES[names["position"]])))
    if mention["background"]:
        words.append(str(rng.choice(_BACKGROUND_PHRASES[names["background"]])))
    text = " ".join(words)
    style = rng.random()
    if style < 0.15:
        text = _FRAMES[0].format(text)
    elif style < 0.25:
        text = _FRAMES[2 if many else 1].format(text)
    return text


def vocabulary() -> list[str]:
    """Every word that a caption or a :func:`prompt` of the world can contain, sorted.

    >>> words = vocabulary()
    >>> {"red", "crosses", "striped", "middle", "picture"} <= set(words)
    True
    """
    nouns = [*FACTORS["shape"], *_HEAD_NOUNS]
    phrases = [*nouns, *map(plural, nouns), *_DETERMINERS, *(f.format("") for f in _FRAMES)]
    phrases += [value for family in ("colour", "texture", "size", "count") for value in FACTORS[family]]
    for table in (_POSITION_PHRASES, _BACKGROUND_PHRASES, _COUNT_WORDS):
        phrases += [phrase for options in table.values() for phrase in options]
    return sorted({word for phrase in phrases for word in phrase.split()})


def prompt(family: str, value: str) -> str:
    """The single-factor prompt used for zero-shot evaluation, e.g. ``prompt("colour", "red") == "a red object"``.

    Each prompt is a caption that the generator itself writes when it names only that factor.
    """
    if family not in FACTORS or value not in FACTORS[family]:
        raise ValueError(f"unknown factor {family}={value!r}; families: {', '.join(FACTORS)}")
    if family == "shape":
        return f"a {value}"
    if family == "count":
        return "one object" if value == "one" else f"{value} objects"
    if family == "position":
        return f"an object {_POSITION_PHRASES[value][0]}"
    if family == "background":
        return f"an object {_BACKGROUND_PHRASES[value][0]}"
    return f"{'an' if value[0] in 'aeiou' else 'a'} {value} object"


def generate(
    n: int, seed: int, size: int = 64, single_object: bool = False, factors: dict[str, np.ndarray] | None = None
) -> WorldBatch:
    """``n`` images with captions and true factors; the same arguments give the same batch.

    ``factors`` (indices per family, each of length ``n``) fixes the scenes instead of drawing them, e.g. to
    build batches of images that differ in one factor only; placement, noise and phrasing still come from ``seed``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    if factors is None:
        factors = sample_factors(n, rng, single_object=single_object)
    else:
        if set(factors) != set(FACTORS) or any(len(v) != n for v in factors.values()):
            raise ValueError(f"factors must give {n} indices for each of {', '.join(FACTORS)}")
        factors = {fam: np.asarray(factors[fam], dtype=np.int64) for fam in FACTORS}
        for fam, idx in factors.items():
            if idx.size and (idx.min() < 0 or idx.max() >= len(FACTORS[fam])):
                raise ValueError(f"{fam} indices must lie in [0, {len(FACTORS[fam])})")
    images = render(factors, rng, size=size)
    captions = []
    mentions = {fam: np.zeros(n, dtype=bool) for fam in FACTORS}
    for i in range(n):
        names = {fam: FACTORS[fam][int(idx[i])] for fam, idx in factors.items()}
        mention = choose_mentions(rng)
        for fam, named in mention.items():
            mentions[fam][i] = named
        captions.append(caption(names, rng, mention))
    return WorldBatch(images=images, captions=captions, factors=factors, mentions=mentions)


def as_dataset(n: int, seed: int, size: int = 64, single_object: bool = False):
    """The world as a Hugging Face ``datasets.Dataset``: ``image``, ``caption`` and one ClassLabel per factor.

    >>> ds = as_dataset(4, seed=0)
    >>> ds.features["colour"].names[:3], ds[0]["image"].size
    (['red', 'green', 'blue'], (64, 64))
    """
    import datasets
    from PIL import Image

    batch = generate(n, seed=seed, size=size, single_object=single_object)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            **{fam: datasets.ClassLabel(names=list(vals)) for fam, vals in FACTORS.items()},
        }
    )
    rows = {
        "image": [Image.fromarray(img) for img in batch.images],
        "caption": batch.captions,
        **{fam: batch.factors[fam].tolist() for fam in FACTORS},
    }
    return datasets.Dataset.from_dict(rows, features=features)
