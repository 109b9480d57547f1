"""What ``visualize`` adds to a plain objective for data-guided recipes (``vital``) and feature accentuation.

A data-guided recipe matches each neuron's image to the statistics of that neuron's own top examples
(``clipviz.visualization.vital``); its reference images come from ``guide``:

* a data source (a folder of images, ``world:<n>``, a Hugging Face dataset): one pass over it ranks every image
  for every requested neuron by the neuron's reduced activation (the ``examples`` ranking), and each batch of
  neurons then reads its own top ``guide_k`` images back by index;
* a results folder of ``clipviz examples`` for the hook (same model): its top-k lists, read back from the source
  it recorded;
* ``{neuron: (k, 3, H, W) tensor}``: the reference images themselves.

A bundled model may name its own default source (the plug-in registry's ``guides``: world-clip's is its world).
Feature accentuation starts from a seed image (``from_image``) and, for the ``accentuate`` recipe, anchors the
result to it (``clipviz.visualization.accentuate``).

Everything here is per target: a neuron's reference and a seed image enter only that neuron's terms, so an image
depends only on (model, hook, target, recipe, seed, guide, seed image), never on its batch-mates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clipviz.data.decoding import batches
from clipviz.data.sources import Source, check_spec, open_source
from clipviz.errors import ClipvizError
from clipviz.images import luminance
from clipviz.model.layout import Reduce, reduce_tokens
from clipviz.plugins import registry
from clipviz.results import find_examples, has_examples, read_examples
from clipviz.visualization.objectives import Objective

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel
    from clipviz.visualization.recipes import Recipe

Guide = str | Path | Source | Mapping[int, torch.Tensor]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


@torch.no_grad()
def rank_images(
    model: HookedVisionModel, hook: str, neurons: Sequence[int], source: Source, k: int, reduce: Reduce = "patches"
) -> torch.Tensor:
    """Each neuron's ``k`` most activating images of ``source`` by the reduced activation: indices (neurons, k),
    best first, ties to the lower index (all of them, ranked, if the source has fewer than ``k``)."""
    layout = model.hook_layout(hook)
    cols = list(neurons)
    best_scores: torch.Tensor | None = None
    best_ids: torch.Tensor | None = None
    skipped: list[int] = []
    for images, idx, _ in batches(source, model.preprocess_pil, 64, skipped):
        _, cache = model.run_with_cache(images, [hook])
        score = reduce_tokens(cache[hook][..., cols].float(), reduce, layout, dim=1).T.cpu()  # (m, B)
        ids = torch.tensor(idx).expand(len(cols), -1)
        if best_scores is not None:
            score, ids = torch.cat([best_scores, score], 1), torch.cat([best_ids, ids], 1)
        order = score.sort(dim=1, descending=True, stable=True).indices[:, :k]  # earlier (lower index) first
        best_scores, best_ids = score.gather(1, order), ids.gather(1, order)
    if best_ids is None:
        raise ClipvizError(f"the guide '{source.name}' has no readable images")
    return best_ids


def read_images(model: HookedVisionModel, source: Source, indices: Sequence[int]) -> dict[int, torch.Tensor]:
    """The images of ``source`` at ``indices``, preprocessed the model's way, read one by one."""
    out = {}
    for i in sorted(set(int(j) for j in indices)):
        item = next(iter(source.range(i, i + 1)), None)
        if item is None or item[1] is None:
            raise ClipvizError(f"image {i} of the guide '{source.name}' is missing or unreadable")
        out[i] = model.preprocess_pil(item[1])
    return out


