"""Named recipes: every setting of a feature-visualization run, as one dataclass.

==================  ===========================================================================================
``vit-paper``       "What do Vision Transformers Learn?" (Ghiasi et al. 2022) for ViTs: raw pixels, 8 copies,
                    ColorShift (x-mu)/sigma, offset noise 0.5 -> 0, jitter 32, TV 0.0005, Adam(0.5, 0.99) lr 0.1,
                    cosine to 0 over 400 steps.
``vit-paper-clip``  The same paper's settings for CLIP towers: lr 1.0, TV 0.0005 * 30.
``pii``             Plug-In Inversion (Ghiasi et al. 2022): 7 zoom-and-centre stages from 2S/8 to S, 400 steps each,
                    jitter 32 -> copies -> ColorShift sigma*x+mu, no TV, Adam lr 0.01, cosine restarted per stage.
``clip-inversion``  CLIPInversion: 13 copies with random affine (30 deg, 0.1, 0.7-1.2), TV 0.005, resolution
                    64 -> 128 -> 224 (as fractions of the native size), Adam lr 0.1, gradient-norm clip 1.
``lucid``           Lucid's defaults: Fourier parameterisation with decorrelated colour, jitter, scale and
                    rotation, Adam lr 0.05, 512 steps, one copy.
``maco``            MaCo phase-only Fourier images (fixed 1/f magnitude) with the ViT paper's augmentations.
``default``         clipviz's default, chosen by measurement (docs/validation.md): Lucid's Fourier image and
                    augmentations with one copy and 256 steps. On the first world-clip at 150 steps it reached
                    the highest objective of the recipes measured (0.995 vs vit-paper 0.940, vit-paper-clip 0.887,
                    MaCo 0.460); on v1 99% of the best (1.572 vs vit-paper-clip 1.588), in under a third of
                    their time both times.
``vital``           Data-guided (after VITAL, Gorgun et al. 2025; ``clipviz.visualization.vital``): the default's
                    image and augmentations plus a sort-matching loss against the neuron's own top-16 examples
                    at two points, the patch embedding (``blocks.0.hook_resid_pre``) and the input of the target's
                    MLP (``hook_resid_mid``), channels weighted by their relevance (gradient x activation) for
                    the neuron, and (weight 0.25, ``colour_match``) a match of the image's colour distribution
                    to the same images' pixels (``ColourMatch``: sliced optimal transport along 13 RGB
                    directions; it lifted the colour neurons rendered in their colour on world-clip v3 from 75%
                    to 81% for 2% of the activation, docs/validation.md). Needs reference images
                    (``visualize(..., guide="world:2000")`` / ``--guide``; world-clip guides itself by its
                    world). What ``visualize`` renders when no recipe is named and reference images exist
                    (``clipviz.visualization.guidance.default_recipe``).
``accentuate``      Feature accentuation (Hamblin et al. 2024; ``clipviz.visualization.accentuate``): starts from a
                    seed image (``from_image=`` / ``--from-image``) and raises the neuron while a pixel and a
                    feature-space distance keep the image close to the seed.
==================  ===========================================================================================

Any field can be overridden: ``get_recipe("vit-paper", steps=100, copies=4)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, get_args

from clipviz.errors import MAX_STEPS, ClipvizError, check_int, check_positive
from clipviz.results import is_guided
from clipviz.visualization.transforms import ColorShift, Flip, Jitter, OffsetNoise, RandomAffine, RandomScale

Param = Literal["pixel", "fourier", "maco"]
Schedule = Literal["cosine", "constant"]
ColorShiftMode = Literal["vit", "pii"]
PARAMS, SCHEDULES, COLOR_SHIFTS = get_args(Param), get_args(Schedule), get_args(ColorShiftMode)
MAX_COPIES = 256  # augmented copies per image and step
MAX_GUIDE_K = 1024  # reference images per neuron


@dataclass(frozen=True)
class Recipe:
    name: str = "custom"
    param: Param = "pixel"
    size: int | None = None  # output size in pixels (None: the model's input size)
    steps: int = 400  # optimisation steps per stage
    lr: float = 0.1
    betas: tuple[float, float] = (0.5, 0.99)
    eps: float = 1e-8
    schedule: Schedule = "cosine"  # cosine (to 0, restarted per stage) | constant
    copies: int = 8  # independently augmented copies of each image per step
    jitter_first: bool = False  # PII jitters the image before making copies; the ViT paper after
    color_shift: ColorShiftMode | None = "vit"  # vit: (x - mu) / sigma | pii: sigma * x + mu | None: off
    offset_noise: float = 0.5  # start of the annealed per-channel offset noise (0: off)
    jitter: int = 32  # max circular shift in pixels (0: off)
    flip: bool = False
    scale: tuple[float, float] | None = None  # random zoom range
    affine: tuple[float, float, float, float] | None = None  # degrees, translate, min scale, max scale
    tv: float = 0.0005  # weight of the 4-direction total variation
    l2: float = 0.0
    stages: tuple[float, ...] = (1.0,)  # image size of each stage as a fraction of ``size``
    zoom_pad: float = 0.125  # PII: the previous stage's image is pasted at (size - pad * size) in the centre
    grad_clip: float | None = None
    # Data guidance (clipviz.visualization.vital): sort-match the activations at these hooks (full names, or
    # points of the target's block such as "hook_resid_mid") to those of the neuron's top-``guide_k`` examples.
    match: tuple[str, ...] = ()
    match_weight: float = 0.0
    guide_k: int = 16
    # and the weight of a match of the image's colour distribution to the same references' (``ColourMatch``)
    colour_match: float = 0.0
    # Feature accentuation (clipviz.visualization.accentuate): weights of the distance to the seed image, in
    # pixels and in features at ``anchor_hook`` (a point of the target's block, or a full hook name).
    anchor: float = 0.0
    anchor_features: float = 0.0
    anchor_hook: str = "hook_resid_mid"

    def __post_init__(self):
        for name, value, accepted in (
            ("param", self.param, PARAMS),
            ("schedule", self.schedule, SCHEDULES),
            ("color_shift", self.color_shift, (*COLOR_SHIFTS, None)),
        ):
            if value not in accepted:
                shown = ", ".join(str(a) for a in accepted)
                raise ClipvizError(f"unknown recipe {name} {value!r}; accepted: {shown}")
        ints = {"steps": (1, MAX_STEPS), "copies": (1, MAX_COPIES), "guide_k": (1, MAX_GUIDE_K), "jitter": (0, None)}
        ints.update({"size": (1, None)} if self.size is not None else {})
        for name, (low, high) in ints.items():
            self._set(name, check_int(getattr(self, name), name, low, high))
        for name, what in (("lr", "the learning rate (lr)"), ("eps", "eps"), ("grad_clip", "grad_clip")):
            value = getattr(self, name)
            if value is not None or name != "grad_clip":
                number = check_positive(value, what)
                self._set(name, value if _real(value) else number)  # a number as given: 1 stays 1 in the settings
        for name in ("tv", "l2", "offset_noise", "match_weight", "colour_match", "anchor", "anchor_features"):
            self._set(name, _number(getattr(self, name), f"recipe {name}", "a finite number >= 0", 0.0))
        for name in ("jitter_first", "flip"):
            if not isinstance(getattr(self, name), bool):
                raise ClipvizError(f"recipe {name} must be true or false, got {getattr(self, name)!r}")
        self._set("betas", _numbers(self.betas, "betas", 2, "two numbers in [0, 1)", 0.0, 1.0, open_high=True))
        if self.scale is not None:
            lo, hi = _numbers(self.scale, "scale", 2, "(min zoom, max zoom) with 0 < min <= max <= 10", 0.0, 10.0)
            if not 0 < lo <= hi:
                raise ClipvizError(f"recipe scale must be (min zoom, max zoom) with 0 < min <= max, got {self.scale!r}")
            self._set("scale", (lo, hi))
        if self.affine is not None:
            shown = "(degrees >= 0, translate in [0, 1), min scale, max scale) with 0 < min <= max <= 10"
            deg, tr, lo, hi = _numbers(self.affine, "affine", 4, shown, 0.0, None)
            if not (tr < 1 and 0 < lo <= hi <= 10):
                raise ClipvizError(f"recipe affine must be {shown}, got {self.affine!r}")
            self._set("affine", (deg, tr, lo, hi))
        self._set("zoom_pad", _number(self.zoom_pad, "recipe zoom_pad", "a fraction in [0, 1)", 0.0, 1.0))
        stages = self.stages if isinstance(self.stages, (tuple, list)) else None
        if not stages or not all(_real(f) and 0 < f <= 1 for f in stages):
            raise ClipvizError(f"recipe stages must be fractions in (0, 1], got {self.stages!r}")
        self._set("stages", tuple(stages))
        if isinstance(self.match, str) or not all(isinstance(m, str) and m for m in self.match):
            raise ClipvizError(f"recipe match must be a tuple of hook names, got {self.match!r}")
        self._set("match", tuple(self.match))
        if not isinstance(self.anchor_hook, str) or not self.anchor_hook:
            raise ClipvizError(f"recipe anchor_hook must be a hook name, got {self.anchor_hook!r}")

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def transforms(self) -> list:
        """The per-step augmentation pipeline, applied to (n, copies, 3, H, W)."""
        out: list = []
        if self.color_shift:
            out.append(ColorShift(mode=self.color_shift))
        if self.offset_noise:
            out.append(OffsetNoise(start=self.offset_noise, end=0.0))
        if self.jitter and not self.jitter_first:
            out.append(Jitter(self.jitter))
        if self.flip:
            out.append(Flip())
        if self.scale:
            out.append(RandomScale(*self.scale))
        if self.affine:
            deg, tr, lo, hi = self.affine
            out.append(RandomAffine(deg, tr, (lo, hi)))
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def total_steps(self) -> int:
        return self.steps * len(self.stages)

    @property
    def guided(self) -> bool:
        """Whether the recipe is data-guided: it matches the statistics of reference images (``vital``)."""
        return is_guided(self.to_dict())

    def unguided(self) -> Recipe:
        """The recipe as it renders a target without reference images (a prompt, a class): its matching off, and
        named so (``vital-unguided``), however the prompt was asked for."""
        if not self.guided:
            return self
        return replace(self, name=f"{self.name}-unguided", match=(), match_weight=0.0, colour_match=0.0)


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: object, name: str, shown: str, low: float, high: float | None = None) -> float:
    """``value`` if it is a number in ``[low, high)`` (no upper bound when ``high`` is None), else a one-line
    error."""
    if not _real(value) or value < low or (high is not None and value >= high):
        raise ClipvizError(f"{name} must be {shown}, got {value!r}")
    return value  # as given: an int stays an int, so the settings (and the work they identify) do not change


def _numbers(
    value: object, name: str, count: int, shown: str, low: float, high: float | None, open_high: bool = False
) -> tuple[float, ...]:
    """``value`` as a tuple of ``count`` numbers within ``[low, high]`` (``[low, high)`` with ``open_high``)."""
    items = tuple(value) if isinstance(value, (tuple, list)) else None
    above = (lambda v: v >= high) if open_high else (lambda v: v > high)
    if (
        items is None
        or len(items) != count
        or not all(_real(v) and v >= low and (high is None or not above(v)) for v in items)
    ):
        raise ClipvizError(f"recipe {name} must be {shown}, got {value!r}")
    return items


RECIPES: dict[str, Recipe] = {
    "vit-paper": Recipe(name="vit-paper"),
    "vit-paper-clip": Recipe(name="vit-paper-clip", lr=1.0, tv=0.0005 * 30),
    "pii": Recipe(
        name="pii",
        lr=0.01,
        copies=8,
        jitter_first=True,
        color_shift="pii",
        offset_noise=0.0,
        tv=0.0,
        stages=tuple((k + 2) / 8 for k in range(7)),
    ),
    "clip-inversion": Recipe(
        name="clip-inversion",
        lr=0.1,
        copies=13,
        color_shift=None,
        offset_noise=0.0,
        jitter=0,
        affine=(30.0, 0.1, 0.7, 1.2),
        tv=0.005,
        grad_clip=1.0,
        steps=300,
        stages=(64 / 224, 128 / 224, 1.0),
    ),
    "lucid": Recipe(
        name="lucid",
        param="fourier",
        lr=0.05,
        betas=(0.9, 0.999),
        schedule="constant",
        copies=1,
        color_shift=None,
        offset_noise=0.0,
        jitter=8,
        scale=(0.9, 1.1),
        affine=(10.0, 0.0, 1.0, 1.0),
        tv=0.0,
        steps=512,
    ),
    "maco": Recipe(
        name="maco",
        param="maco",
        lr=0.05,
        betas=(0.9, 0.999),
        steps=256,
        copies=8,
        color_shift="vit",
        offset_noise=0.5,
        jitter=16,
        scale=(0.9, 1.1),
        tv=0.0,
    ),
}


RECIPES["default"] = replace(RECIPES["lucid"], name="default", steps=256)
RECIPES["vital"] = replace(
    RECIPES["default"],
    name="vital",
    match=("blocks.0.hook_resid_pre", "hook_resid_mid"),
    match_weight=1.0,
    guide_k=16,
    colour_match=0.25,
)
RECIPES["accentuate"] = replace(
    RECIPES["lucid"],
    name="accentuate",
    lr=0.02,
    copies=2,
    jitter=2,
    scale=None,
    affine=None,
    steps=128,
    anchor=50.0,
    anchor_features=0.05,
)


def get_recipe(name: str | Recipe, **overrides) -> Recipe:
    """A named recipe with some fields replaced (``None`` values are ignored)."""
    recipe = name if isinstance(name, Recipe) else RECIPES.get(name)
    if recipe is None:
        raise ClipvizError(f"unknown recipe '{name}'; accepted: {', '.join(RECIPES)}")
    valid = {f.name for f in fields(Recipe)}
    unknown = set(overrides) - valid
    if unknown:
        raise ClipvizError(
            f"unknown recipe setting(s) {', '.join(sorted(unknown))}; accepted: {', '.join(sorted(valid))}"
        )
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(recipe, **changes) if changes else recipe


__all__ = ["RECIPES", "Recipe", "get_recipe"]
