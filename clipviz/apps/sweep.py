"""``clipviz sweep``: visualizations, top examples and words for every chosen neuron of a model, then its atlas.

>>> import clipviz
>>> from clipviz.apps.sweep import make_plan
>>> plan = make_plan(clipviz.load("world-clip"), "results", blocks="2:4", neurons="0:6", dataset="world:300")
>>> plan.hooks, plan.n_neurons, plan.images
(['blocks.2.mlp.hook_post', 'blocks.3.mlp.hook_post'], 12, 300)

The stages run in order, each with one progress bar (rate and ETA): ``examples`` (images, per hook; heat maps and
thumbnails included), ``visualize`` (optimisation steps), ``concepts`` (the direct lens for CLIP-like models,
CLIP-Dissect when a probe set is given) and ``atlas``. The examples come first because they guide the
visualizations: with no ``recipe`` named the sweep renders with the data-guided ``vital`` (each neuron matched to
its own top examples, the recipe ``visualize`` chooses wherever reference images exist); ``recipe="default"``
renders unguided. Everything goes into the standard results layout
(``clipviz.results.sweep_paths``), so ``clipviz atlas``, ``publish`` and the Space read it as they read the
outputs of the single commands.

Every stage resumes: ``visualize`` skips finished images, ``examples`` keeps finished shards, and the sweep's own
units (a hook's examples, a hook's words, the atlas) are recorded in ``sweep.json`` with the settings that made
them, so a rerun after a kill redoes only what was not finished and ends with the same files as an uninterrupted
run. Under ``accelerate launch`` the processes split the images to render and the shards to mine; only the main
process writes shared files (thumbnails, words, the atlas, ``sweep.json``).

Before it starts, the sweep prints its plan with an estimate of the time on this device: one optimisation batch
and one examples batch are timed on the deepest hook (the forward pass stops after a neuron's block, so
shallower hooks are scaled by their depth); after each stage the estimate of the rest is rescaled by how the
stage's measured time compared with its estimate.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clipviz.analysis.dissect import open_probe
from clipviz.analysis.examples import check_token_activations, larger_than_the_data
from clipviz.errors import MAX_SAMPLES, MAX_SEED, ClipvizError, check_int
from clipviz.results import (
    has_examples,
    is_atlas,
    is_guided,
    read_sweep_state,
    read_visualization_meta,
    settings_id,
    sweep_paths,
    visualization_path,
    write_sweep_state,
)

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel


@dataclass
class SweepPlan:
    """What a sweep will do (everything that decides its results)."""

    model: str
    out: str
    site: str
    hooks: list[str]
    neurons: dict[str, list[int]]
    dataset: str
    images: int
    recipe: dict
    samples: int = 1
    batch_size: int = 16
    top_k: int = 16
    words: int = 5
    vocab: str | None = "world"
    templates: str | None = None  # as --templates gives them; None: the vocabulary's own
    probe: str | None = None
    direct: bool = True
    no_direct: list[str] = field(default_factory=list)  # MLP hooks whose neurons have no fixed write direction
    shard_size: int = 1024
    seed: int = 0
    estimate: dict[str, float] = field(default_factory=dict)  # stage -> seconds (not part of the settings)
    # What the names above do not say: a hash of the weights, the images behind the dataset and probe names, the
    # vocabulary's content. A rerun with any of them changed redoes the work instead of reporting it finished.
    identity: dict = field(default_factory=dict)

    @property
    def n_neurons(self) -> int:
        return sum(len(v) for v in self.neurons.values())

    @property
    def guided(self) -> bool:
        """Whether the visualizations are matched to the sweep's own top examples (a data-guided recipe)."""
        return is_guided(self.recipe)

    @property
    def methods(self) -> list[str]:
        return (["direct"] if self.direct else []) + (["dissect"] if self.probe else [])

    def settings(self) -> dict:
        data = asdict(self)
        data.pop("estimate")
        data.pop("no_direct")  # follows from the model
        data.pop("site")
        data.pop("out")
        return data