@dataclass
class Guidance:
    """Per-target additions to the objective: reference images per neuron (read lazily, per batch) and a seed
    image. ``settings`` are recorded in each neuron's metadata (and its settings id)."""

    recipe: Recipe
    source: Source | None = None
    ranks: dict[int, list[int]] = field(default_factory=dict)  # neuron -> indices into ``source``
    given: Mapping[int, torch.Tensor] | None = None  # neuron -> (k, 3, H, W)
    seed_image: torch.Tensor | None = None  # (3, H, W)
    settings: dict = field(default_factory=dict)
    guides: dict[int, dict] = field(default_factory=dict)  # neuron -> what its references were

    def settings_for(self, neuron: int | None) -> dict:
        """The settings of one target (``None``: a prompt or class, which renders unguided). A neuron's guide is
        recorded by what decides its image, the reference images themselves, not by the request it came in, so
        the same references give the same settings whether they came from a dataset, a folder of examples
        anywhere on disk, or a request with other neurons."""
        if neuron is None or not self.guides:
            return dict(self.settings)
        return {**self.settings, "guide": self.guides[int(neuron)]}

    @property
    def guided(self) -> bool:
        return self.source is not None or self.given is not None

    def references(self, model: HookedVisionModel, neurons: Sequence[int]) -> list[torch.Tensor]:
        if self.given is not None:
            return [self.given[int(n)] for n in neurons]
        images = read_images(model, self.source, [i for n in neurons for i in self.ranks[int(n)]])
        return [torch.stack([images[i] for i in self.ranks[int(n)]]) for n in neurons]

    def apply(
        self,
        model: HookedVisionModel,
        hook: str | None,
        reduce: Reduce,
        count: int,
        neurons: Sequence[int] | None,
        plain: Objective,
    ) -> tuple[Objective, torch.Tensor | None]:
        """``(objective, start images or None)`` for one batch of ``count`` targets (``neurons``: the batch's
        neurons, or ``None`` for a batch of prompts or classes, which render unguided)."""
        objective, init = plain, None
        recipe = self.recipe
        if self.guided and neurons is not None:
            from clipviz.visualization.vital import guided_objective

            refs = self.references(model, neurons)
            objective = guided_objective(
                model, hook, neurons, refs, recipe.match, recipe.match_weight, reduce, colour=recipe.colour_match
            )
        if self.seed_image is not None:
            from clipviz.visualization.accentuate import PixelAnchor, feature_anchor
            from clipviz.visualization.vital import match_hook

            init = self.seed_image[None].expand(count, -1, -1, -1).contiguous().to(model.device)  # once, not per step
            if recipe.anchor:
                objective = objective + recipe.anchor * PixelAnchor(init)
            if recipe.anchor_features:
                if hook is None:
                    raise ClipvizError(
                        f"recipe '{recipe.name}' anchors the features of a neuron's block to the seed image, so it "
                        "needs neuron targets (--hook and --neurons): text prompts and classes have no block; use "
                        "a recipe without a feature anchor for them"
                    )
                name = match_hook(model, hook, recipe.anchor_hook)
                objective = objective + recipe.anchor_features * feature_anchor(model, name, init)
        return objective, init


def default_guide(model: HookedVisionModel) -> str | None:
    """The data source a bundled model names for data-guided recipes (``None`` for other models)."""
    return registry().guides.get(model.spec)


#: What ``visualize`` renders when no recipe is named: the data-guided recipe where reference images exist (a
#: guide is given, or the model names its own), else the unguided default. Chosen by measurement
#: (``scripts/score_recipes.py``, docs/validation.md): on world-clip's known-concept neurons ``vital`` renders
#: more colour neurons in their colour, closer to natural feature statistics, at about the same activation.
GUIDED_DEFAULT, UNGUIDED_DEFAULT = "vital", "default"


def default_recipe(model: HookedVisionModel, guide: object = None) -> str:
    """The recipe name ``visualize`` uses for ``model`` when none is named."""
    return GUIDED_DEFAULT if guide is not None or default_guide(model) is not None else UNGUIDED_DEFAULT


