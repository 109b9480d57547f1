"""Feature visualization at scale: many neurons (or prompts, or classes) per pass, across processes, resumable.

>>> import clipviz
>>> model = clipviz.load("world-clip")
>>> vis = visualize(model, hook="blocks.1.mlp.hook_post", neurons=[0, 1], recipe="vit-paper", steps=4, copies=2,
...                 progress=False)
>>> [v.meta["neuron"] for v in vis], vis[0].image.size
([0, 1], (64, 64))

Each result is a PIL image plus a metadata dict (model, hook, neuron, every recipe setting, seed, the objective at
the start and at the end, library versions). With ``out=DIR``, each is written as ``DIR/<group>/<key>.png`` with
a ``.json`` sidecar and a ``grid.png`` per group; a second run into the same folder skips finished work. A
data-guided or accentuated image has its kind in its name (``<key>.data-guided.png``, ``grid.accentuated.png``),
so the kinds of one neuron sit side by side in one folder instead of replacing each other.
A target's image depends only on (model, hook, target, recipe, seed, and for data-guided recipes or
accentuation the guide and the seed image): not on the batch it shares or on how many processes render.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from tqdm.auto import tqdm

from clipviz.errors import MAX_SAMPLES, MAX_SEED, ClipvizError, check_indices, check_int
from clipviz.images import grid, tensor_to_pil
from clipviz.model.trained_words import some_trained_words, untrained_words
from clipviz.results import (
    grid_path,
    read_png,
    read_visualization_meta,
    remove_old_style_copy,
    remove_stale_temporaries,
    settings_id,
    versions,
    visualization_kind,
    visualization_path,
    write_png,
    write_visualization,
)
from clipviz.visualization.guidance import Guide, default_recipe, prepare_guidance
from clipviz.visualization.objectives import ClassLogit, Neuron, Objective, TextDirection
from clipviz.visualization.optimise import RenderError, check_size, optimise
from clipviz.visualization.recipes import Recipe, get_recipe

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

_SAMPLE_STRIDE = 1_000_000_007  # sample s of a target is seeded s * stride past the first


@dataclass(frozen=True)
class Target:
    """One image to render: a neuron, a text prompt or a class."""

    kind: str  # neuron | text | class
    value: object  # neuron index, prompt or class index
    seed: int

    @property
    def group(self) -> str:
        return {"text": "text", "class": "class"}.get(self.kind, "")

    @property
    def key(self) -> str:
        if self.kind == "neuron":
            return f"neuron-{int(self.value):05d}"
        if self.kind == "class":
            return f"class-{int(self.value):05d}"
        slug = "".join(ch if ch.isalnum() else "-" for ch in str(self.value).lower()).strip("-")[:40]
        return f"text-{slug}-{zlib.crc32(str(self.value).encode()):08x}"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.value!r}"


@dataclass
class Visualization:
    image: Image.Image
    meta: dict
    path: Path | None = None


def make_targets(
    neurons: Sequence[int] = (), texts: Sequence[str] = (), classes: Sequence[int] = (), seed: int = 0, samples: int = 1
) -> list[Target]:
    """Targets with their seeds: ``seed + index`` for neurons and classes (the ViT paper seeds each run with the
    feature index), ``seed + crc32(prompt)`` for prompts; ``samples`` > 1 renders several images per target."""
    targets = []
    for s in range(samples):
        offset = seed + s * _SAMPLE_STRIDE
        targets += [Target("neuron", int(i), offset + int(i)) for i in neurons]
        targets += [Target("text", str(t), offset + zlib.crc32(str(t).encode())) for t in texts]
        targets += [Target("class", int(c), offset + int(c)) for c in classes]
    return targets


def _objective(model: HookedVisionModel, hook: str | None, reduce, batch: Sequence[Target]) -> Objective:
    kinds = {t.kind for t in batch}
    if len(kinds) != 1:
        raise ValueError("a batch mixes target kinds")
    kind = kinds.pop()
    if kind == "neuron":
        if hook is None:
            raise ClipvizError("neuron targets need a hook, e.g. --hook blocks.6.mlp.hook_post")
        return Neuron(hook, [t.value for t in batch], reduce)
    if kind == "text":
        return TextDirection.from_prompts(model, [t.value for t in batch])
    return ClassLogit([t.value for t in batch])


def check_request(
    model: HookedVisionModel, hook: str | None, neurons: Sequence[int], texts: Sequence[str], classes: Sequence[int]
):
    """Refuse what cannot be rendered before any work: neuron indices beyond the hook's width (counted, not
    expanded, for ranges), blank prompts or prompts for a model without a text tower, classes for a model that is
    not a classifier or beyond its classes, prompts with words a bundled text tower never learned. Returns
    ``(neurons, texts, classes)`` as lists."""
    if neurons is None:
        neurons = ()
    if hook is not None and not isinstance(hook, str):
        raise ClipvizError(f"a hook is a name such as 'blocks.6.mlp.hook_post', got {hook!r}")
    if isinstance(neurons, range) and not len(neurons):
        neurons = []
    elif not isinstance(neurons, range):
        neurons = check_indices(neurons)
    if neurons:
        if hook is None:
            raise ClipvizError("neuron targets need a hook, e.g. --hook blocks.6.mlp.hook_post")
        neurons = model.check_neurons(hook, neurons)
    texts = [texts] if isinstance(texts, str) else list(texts or ())
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise ClipvizError(f"a text prompt must be a non-blank phrase such as 'a red star', got {t!r}")
    twice = next((t for i, t in enumerate(texts) if t in texts[:i]), None)
    if twice is not None:
        raise ClipvizError(f"the prompt {twice!r} is given twice: each is rendered once")
    if texts and not model.is_clip:
        raise ClipvizError(f"text prompts need a CLIP-like model; '{model.spec}' has no text tower")
    if texts:
        model.tokenize(texts)  # a prompt longer than the text tower reads is refused now, before any step
        unknown = untrained_words(model, texts)
        if unknown:
            text, words = next(iter(unknown.items()))
            raise ClipvizError(
                f"the prompt {text!r} uses {', '.join(repr(w) for w in words)}, which {model.spec}'s text tower was "
                f"never trained on, so it has no meaning to render; it knows {some_trained_words(model)}"
            )
        with torch.no_grad():
            model.check_pooled_output()
    classes = [int(c) for c in classes or ()]
    twice = next((c for i, c in enumerate(classes) if c in classes[:i]), None)
    if twice is not None:
        raise ClipvizError(f"class {twice} is listed twice: each is rendered once")
    if classes:
        kind = model.backend.output_kind
        if kind != "logits":
            raise ClipvizError(
                f"classes need a classifier (a model whose output is class logits); '{model.spec}' outputs "
                f"{kind.replace('_', ' ')}s: render --neurons or --text instead"
            )
        with torch.no_grad():
            width = int(model.check_pooled_output().shape[-1])
        bad = next((c for c in classes if not 0 <= c < width), None)
        if bad is not None:
            raise ClipvizError(f"class index {bad} out of range: '{model.spec}' has {width} classes (0..{width - 1})")
    return list(neurons), texts, classes


_LOW_PRECISION_WEIGHTS = {torch.bfloat16: "bf16-weights", torch.float16: "fp16-weights"}


def _precision(precision: str, model) -> str:
    """accelerate's mixed-precision mode for ``precision`` on this model.

    A model loaded in bf16 or fp16 (``clipviz.load(..., dtype=torch.bfloat16)``, the CLI's default on a GPU) runs
    as it is, with no autocast: on an H100 that is 1.13x faster than bf16 autocast over fp32 weights
    (docs/benchmarks.md)."""
    accepted = {"auto", "fp32", "no", "bf16", "fp16", "bf16-weights", "fp16-weights"}
    if precision not in accepted:
        raise ClipvizError(
            f"unknown precision '{precision}'; accepted: auto, fp32, bf16, fp16, bf16-weights, fp16-weights"
        )
    weights = _LOW_PRECISION_WEIGHTS.get(model.dtype)
    if weights is not None:
        if precision not in ("auto", weights):
            raise ClipvizError(
                f"precision '{precision}' needs fp32 weights, but the model is loaded in {model.dtype}; "
                f"use '{weights}' or load it without a dtype"
            )
        return "no"
    if precision.endswith("-weights"):
        raise ClipvizError(
            f"precision '{precision}' needs the model loaded in that dtype "
            "(clipviz.load(..., dtype=torch.bfloat16)); this one is in float32"
        )
    if precision == "auto":
        return "bf16" if model.device.type == "cuda" else "no"
    return "no" if precision == "fp32" else precision


_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def _is_oom(error: BaseException) -> bool:
    """CUDA's and the CPU allocator's out-of-memory errors (``DefaultCPUAllocator: can't allocate memory``)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return any(w in text for w in _OOM_WORDS) or "defaultcpuallocator" in text


class Visualizations(list):
    """The results, in target order; ``skipped`` lists ``(target label, reason)`` of targets left out
    (``skip_nonfinite``); ``reused`` counts the results read back from ``out`` (finished by an earlier run with
    the same settings, weights and guide) rather than rendered."""

    skipped: list[tuple[str, str]]
    reused: int = 0


def visualize(
    model: HookedVisionModel,
    hook: str | None = None,
    neurons: Sequence[int] = (),
    *,
    texts: Sequence[str] = (),
    classes: Sequence[int] = (),
    recipe: str | Recipe | None = None,
    seed: int = 0,
    samples: int = 1,
    reduce: object = "patches",
    batch_size: int = 16,
    precision: str = "auto",
    out: str | Path | None = None,
    progress: bool | object = True,
    accelerator=None,
    skip_nonfinite: bool = False,
    guide: Guide | None = None,
    from_image: str | Path | torch.Tensor | None = None,
    **recipe_overrides,
) -> Visualizations:
    """Render one image per neuron / prompt / class; see the module docstring.

    ``recipe``: a name, a ``Recipe``, or ``None``: ``vital`` (data-guided) where reference images exist (``guide``
    given, or a bundled model's own), else ``default`` (``clipviz.visualization.guidance.default_recipe``).
    ``guide``: reference images of data-guided recipes (``vital``): a folder of images, ``world:<n>``, a dataset,
    a ``clipviz examples`` results folder, or ``{neuron: (k, 3, H, W) tensor}``; each neuron is guided by its own
    top examples in it (``clipviz.visualization.guidance``). ``from_image``: a path or a (3, H, W) tensor in
    [0, 1] to start every image from (feature accentuation; the ``accentuate`` recipe also keeps it close).

    A target whose loss stops being finite is an error that names it and the step (its batch-mates are rendered
    and kept first); with ``skip_nonfinite`` it is left out, listed in the result's ``skipped``, and the run goes
    on.

    ``progress``: a bar of optimisation steps (``True``), none (``False``), or a tqdm-like bar of the caller's
    that this call advances by one per image and step (and never closes).
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    recipe = get_recipe(default_recipe(model, guide) if recipe is None else recipe, **recipe_overrides)
    check_size(model, recipe.size)
    samples = check_int(samples, "samples", 1, MAX_SAMPLES)
    seed = check_int(seed, "seed", 0, MAX_SEED)
    batch_size = check_int(batch_size, "batch size", 1, None)
    neurons, texts, classes = check_request(model, hook, neurons, texts, classes)
    hook = model.hook_point(hook).name if neurons else hook  # one name per activation: blocks.00 is blocks.0
    targets = make_targets(neurons, texts, classes, seed=seed, samples=samples)
    if not targets:
        raise ClipvizError("nothing to visualize: give neurons, texts or classes")
    if accelerator is None:
        # The model's device decides: load it on the GPU (clipviz.load(..., device="cuda")) to render there.
        accelerator = Accelerator(cpu=model.device.type == "cpu", mixed_precision=_precision(precision, model))
    model = model.to(accelerator.device)
    guidance = prepare_guidance(model, hook, neurons, recipe, guide, from_image, reduce)
    out = Path(out) if out is not None else None
    if out is not None and accelerator.is_local_main_process:
        remove_stale_temporaries(out)
    base = {
        **model.identity(),  # the spec and a hash of the weights: new weights behind one spec are rendered anew
        "architecture": model.backend.architecture,
        "hook": hook,
        "reduce": reduce if isinstance(reduce, str) else list(reduce),
        "recipe": recipe.to_dict(),
        "precision": _LOW_PRECISION_WEIGHTS.get(model.dtype, accelerator.mixed_precision),
    }

    def settings(t: Target) -> dict:
        extra = guidance.settings_for(t.value if t.kind == "neuron" else None)
        # a prompt or class renders unguided, and whatever hook its request named: one record, one file
        own = {} if t.kind == "neuron" else {"recipe": recipe.unguided().to_dict(), "hook": None}
        return {**base, **own, **extra, "kind": t.kind, "target": t.value, "seed": t.seed}

    def path_of(t: Target) -> Path:
        kind = visualization_kind(settings(t))
        return visualization_path(out, t.group or hook, t.key, None if samples == 1 else t.seed, kind)

    def finished(t: Target) -> Visualization | None:
        """The target's finished result on disk, or ``None``: missing, other settings, or a truncated sidecar or
        unreadable PNG (a killed or corrupted run's leftovers are unfinished work)."""
        if out is None:
            return None
        meta = read_visualization_meta(path_of(t))
        if meta is None or meta.get("settings_id") != settings_id(settings(t)):
            return None
        image = read_png(path_of(t), meta.get("image_size"))
        return None if image is None else Visualization(image=image, meta=meta, path=path_of(t))

    done = {t: v for t in targets if (v := finished(t)) is not None}
    todo = [t for t in targets if t not in done]
    if accelerator.is_main_process:  # what a rerun keeps loses its old-layout duplicate too
        for v in done.values():
            remove_old_style_copy(v.path, visualization_kind(v.meta))
    accelerator.wait_for_everyone()  # every process must see the same to-do list before any of them writes
    rendered: list[tuple[Target, dict, torch.Tensor]] = []
    with accelerator.split_between_processes(todo) as mine:
        # The bar counts optimisation steps (one per image and step) and shows the batch's mean objective.
        external = not isinstance(progress, bool)
        bar = (
            progress
            if external
            else tqdm(
                total=len(mine) * recipe.total_steps,
                unit="step",
                desc="visualize",
                disable=not progress or not accelerator.is_local_main_process,
            )
        )
        size = batch_size
        queue = [list(mine[i : i + size]) for i in range(0, len(mine), size)]
        skipped: list[tuple[Target, str]] = []
        fatal: RenderError | None = None
        while queue:
            batch = queue.pop(0)
            kinds_split = _split_by_kind(batch)
            if len(kinds_split) > 1:
                queue = kinds_split + queue
                continue
            ticker = _Ticker(bar, len(batch))
            try:
                started = time.time()
                plain = _objective(model, hook, reduce, batch)
                neuron_ids = [t.value for t in batch] if batch[0].kind == "neuron" else None
                objective, init = guidance.apply(model, hook, reduce, len(batch), neuron_ids, plain)
                result = optimise(
                    model,
                    objective,
                    [t.seed for t in batch],
                    recipe,
                    autocast=accelerator.autocast,
                    on_step=ticker,
                    labels=[t.label for t in batch],
                    init=init,
                    report=plain,
                )
            except RenderError as error:
                bar.update(-ticker.counted)  # the batch-mates are rendered again without the bad target
                bad = batch[error.index]
                skipped.append((bad, str(error)))
                mates = batch[: error.index] + batch[error.index + 1 :]
                if not skip_nonfinite and fatal is None:
                    fatal, queue = error, []  # stop, but keep the batch-mates' work first
                if mates:  # an image does not depend on its batch: render the others again without it
                    queue = [mates] + queue
                continue
            except (RuntimeError, MemoryError) as error:
                if not _is_oom(error):
                    raise
                bar.update(-ticker.counted)  # the batch is done again, in halves
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if len(batch) == 1:
                    raise ClipvizError(
                        f"out of memory rendering one image of {recipe.copies} copies at "
                        f"{check_size(model, recipe.size)} px; use a smaller --size or fewer --copies"
                    ) from None
                size = max(1, len(batch) // 2)
                bar.write(f"out of memory with {len(batch)} images per batch; going on with {size}")
                queue = [batch[:size], batch[size:]] + queue
                continue
            seconds = time.time() - started
            for i, t in enumerate(batch):
                meta = {
                    **settings(t),
                    "settings_id": settings_id(settings(t)),
                    "objective_start": float(result.start[i]),
                    "objective_end": float(result.end[i]),
                    "image_size": list(result.images.shape[-2:]),
                    "batch_seconds": round(seconds, 3),
                    "versions": versions(),
                }
                if t.kind == "neuron":
                    meta["neuron"] = t.value
                if out is not None:
                    write_visualization(path_of(t), tensor_to_pil(result.images[i]), meta)
                else:
                    rendered.append((t, meta, result.images[i]))
        if not external:
            bar.close()
    if fatal is not None:
        kept = "; its batch-mates were rendered and kept" if len(skipped) < len(todo) else ""
        raise RenderError(f"{fatal}{kept} (--skip-nonfinite goes on without such targets)", fatal.index, fatal.label)
    accelerator.wait_for_everyone()
    results: dict[Target, Visualization] = dict(done)
    left_out = {t for t, _ in skipped}
    if out is not None:  # every process wrote its own results: read them all back from disk
        for t in todo:
            if (v := finished(t)) is not None:
                results[t] = v
    else:
        gathered = gather_object(rendered) if accelerator.num_processes > 1 else rendered
        for t, meta, image in gathered:
            results.setdefault(t, Visualization(image=tensor_to_pil(image), meta=meta))
    kept = [t for t in targets if t in results]
    ordered = Visualizations(results[t] for t in kept)
    ordered.skipped = [(t.label, why) for t, why in skipped]
    ordered.reused = sum(t in done for t in kept)
    missing = [t for t in targets if t not in results and t not in left_out]
    if missing:
        raise ClipvizError(f"{missing[0].label} was not rendered by any process")
    if out is not None and accelerator.is_main_process:
        for group, kind in {(t.group or hook, visualization_kind(settings(t))) for t in kept}:
            members = [t for t in kept if (t.group or hook) == group and visualization_kind(settings(t)) == kind]
            labels = [_grid_label(t, samples) for t in members]
            write_png(grid_path(out, group, kind), grid([results[t].image for t in members], labels=labels))
    return ordered


def _grid_label(t: Target, samples: int) -> str:
    """A grid tile's label: the neuron or class id (``#12``), or the prompt's first words; the seed when a target
    has several samples, its sample number."""
    label = f"#{t.value}" if t.kind != "text" else str(t.value)[:18]
    return label if samples == 1 else f"{label} s{t.seed // _SAMPLE_STRIDE}"


class _Ticker:
    """``optimise``'s ``on_step``: advance a bar by one step per image; show the batch's mean objective at most
    once a second (reading it waits for the device)."""

    def __init__(self, bar, images: int):
        self.bar, self.images, self.shown, self.counted = bar, images, 0.0, 0

    def __call__(self, step: int, values: torch.Tensor) -> None:
        self.bar.update(self.images)
        self.counted += self.images
        now = time.monotonic()
        if now - self.shown >= 1.0 and not getattr(self.bar, "disable", False):
            self.shown = now
            self.bar.set_postfix_str(f"objective {float(values.float().mean()):.3f}", refresh=False)


def _split_by_kind(batch: list[Target]) -> list[list[Target]]:
    kinds: dict[str, list[Target]] = {}
    for t in batch:
        kinds.setdefault(t.kind, []).append(t)
    return list(kinds.values())