def parse_blocks(text: str | None, n_blocks: int) -> list[int]:
    """``None``/``"all"`` -> every block; ``"2:4"`` or ``"1,3"`` -> those blocks.

    >>> parse_blocks("2:4", 12), parse_blocks(None, 3)
    ([2, 3], [0, 1, 2])
    """
    from clipviz.apps.options import parse_indices

    if text is None or text.strip() == "all":
        return list(range(n_blocks))
    if not text.strip():
        raise ClipvizError("--blocks is empty: give blocks such as 2:4 or 1,3, or all (the default)")
    blocks = list(dict.fromkeys(parse_indices(text)))
    bad = [b for b in blocks if b >= n_blocks]
    if bad or not blocks:
        raise ClipvizError(
            f"block {bad[0] if bad else text} out of range: the model has {n_blocks} blocks (0..{n_blocks - 1})"
        )
    return blocks


def default_dataset(spec: str) -> str | None:
    """The held-out data source a bundled model's plug-in names for it (world-clip: ``world:2000``, its world at its
    input size), else ``None``."""
    from clipviz.model.loading import canonical_spec
    from clipviz.plugins import registry

    return registry().datasets.get(canonical_spec(spec))


def make_plan(
    model: HookedVisionModel,
    out: str | Path,
    *,
    blocks: str | None = None,
    hooks: str = "mlp.hook_post",
    neurons: str | None = None,
    dataset: str | None = None,
    vocab: str | None = None,
    templates: str | None = None,
    probe: str | None = None,
    recipe: str | None = None,
    steps: int | None = None,
    samples: int = 1,
    batch_size: int = 16,
    top_k: int = 16,
    words: int = 5,
    shard_size: int = 1024,
    seed: int = 0,
    site: str | Path | None = None,
) -> SweepPlan:
    """Check every choice against the model and the data, and say what the sweep will do."""
    from clipviz.analysis.concepts import known_words_only, load_vocabulary, merge_same_text, parse_templates
    from clipviz.apps.atlas import ATLAS_FILE
    from clipviz.apps.options import parse_indices
    from clipviz.apps.validate import check_new_folder
    from clipviz.data.sources import open_source
    from clipviz.model.trained_words import trained_words
    from clipviz.plugins import registry

    chosen_blocks = parse_blocks(blocks, model.n_blocks)
    points = [h.strip() for h in hooks.split(",")]
    if not all(points):
        raise ClipvizError(
            f"--hooks {hooks!r} has an empty item: give hook points such as mlp.hook_post or hook_resid_post, "
            "separated by commas"
        )
    names = []
    for b in chosen_blocks:
        for point in points:
            name = point if point.startswith(("blocks.", "stages.")) else f"blocks.{b}.{point}"
            names.append(model.hook_point(name).name)  # an unknown hook is a one-line error here
    names = list(dict.fromkeys(names))
    chosen: dict[str, list[int]] = {}
    if neurons is not None and not neurons.strip():
        raise ClipvizError("--neurons is empty: give indices such as 0:6 or 1,5,9, or leave it out for all")
    widest = max(model.hook_width(name) for name in names)
    asked = parse_indices(neurons) if neurons else []
    beyond = [n for n in asked if n >= widest]
    if beyond:
        raise ClipvizError(
            f"neuron {beyond[0]} of --neurons {neurons} is out of range: the widest chosen hook has {widest} "
            f"(0..{widest - 1})"
        )
    for name in names:
        check_token_activations(model, name, model.hook_layout(name))  # each hook's examples rank tokens
        width = model.hook_width(name)
        picked = asked if neurons else list(range(width))
        picked = [n for n in dict.fromkeys(picked) if n < width]  # per hook: a range past a narrower hook is cut
        if not picked:
            raise ClipvizError(f"no neurons of '{name}' in --neurons {neurons}: it has {width} (0..{width - 1})")
        chosen[name] = picked
    if dataset is None:
        dataset = default_dataset(model.spec)
        if dataset is None:
            raise ClipvizError(
                f"--dataset is required for '{model.spec}': a folder of images, an HF dataset id or a saved dataset"
            )
    source = open_source(dataset)
    if not source.length:
        raise ClipvizError(f"the sweep needs a dataset of known length; '{dataset}' has none")
    probe_identity = open_probe(probe).identity if probe is not None else None  # fails now, not later
    clip_like = model.is_clip and model.backend.projection is not None
    if vocab is None:  # a model whose text tower knows only its world's words is named with them, whatever the data
        own = dataset.startswith("world:") or trained_words(model) is not None
        vocab = "world" if "world" in registry().vocabularies and own else "imagenet"
    if not model.is_clip:
        vocab = None
    if probe and not model.is_clip:
        raise ClipvizError(f"--probe needs a CLIP-like model to label the images; '{model.spec}' has no text tower")
    checked = [(batch_size, "--batch-size"), (top_k, "--top-k"), (words, "--words"), (samples, "--samples")]
    checked += [(shard_size, "--shard-size")] + ([(steps, "--steps")] if steps is not None else [])
    for value, what in checked:
        if value < 1:
            raise ClipvizError(f"{what} must be at least 1, got {value}")
    # every later stage's choices, checked now rather than after the examples and the visualizations
    check_int(samples, "--samples", 1, MAX_SAMPLES)
    check_int(seed, "--seed", 0, MAX_SEED)
    if top_k > source.length:
        raise ClipvizError(larger_than_the_data(source, f"--top-k {top_k}"))
    vocab_digest = None
    if vocab is not None:
        loaded = merge_same_text(model, known_words_only(model, load_vocabulary(vocab, parse_templates(templates))))
        vocab_digest = loaded.digest()
        concepts = len(loaded.concepts)
        model.tokenize([t.format(c) for c in loaded.concepts for t in loaded.templates])  # too long: refused now
        if words > concepts:
            raise ClipvizError(
                f"--words {words} is more than the vocabulary '{vocab}' has ({concepts} concepts): "
                f"use at most {concepts}"
            )
    if site is not None:
        check_new_folder(site, "--site", replaceable=ATLAS_FILE)
        _check_site_place(Path(site), Path(out))
    overrides = {"steps": steps} if steps is not None else {}
    chosen_recipe = _sweep_recipe(model, names, recipe, overrides)
    indirect = model.token_layouts.indirect_write
    no_direct = [h for h in names if h.endswith("mlp.hook_post") and model.hook_point(h).block in indirect]
    out = Path(out)
    identity = {
        **model.identity(),
        "dataset": source.identity,
        "probe": probe_identity,
        "vocab": vocab_digest,
    }
    return SweepPlan(
        identity=identity,
        model=model.spec,
        out=str(out),
        site=str(site if site is not None else sweep_paths(out)["atlas"]),
        hooks=names,
        neurons=chosen,
        dataset=dataset,
        images=source.length,
        recipe=json.loads(json.dumps(chosen_recipe.to_dict())),  # as sidecars store it
        samples=samples,
        batch_size=batch_size,
        top_k=top_k,
        words=words,
        vocab=vocab,
        templates=templates if vocab is not None else None,
        probe=probe,
        direct=clip_like and any(h.endswith("mlp.hook_post") and h not in no_direct for h in names),
        no_direct=no_direct,
        shard_size=shard_size,
        seed=seed,
    )


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved)."""
    return path.resolve().is_relative_to(folder.resolve())


def _check_site_place(site: Path, out: Path) -> None:
    """Refuse an atlas folder the sweep's own results would fill or contain (it must be new, empty or an atlas when
    the atlas is built, at the end)."""
    owned = [p for k, p in sweep_paths(out).items() if k not in ("state", "atlas")]
    if _inside(out, site) or any(_inside(site, p) for p in owned):
        raise ClipvizError(
            f"--site '{site}' would hold the sweep's own results ('{out}'): choose a folder of its own, such as the "
            "default OUT/atlas"
        )


def check_stage_place(stage: Path, out: Path, site: Path) -> None:
    """Refuse a Space folder that the sweep writes into (or that holds its results): it must still be new or
    empty when the Space is staged, after the sweep."""
    owned = [p for k, p in sweep_paths(out).items() if k != "state"] + [site]
    if _inside(out, stage) or any(_inside(stage, p) or _inside(p, stage) for p in owned):
        raise ClipvizError(
            f"--stage '{stage}' overlaps the sweep's results ('{out}') or its atlas ('{site}'): choose a folder of "
            "its own"
        )


def _sweep_recipe(model: HookedVisionModel, hooks: list[str], name: str | None, overrides: dict):
    """The recipe the sweep renders with, checked before any work: a data-guided one is guided by the sweep's own
    examples (``vital`` when none is named), so each hook needs the recipe's match points; a recipe that starts
    from a seed image has none to start from here."""
    from clipviz.visualization.guidance import GUIDED_DEFAULT
    from clipviz.visualization.recipes import get_recipe
    from clipviz.visualization.vital import match_hook

    recipe = get_recipe(GUIDED_DEFAULT if name is None else name, **overrides)
    if recipe.anchor or recipe.anchor_features:
        raise ClipvizError(
            f"recipe '{recipe.name}' accentuates a seed image, and a sweep has none: use `clipviz visualize "
            "--from-image`, or sweep with a recipe such as vital or default"
        )
    if recipe.guided:
        for hook in hooks:  # a match point the model lacks is a one-line error now, not after the examples
            for where in recipe.match:
                try:
                    match_hook(model, hook, where)
                except ClipvizError as error:
                    raise ClipvizError(
                        f"recipe '{recipe.name}' matches '{where}' for '{hook}', which this model lacks "
                        f"({' '.join(str(error).split())[:160]}); use --recipe default to render unguided"
                    ) from None
    return recipe


def _recipe(plan: SweepPlan):
    from clipviz.visualization.recipes import Recipe

    return Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in plan.recipe.items()})


def _depth(model: HookedVisionModel, hook: str) -> float:
    """The share of the deepest chosen block's forward pass that a hook's objective runs (it stops at its block)."""
    block = model.hook_point(hook).block
    return (block + 1) if block is not None else model.n_blocks


def _fmt(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------------------ what is left
#: The parts of ``HookedVisionModel.identity`` that a visualization's sidecar records.
_MODEL_IDENTITY = ("model", "weights", "image_size", "mean", "std")


def _planned_files(plan: SweepPlan, hook: str):
    """``(target, path)`` of every visualization the plan renders for ``hook``."""
    from clipviz.visualization.visualize import make_targets

    folder = sweep_paths(Path(plan.out))["visualizations"]
    kind = "data-guided" if plan.guided else "plain"
    for t in make_targets(plan.neurons[hook], seed=plan.seed, samples=plan.samples):
        yield t, visualization_path(folder, hook, t.key, None if plan.samples == 1 else t.seed, kind)


def _pending_visualizations(plan: SweepPlan, hook: str) -> int:
    """Images of ``hook`` without a finished visualization made with this recipe (a cheap count for the bar and the
    estimate; ``visualize`` itself decides exactly what to skip)."""
    guides = _expected_guides(plan, hook, sweep_paths(Path(plan.out))["examples"]) if plan.guided else {}
    left = 0
    for t, png in _planned_files(plan, hook):
        meta = read_visualization_meta(png)
        left += (
            meta is None
            or meta.get("recipe") != plan.recipe
            or meta.get("seed") != t.seed
            or any(meta.get(k) != plan.identity.get(k) for k in _MODEL_IDENTITY)  # new weights: rendered anew
            or (plan.guided and meta.get("guide") != guides.get(t.value))  # examples mined again: guided anew
        )
    return left


def _planned(plan: SweepPlan):
    """Whether a visualization under the sweep's folder is one of its plan's (a planned target's file, rendered with
    the plan's recipe): a sweep rerun with another recipe or fewer samples leaves the older images on disk, and its
    atlas must not show them as its own."""
    planned = {png.resolve() for hook in plan.neurons for _, png in _planned_files(plan, hook)}
    return lambda png, meta: Path(png).resolve() in planned and meta.get("recipe") == plan.recipe


def _expected_guides(plan: SweepPlan, hook: str, folder: Path) -> dict[int, dict]:
    """The guide each neuron's image records when guided by the examples now in ``folder`` (none yet: empty)."""
    from clipviz.visualization.guidance import examples_ranks, guide_records

    if not has_examples(folder, hook):
        return {}
    try:
        source, identity, ranks = examples_ranks(folder, hook, plan.neurons[hook], plan.recipe["guide_k"])
    except (KeyError, ValueError):  # examples of other neurons or unreadable: mined again before rendering
        return {}
    return guide_records(source, identity, ranks)


def _unit_key(plan: SweepPlan, unit: str) -> str:
    """The settings id a finished unit of work is recorded with: a rerun with other settings redoes it."""
    stage, _, hook = unit.partition("/")
    # the vocabulary (and the probe set, but where it is the dataset) decide the words only
    identity = dict(plan.identity)
    if not stage.startswith("concepts"):
        identity.pop("vocab", None)
        if plan.probe != plan.dataset:
            identity.pop("probe", None)
    common = {"model": plan.model, "dataset": plan.dataset, "images": plan.images, "identity": identity}
    if stage == "examples":
        extra = {
            "neurons": plan.neurons[hook],
            "top_k": plan.top_k,
            "shard_size": plan.shard_size,
            "activations": plan.probe == plan.dataset,
        }
    elif stage.startswith("concepts"):
        extra = {
            "neurons": plan.neurons[hook],
            "vocab": plan.vocab,
            "templates": plan.templates,
            "words": plan.words,
            "probe": plan.probe,
        }
    else:  # the visualizations: everything but the words' settings
        words = ("vocab", "templates", "words", "probe", "direct")
        extra = {k: v for k, v in plan.settings().items() if k not in words}
    return settings_id({"unit": unit, **common, **extra})


# ------------------------------------------------------------------------------------------------ the estimate
def measure(model: HookedVisionModel, plan: SweepPlan, accelerator=None) -> dict[str, float]:
    """Seconds per stage on this device, from one timed optimisation batch and one timed examples batch on the
    deepest hook (see the module docstring); only the work still to do is counted."""
    from clipviz.data.decoding import batches
    from clipviz.data.sources import open_source
    from clipviz.visualization.objectives import Neuron
    from clipviz.visualization.optimise import optimise

    recipe = _recipe(plan)
    deepest = max(plan.hooks, key=lambda h: _depth(model, h))
    depth = _depth(model, deepest)
    autocast = accelerator.autocast if accelerator is not None else None
    state = read_sweep_state(Path(plan.out))
    done = state["done"]
    estimate: dict[str, float] = {}

    left_hooks = [h for h in plan.hooks if done.get(f"examples/{h}") != _unit_key(plan, f"examples/{h}")]
    dissect = [
        h
        for h in plan.hooks
        if "dissect" in plan.methods and done.get(f"concepts-dissect/{h}") != _unit_key(plan, f"concepts-dissect/{h}")
    ]
    if left_hooks or dissect:
        source = open_source(plan.dataset)
        point = model.hook_point(deepest).name
        batch = min(64, plan.images)
        started = time.perf_counter()
        for images, _, _ in batches(source.range(0, batch), model.preprocess_pil, batch, []):
            with torch.no_grad():
                model.run_with_cache(images.to(model.device), [point])
        per_image = (_synced(model) - started) / batch
        if left_hooks:
            seconds = sum(plan.images * per_image * _depth(model, h) / depth for h in left_hooks)
            estimate["examples"] = seconds / (accelerator.num_processes if accelerator is not None else 1)
        if dissect:
            probe_n = open_source(plan.probe).length or plan.images
            reuse = plan.probe == plan.dataset
            per_hook = 0.0 if reuse else sum(probe_n * per_image * _depth(model, h) / depth for h in dissect)
            estimate["concepts"] = per_hook + probe_n * per_image * model.n_blocks / depth  # + the labeller's pass
    pending = {h: _pending_visualizations(plan, h) for h in plan.hooks}
    if any(pending.values()):
        n = min(plan.batch_size, max(pending.values()))
        neurons = plan.neurons[deepest][:n]
        neurons = (neurons * n)[:n]
        probe = type(recipe)(**{**recipe.to_dict(), "steps": 5, "stages": recipe.stages[:1]})
        stamps: list[float] = []
        kwargs = {"autocast": autocast} if autocast is not None else {}
        objective, per_reference = Neuron(deepest, neurons), 0.0
        if plan.guided:  # the matching terms and one neuron's reference pass, on stand-in references
            from clipviz.visualization.vital import colour_objective, match_hook, objective_from_references, references

            names = [match_hook(model, deepest, where) for where in recipe.match] if recipe.match_weight else []
            stand_in = torch.rand(min(plan.top_k, recipe.guide_k), 3, *model.image_size)
            if names:
                references(model, deepest, neurons[0], stand_in, names)  # warm-up
                started = time.perf_counter()
                ref = references(model, deepest, neurons[0], stand_in, names)
                per_reference = _synced(model) - started
                objective = objective_from_references(model, deepest, neurons, [ref] * n, recipe.match_weight)
            if recipe.colour_match:
                objective = objective + recipe.colour_match * colour_objective([stand_in] * n, model.device)
        started = time.perf_counter()
        optimise(
            model,
            objective,
            list(range(n)),
            probe,
            on_step=lambda k, v: stamps.append(_synced(model)),
            **kwargs,
        )
        gaps = sorted(b - a for a, b in zip(stamps[1:], stamps[2:], strict=False))  # warm-up left out
        per_step = gaps[len(gaps) // 2] if gaps else stamps[-1] - started
        # what a batch costs besides its steps (the parameterisation, the first step's set-up): a short run is
        # mostly this, so leaving it out undercounted 3-step sweeps several times over
        per_batch = max(0.0, stamps[-1] - started - len(stamps) * per_step) if stamps else 0.0
        seconds = 0.0
        for h, left in pending.items():
            batches_left = math.ceil(left / plan.batch_size)
            steps = batches_left * (recipe.total_steps * per_step + per_batch)
            seconds += (steps + left * per_reference) * _depth(model, h) / depth
        estimate["visualize"] = seconds / (accelerator.num_processes if accelerator is not None else 1)
    if "concepts" in estimate:
        estimate["concepts"] = estimate.pop("concepts")  # the stages' order
    return estimate


def _synced(model: HookedVisionModel) -> float:
    """The time once the device has finished its queued work (the loop itself never waits for a GPU)."""
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return time.perf_counter()


def describe(model: HookedVisionModel, plan: SweepPlan) -> list[str]:
    """The plan as lines for the terminal."""
    recipe = _recipe(plan)
    device = str(model.device)
    if model.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(model.device)})"
    lines = [
        f"sweep of {plan.model} into {plan.out} (atlas: {plan.site})",
        f"  neurons: {plan.n_neurons} in {len(plan.hooks)} hooks: "
        + ", ".join(f"{h} [{_span(plan.neurons[h])}]" for h in plan.hooks),
        f"  examples: top {plan.top_k} of {plan.images} images from {plan.dataset}, with heat maps",
        f"  visualize: recipe '{recipe.name}', {recipe.total_steps} steps, {plan.samples} sample(s), "
        f"{plan.batch_size} per batch"
        + (
            f", each neuron guided by its top {min(plan.top_k, recipe.guide_k)} examples"
            if plan.guided
            else ", unguided"
        ),
        "  words: "
        + (
            ", ".join(
                {"direct": f"direct lens over '{plan.vocab}'", "dissect": f"CLIP-Dissect on {plan.probe}"}[m]
                for m in plan.methods
            )
            or (
                "none (the direct lens reads mlp.hook_post neurons only; --probe DATASET adds CLIP-Dissect)"
                if model.is_clip
                else "none (the model has no text tower)"
            )
        )
        + (
            f"; no direct lens for {', '.join(plan.no_direct)} (its neurons have no fixed write direction)"
            if plan.no_direct and plan.vocab
            else ""
        ),
    ]
    if plan.estimate:
        total = sum(plan.estimate.values())
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in plan.estimate.items())
        lines.append(f"  estimate on {device}: about {_fmt(total)} ({parts}; measured on one batch)")
    else:
        lines.append(f"  estimate on {device}: nothing left to compute (a rerun of a finished sweep)")
    return lines