def prepare_guidance(
    model: HookedVisionModel,
    hook: str | None,
    neurons: Sequence[int],
    recipe: Recipe,
    guide: Guide | None,
    from_image: str | Path | torch.Tensor | None,
    reduce: Reduce,
) -> Guidance:
    """Check the request and rank the guide's images once for all ``neurons``."""
    out = Guidance(recipe=recipe)
    if recipe.guided and neurons:  # each match point must exist for this hook, before any step
        from clipviz.visualization.vital import match_hook

        for where in recipe.match:
            match_hook(model, hook, where)
    if recipe.guided and neurons:  # prompts and classes render without guidance
        guide = default_guide(model) if guide is None else guide
        if guide is None:
            raise ClipvizError(
                f"recipe '{recipe.name}' needs reference images: it guides each neuron by its own top examples; "
                "pass guide= (CLI: --guide) a folder of images, world:<n>, a dataset or a `clipviz examples` "
                "results folder, or choose an unguided recipe such as 'default'"
            )
        if isinstance(guide, (str, Path)):
            check_spec(str(guide))  # an empty guide is no folder, not the working folder
        _attach_guide(out, model, hook, neurons, recipe, guide, reduce)
    elif guide is not None and not neurons:
        raise ClipvizError("--guide guides neurons by their top examples; prompts and classes render unguided")
    elif guide is not None:
        raise ClipvizError(f"recipe '{recipe.name}' is not data-guided: --guide is for recipes such as 'vital'")
    if from_image is not None:
        image = _seed_image(model, from_image)
        out.seed_image = image
        out.settings["from_image"] = _digest(image)
    elif recipe.anchor or recipe.anchor_features:
        raise ClipvizError(f"recipe '{recipe.name}' accentuates a seed image: pass from_image= (CLI: --from-image)")
    return out


def _attach_guide(
    out: Guidance, model: HookedVisionModel, hook: str, neurons: Sequence[int], recipe: Recipe, guide: Guide, reduce
) -> None:
    k = recipe.guide_k
    if isinstance(guide, Mapping):
        missing = [n for n in neurons if int(n) not in guide]
        if missing:
            raise ClipvizError(f"guide= has no reference images for neuron {missing[0]}")
        given = {}
        for n in neurons:
            images = torch.as_tensor(guide[int(n)]).float()
            if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
                raise ClipvizError(
                    f"the reference images of neuron {n} must be (k, 3, H, W) in [0, 1], got {tuple(images.shape)}"
                )
            given[int(n)] = _as_seen(model, images)
        out.given = given
        out.guides = {int(n): {"images": _digest(given[int(n)]), "k": int(given[int(n)].shape[0])} for n in neurons}
        return
    if isinstance(guide, (str, Path)) and Path(guide).is_dir() and has_examples(Path(guide), hook):
        out.source, out.ranks = _from_examples(model, hook, neurons, Path(guide), k, reduce)
    elif isinstance(guide, (str, Path)) and Path(guide).is_dir() and any(find_examples(Path(guide))):
        # a results folder of other hooks' examples: its thumbnails are not a guide for this one
        raise ClipvizError(f"the examples in '{guide}' do not include hook '{hook}': mine them for it first")
    else:
        source = guide if isinstance(guide, Source) else open_source(str(guide))
        ranked = rank_images(model, hook, neurons, source, k, reduce)
        out.source = source
        out.ranks = {int(n): ranked[j].tolist() for j, n in enumerate(neurons)}
    out.guides = guide_records(out.source.name, out.source.identity, out.ranks)


def guide_records(source: str, identity: str, ranks: Mapping[int, Sequence[int]]) -> dict[int, dict]:
    """What each neuron's metadata records of its guide: the source (its name and ``Source.identity``, so new
    images behind one name are a new guide) and the indices of its reference images (``guide_k`` of them, or all
    of a smaller guide)."""
    return {
        int(n): {"source": source, "identity": identity, "k": len(r), "images": [int(i) for i in r]}
        for n, r in ranks.items()
    }


def examples_ranks(folder: Path, hook: str, neurons: Sequence[int], k: int) -> tuple[str, str, dict[int, list[int]]]:
    """The source's name and identity and each neuron's top-``k`` image indices stored by ``clipviz examples`` in
    ``folder`` (``KeyError`` for a neuron it does not include)."""
    return _ranks(*read_examples(folder, hook), neurons, k)


def _ranks(tensors: dict, meta: dict, neurons: Sequence[int], k: int) -> tuple[str, str, dict[int, list[int]]]:
    row = {int(n): j for j, n in enumerate(tensors["neurons"].tolist())}
    settings = meta.get("settings", {})
    source = settings.get("source")
    identity = settings.get("source_identity", source)
    return source, identity, {int(n): tensors["indices"][row[int(n)], :k].tolist() for n in neurons}


def _from_examples(model, hook, neurons, folder: Path, k: int, reduce) -> tuple[Source, dict[int, list[int]]]:
    from clipviz.model.loading import same_model

    try:
        tensors, meta = read_examples(folder, hook)
    except ValueError as error:
        raise ClipvizError(f"cannot use the examples in '{folder}' as a guide: {error}") from None
    settings = meta.get("settings", {})
    if not same_model(settings.get("model"), model.spec):
        raise ClipvizError(
            f"the examples in '{folder}' are of model '{settings.get('model')}', not '{model.spec}': mine them "
            "for this model or guide by a dataset"
        )
    if settings.get("weights") != model.identity()["weights"]:
        raise ClipvizError(
            f"the examples in '{folder}' were mined with other weights of '{model.spec}' (or by an older clipviz "
            "that did not record them): mine them again for these weights or guide by a dataset"
        )
    if meta.get("reduce") != reduce:
        raise ClipvizError(
            f"the examples in '{folder}' rank by '{meta.get('reduce')}', the visualization by '{reduce}'"
        )
    stored = set(tensors["neurons"].tolist())
    missing = [n for n in neurons if int(n) not in stored]
    if missing:
        raise ClipvizError(f"the examples in '{folder}' do not include neuron {missing[0]} of '{hook}'")
    name, identity, ranks = _ranks(tensors, meta, neurons, k)
    source = open_source(settings.get("source_location") or name, **(settings.get("source_options") or {}))
    if source.identity != identity:
        raise ClipvizError(
            f"the images of '{name}' are not those the examples in '{folder}' were mined from (its files changed, "
            "or another split or column was mined): mine them again, or guide by the dataset itself"
        )
    return source, ranks


def _seed_image(model: HookedVisionModel, from_image) -> torch.Tensor:
    if isinstance(from_image, (str, Path)):
        from clipviz.data.sources import UNREADABLE
        from clipviz.images import open_image

        try:
            pil = open_image(from_image)  # transparency flattened by preprocess_pil
        except UNREADABLE as error:
            raise ClipvizError(f"cannot read the seed image '{from_image}': {error}") from None
        return model.preprocess_pil(pil)
    image = torch.as_tensor(from_image).float()
    if image.ndim != 3 or image.shape[0] != 3 or not bool(((image >= 0) & (image <= 1)).all()):
        raise ClipvizError(f"from_image must be a (3, H, W) image in [0, 1], got shape {tuple(image.shape)}")
    return _as_seen(model, image)


def _as_seen(model: HookedVisionModel, images: torch.Tensor) -> torch.Tensor:
    """Images given as tensors, as the model reads them: grey for a grey model (``clipviz.model.channels``), as
    photos read from files are, so a seed or a reference holds no colour its visualization cannot have."""
    return luminance(images).expand_as(images).contiguous() if model.input_channels == 1 else images


__all__ = [
    "Guidance",
    "default_guide",
    "default_recipe",
    "examples_ranks",
    "guide_records",
    "prepare_guidance",
    "rank_images",
    "read_images",
]