def _span(neurons: list[int]) -> str:
    if neurons == list(range(neurons[0], neurons[0] + len(neurons))):
        return f"{neurons[0]}:{neurons[-1] + 1}"
    return ",".join(map(str, neurons[:6])) + (" ..." if len(neurons) > 6 else "")


# ------------------------------------------------------------------------------------------------ running
class _Clock:
    """Rescales the estimate of the stages still ahead by how the finished ones compared with theirs."""

    def __init__(self, estimate: dict[str, float], echo):
        self.estimate, self.echo, self.ratio, self.done = dict(estimate), echo, 1.0, set()

    def finished(self, stage: str, seconds: float) -> None:
        guess = self.estimate.get(stage)
        if guess:
            self.ratio = max(0.05, seconds / guess)
        self.done.add(stage)
        rest = sum(v for k, v in self.estimate.items() if k not in self.done) * self.ratio
        tail = f"; about {_fmt(rest)} left" if rest >= 1 else ""
        self.echo(f"{stage}: {_fmt(seconds)}" + (f" (estimated {_fmt(guess)})" if guess else "") + tail)


def _methods(plan: SweepPlan, hook: str) -> list[str]:
    """The word methods for one hook: the direct lens reads MLP neurons only; CLIP-Dissect any activation."""
    return [m for m in plan.methods if m != "direct" or (hook.endswith("mlp.hook_post") and hook not in plan.no_direct)]


def _bar(total: int, desc: str, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def run_sweep(
    model: HookedVisionModel, plan: SweepPlan, *, progress: bool = True, accelerator=None, workers: int = 0, echo=print
):
    """Run every stage of ``plan`` (resuming finished work) and return the atlas folder."""
    from clipviz.model.hooked import identity_kept

    with identity_kept():  # the weights are hashed once for the whole run, not by each stage of each hook
        return _run_sweep(model, plan, progress=progress, accelerator=accelerator, workers=workers, echo=echo)


def _run_sweep(model: HookedVisionModel, plan: SweepPlan, *, progress, accelerator, workers, echo):
    from accelerate import Accelerator

    from clipviz.visualization.visualize import _precision

    out = Path(plan.out)
    paths = sweep_paths(out)
    if accelerator is None:
        accelerator = Accelerator(cpu=model.device.type == "cpu", mixed_precision=_precision("auto", model))
    model = model.to(accelerator.device)
    main = accelerator.is_main_process
    shown = progress and accelerator.is_local_main_process
    say = echo if main else (lambda *_: None)
    state = read_sweep_state(out)
    if main:
        state["plan"] = {**plan.settings(), "site": plan.site}
        write_sweep_state(out, state)
    clock = _Clock(plan.estimate, say)
    redone = False

    def record(unit: str) -> None:
        if main:
            state["done"][unit] = _unit_key(plan, unit)
            write_sweep_state(out, state)

    def finished(unit: str) -> bool:
        return state["done"].get(unit) == _unit_key(plan, unit)

    # 1. examples, with heat maps, and the thumbnails of every kept image
    from clipviz.data.sources import open_source

    started = time.perf_counter()
    source = open_source(plan.dataset)
    todo = [h for h in plan.hooks if not (finished(f"examples/{h}") and has_examples(paths["examples"], h))]
    keep = "dissect" in plan.methods and plan.probe == plan.dataset  # dissect reads the examples' probe matrix
    if todo:
        redone = True
        from clipviz.analysis.examples import mine_examples_resumable, write_thumbnails

        bar = _bar(len(todo) * plan.images, "examples", "img", shown)
        results = []
        for hook in todo:
            bar.set_description(f"examples {hook}")
            results.append(
                mine_examples_resumable(
                    model,
                    hook,
                    source,
                    paths["examples"],
                    neurons=plan.neurons[hook],
                    top_k=plan.top_k,
                    batch=64,
                    shard_size=plan.shard_size,
                    accelerator=accelerator,
                    progress=bar,
                    keep_activations=keep,
                    workers=workers,
                )
            )
            if main:
                write_thumbnails(source, results[-1], paths["examples"], skip_existing=True, model=model)
            accelerator.wait_for_everyone()
            record(f"examples/{hook}")
        bar.close()
        clock.finished("examples", time.perf_counter() - started)

    # 2. visualizations (visualize skips finished images by itself), guided by the examples of stage 1
    started = time.perf_counter()
    recipe = _recipe(plan)
    pending = {h: _pending_visualizations(plan, h) for h in plan.hooks}
    accelerator.wait_for_everyone()
    if any(pending.values()):
        redone = True
        from clipviz.visualization.visualize import visualize

        share = math.ceil(sum(pending.values()) / accelerator.num_processes)
        bar = _bar(share * recipe.total_steps, "visualize", "step", shown)
        for hook in plan.hooks:
            if pending[hook]:
                bar.set_description(f"visualize {hook}")
                visualize(
                    model,
                    hook,
                    plan.neurons[hook],
                    recipe=recipe,
                    seed=plan.seed,
                    samples=plan.samples,
                    batch_size=plan.batch_size,
                    out=paths["visualizations"],
                    guide=paths["examples"] if plan.guided else None,
                    progress=bar,
                    accelerator=accelerator,
                )
        bar.close()
        clock.finished("visualize", time.perf_counter() - started)

    # 3. words (main process: the direct lens reads weights only; dissect is one pass over the probe set)
    started = time.perf_counter()
    units = [(h, m) for h in plan.hooks for m in _methods(plan, h) if not finished(f"concepts-{m}/{h}")]
    if units and main:
        redone = True
        _words(model, plan, units, paths, record, shown)
        clock.finished("concepts", time.perf_counter() - started)
    accelerator.wait_for_everyone()

    # 4. the atlas, rebuilt when anything changed
    site = Path(plan.site)
    if main and (redone or not is_atlas(site) or not finished("atlas")):
        from clipviz.apps.atlas import build_atlas

        started = time.perf_counter()
        bar = _bar(1, "atlas", "site", shown)
        build_atlas(out, site, only=plan.neurons, visualizations=_planned(plan))
        bar.update(1)
        bar.close()
        record("atlas")
    accelerator.wait_for_everyone()
    return site


def _words(model: HookedVisionModel, plan: SweepPlan, units, paths, record, shown) -> None:
    from clipviz.analysis.concepts import (
        direct_lens,
        known_words_only,
        load_vocabulary,
        merge_same_text,
        parse_templates,
        text_embeddings,
        words_table,
        write_table,
    )

    with warnings.catch_warnings():  # read once more: what it warns of was said when the plan read it
        warnings.simplefilter("ignore")
        vocab = load_vocabulary(plan.vocab, parse_templates(plan.templates))
        vocab = merge_same_text(model, known_words_only(model, vocab))
    text = text_embeddings(model, vocab, progress=shown)
    bar = _bar(len(units), "concepts", "hook", shown)
    similarities = None
    for hook, method in units:
        bar.set_description(f"concepts {method} {hook}")
        neurons = plan.neurons[hook]
        if method == "direct":
            table = direct_lens(model, hook, neurons, vocab, top_k=plan.words, embeddings=text)
        else:
            from clipviz.analysis.dissect import (
                CEILING_TIE,
                image_text_similarities,
                labeller_a,
                layer_softwpmi,
                probe_activations,
                stored_activations,
            )
            from clipviz.data.sources import open_source

            source = open_source(plan.probe)
            width = model.hook_width(hook)
            if plan.probe == plan.dataset:
                stored = stored_activations(paths["examples"], hook, model=model)
                acts, kept, columns = stored.activations, stored.indices, list(stored.neurons)
                layer_top = stored.layer_top
            else:  # every neuron of the layer: the prior is the layer's, whichever neurons are named
                acts, kept = probe_activations(model, hook, source, None)
                columns, layer_top = list(range(width)), None
            if similarities is None or similarities[0] != kept:
                similarities = (kept, image_text_similarities(model, source, kept, text))
            scores = layer_softwpmi(
                acts, columns, list(neurons), width, similarities[1], a=labeller_a(model), layer_top=layer_top
            )
            table = words_table(scores, vocab.concepts, plan.words, neurons, tolerance=CEILING_TIE)
        write_table(paths["concepts"], hook, table, method=method, vocabulary=vocab, identity=model.identity())
        record(f"concepts-{method}/{hook}")
        bar.update(1)
    bar.close()
