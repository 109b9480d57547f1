"""Dataset examples: the images (and patches) that excite each neuron most, in one pass over a dataset.

The images come from a ``clipviz.data`` source (a folder, a Hugging Face dataset or ``world:<n>``); images that
cannot be read are skipped and counted; every image is resized to the model's input size (the model's own
normalisation happens inside it).

>>> import clipviz
>>> from clipviz.data import open_source
>>> model = clipviz.load("world-clip")
>>> result = mine_examples(model, "blocks.3.mlp.hook_post", open_source("world:64"), neurons=[0, 1], top_k=4,
...                        progress=False)
>>> result.scores.shape, result.maps.shape
(torch.Size([2, 4]), torch.Size([2, 4, 8, 8]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from tqdm.auto import tqdm

from clipviz.analysis.dissect import TOP_K as LAYER_TOP
from clipviz.data.decoding import batches, parallel_batches
from clipviz.data.sources import Source, open_source
from clipviz.errors import MAX_WORKERS, ClipvizError, check_int
from clipviz.images import tensor_to_pil
from clipviz.model.layout import TokenLayout, patch_grid, reduce_tokens
from clipviz.results import (
    SHARDS_DIR,
    has_examples,
    read_examples,
    read_json,
    remove_stale_temporaries,
    settings_id,
    thumbnail_path,
    write_examples,
    write_json,
    write_png,
)

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

#: How an image's token activations become its score for a neuron.
MiningReduce = Literal["patches", "cls", "max"]


@dataclass
class ExampleResult:
    """Top-k images per neuron: ``scores`` and dataset ``indices`` (neurons, k), patch ``maps`` (neurons, k, gh, gw)."""

    hook: str
    neurons: list[int]
    scores: torch.Tensor
    indices: torch.Tensor
    maps: torch.Tensor
    reduce: str
    seen: int
    skipped: list[int]
    names: dict[int, str]
    captions: dict[int, str]
    # On request: every image's reduced activation (images, neurons), float16, rows in ``activation_indices`` order.
    activations: torch.Tensor | None = None
    activation_indices: torch.Tensor | None = None
    # With them, where the neurons are part of a layer: every neuron of the layer's top images by the patch mean
    # (width, ``LAYER_TOP``) dataset indices and their scores, best first (CLIP-Dissect's population prior).
    layer_top: torch.Tensor | None = None
    layer_top_scores: torch.Tensor | None = None
    # How the result was made: model, source, top_k, reduce (shown by the atlas next to the examples).
    settings: dict = field(default_factory=dict)

    def save(self, out: Path) -> None:
        tensors = {
            "neurons": torch.tensor(self.neurons),
            "scores": self.scores,
            "indices": self.indices,
            "maps": self.maps,
        }
        if self.activations is not None:
            tensors["activations"] = self.activations
            tensors["activation_indices"] = self.activation_indices
        if self.layer_top is not None:
            tensors["layer_top"] = self.layer_top
            tensors["layer_top_scores"] = self.layer_top_scores
        write_examples(
            Path(out),
            self.hook,
            tensors,
            {
                "hook": self.hook,
                "reduce": self.reduce,
                "seen": self.seen,
                "skipped": self.skipped,
                "names": self.names,
                "captions": self.captions,
                "settings": self.settings,
            },
        )

    @classmethod
    def load(cls, out: Path, hook: str) -> ExampleResult:
        t, meta = read_examples(Path(out), hook)
        return cls(
            hook=hook,
            neurons=t["neurons"].tolist(),
            scores=t["scores"],
            indices=t["indices"],
            maps=t["maps"],
            reduce=meta["reduce"],
            seen=meta["seen"],
            skipped=meta["skipped"],
            names={int(k): v for k, v in meta["names"].items()},
            captions={int(k): v for k, v in meta["captions"].items()},
            activations=t.get("activations"),
            activation_indices=t.get("activation_indices"),
            layer_top=t.get("layer_top"),
            layer_top_scores=t.get("layer_top_scores"),
            settings=meta.get("settings", {}),
        )


def _best(score: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """Columns of the ``k`` best per row, best first, ties broken by the smaller dataset index."""
    by_id = ids.argsort(dim=1, stable=True)
    order = score.gather(1, by_id).argsort(dim=1, descending=True, stable=True)[:, :k]
    return by_id.gather(1, order)


def _select(score: torch.Tensor, ids: torch.Tensor, maps: torch.Tensor, k: int):
    """The ``k`` best per row with their ids and maps: the same result in any merge order."""
    pick = _best(score, ids, k)
    return (
        score.gather(1, pick),
        ids.gather(1, pick),
        maps.gather(1, pick[..., None, None].expand(-1, -1, *maps.shape[-2:])),
    )


@torch.no_grad()
def check_token_activations(model: HookedVisionModel, hook: str, layout: TokenLayout) -> None:
    """Refuse, before any image is read, a hook whose activation is not ``(batch, tokens, neurons)`` with the
    layout's tokens (attention patterns, convolution maps, pooled outputs): its numbers are not tokens of neurons.
    One forward pass of a blank image tells."""
    name = model.hook_point(hook).name
    _, cache = model.run_with_cache(torch.zeros(1, 3, *model.image_size, device=model.device), [name])
    shape = tuple(cache[name].shape)
    if len(shape) != 3 or shape[1] != layout.n_tokens:
        raise ClipvizError(
            f"examples rank images by a neuron's activation over the {layout.n_tokens} tokens, (batch, tokens, "
            f"neurons); hook '{hook}' gives {shape}: use a hook such as blocks.0.mlp.hook_post or hook_resid_post"
        )


class LayerTop:
    """Per neuron of a whole layer, the ``k`` best images seen so far by one score per image (no maps): what
    CLIP-Dissect's population prior needs of the neurons that are not mined."""

    def __init__(self, k: int):
        self.k = k
        self.scores: torch.Tensor | None = None  # (neurons, k)
        self.indices: torch.Tensor | None = None  # (neurons, k) dataset indices

    def update(self, scores: torch.Tensor, ids: torch.Tensor) -> None:
        """Take in ``scores`` (neurons, B) of the images ``ids`` (neurons, B)."""
        if self.scores is not None:
            scores, ids = torch.cat([self.scores, scores], 1), torch.cat([self.indices, ids], 1)
        pick = _best(scores, ids, self.k)
        self.scores, self.indices = scores.gather(1, pick), ids.gather(1, pick)


class RunningTopK:
    """Per neuron, the ``k`` best images seen so far by a reduced activation, with their patch maps.

    It lives on the activations' device: each batch's own top-k is taken first, so only ``k`` maps per neuron are
    ever gathered, and nothing returns to the host until the caller asks.
    """

    def __init__(self, k: int, layout: TokenLayout, reduce: MiningReduce = "patches"):
        self.k, self.layout, self.reduce = k, layout, reduce
        self.scores: torch.Tensor | None = None  # (neurons, k)
        self.indices: torch.Tensor | None = None  # (neurons, k) dataset indices
        self.maps: torch.Tensor | None = None  # (neurons, k, gh, gw)

    def update(self, act: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
        """Take in activations ``(B, tokens, neurons)`` of the images ``ids``; returns their scores ``(B, neurons)``."""
        reduced = reduce_tokens(act, self.reduce, self.layout, dim=1)  # (B, neurons)
        patches = patch_grid(act, self.layout).flatten(1, 2)  # (B, P, neurons)
        score = reduced.T  # (neurons, B)
        idx = torch.tensor(list(ids), device=score.device).expand(score.shape[0], -1)
        pick = _best(score, idx, self.k)
        score, idx = score.gather(1, pick), idx.gather(1, pick)
        maps = patches.permute(2, 0, 1).gather(1, pick[..., None].expand(-1, -1, patches.shape[1]))
        maps = maps.reshape(*pick.shape, *self.layout.grid)
        if self.scores is not None:
            score = torch.cat([self.scores, score], 1)
            idx = torch.cat([self.indices, idx], 1)
            maps = torch.cat([self.maps, maps], 1)
        self.scores, self.indices, self.maps = _select(score, idx, maps, self.k)
        return reduced


# Captions of seen images are pruned to those still in a top-k list once this many pile up (pruning reads the
# top-k indices back from the device, so it is not done every batch).
_CAPTIONS_KEPT = 50_000


def _kept(captions: dict[int, str], top_idx: torch.Tensor) -> dict[int, str]:
    kept = set(top_idx.flatten().tolist())
    return {i: c for i, c in captions.items() if i in kept}


def check_mining(
    source: Source,
    top_k: int,
    batch: int,
    workers: int,
    shard_size: int = 1,
    at_most_the_data: bool = False,
    reduce: str = "patches",
) -> None:
    """Refuse bad choices before any image is read: ``top_k``, ``batch`` and ``shard_size`` at least 1, ``workers``
    at least 0, a known ``reduce``; with ``at_most_the_data`` (the CLI) also a ``top_k`` larger than the dataset
    (the library keeps what there is)."""
    if reduce not in ("patches", "cls", "max"):
        raise ClipvizError(f"unknown reduction '{reduce}'; accepted: patches, cls, max")
    check_int(batch, "batch size", 1, None)
    check_int(workers, "workers", 0, MAX_WORKERS)
    check_int(shard_size, "shard size", 1, None)
    top_k = check_int(top_k, "top-k", 1, None)
    if at_most_the_data and source.length and top_k > source.length:
        raise ClipvizError(larger_than_the_data(source, f"top-k {top_k}"))


def larger_than_the_data(source: Source, asked: str) -> str:
    """The message for a top-k larger than a small dataset, which reads it (it is smaller than the top-k) to count the
    images that open: a folder of files that are all unreadable is said to be that, not to be too small."""
    readable = sum(image is not None for _, image, _ in source)
    if not readable:
        return f"no examples from '{source.name}': it has no readable images (none of its {source.length} files opens)"
    unread = f", {source.length - readable} of them unreadable" if readable < source.length else ""
    return (
        f"{asked} is larger than the dataset '{source.name}' ({source.length} images{unread}): use at most {readable}"
    )


@torch.no_grad()
def mine_examples(
    model: HookedVisionModel,
    hook: str,
    source: Source,
    *,
    neurons: Sequence[int] | None = None,
    top_k: int = 16,
    reduce: MiningReduce = "patches",
    batch: int = 64,
    progress: bool | object = True,
    span: tuple[int, int] | None = None,
    keep_activations: bool = False,
    workers: int = 0,
    identity: dict | None = None,
) -> ExampleResult:
    """One pass over ``source`` keeping, per neuron, the ``top_k`` images by the reduced activation (``patches``:
    mean over patch tokens, ``cls``, ``max``: max over patches) with their patch activation maps; with
    ``keep_activations`` also every image's reduced activation (float16), e.g. as a CLIP-Dissect probe matrix.
    ``workers`` > 0 decodes and resizes images in that many processes (sources of known length), so that the
    model, not the loader, sets the pace; the result is the same. ``identity``: ``model.identity()`` where the
    caller has it already (a run of many shards hashes the weights once), recorded in the result's settings."""
    if isinstance(source, (str, Path)):
        source = open_source(str(source))
    check_mining(source, top_k, batch, workers, reduce=reduce)
    point = model.hook_point(hook)
    hook = point.name  # one name per activation: blocks.00 is blocks.0
    layout = model.hook_layout(hook)
    check_token_activations(model, hook, layout)
    neurons = list(range(model.hook_width(hook))) if neurons is None else model.check_neurons(hook, neurons)
    every_neuron = neurons == list(range(model.hook_width(hook)))
    top = RunningTopK(top_k, layout, reduce)
    # the layer's other neurons, for CLIP-Dissect's prior: only where a probe matrix of part of a layer is kept
    layer = LayerTop(LAYER_TOP) if keep_activations and reduce == "patches" and not every_neuron else None
    skipped: list[int] = []
    seen = 0
    all_rows: list[torch.Tensor] = []
    all_ids: list[int] = []
    captions: dict[int, str] = {}
    total = source.length if span is None else span[1] - span[0]
    external = not isinstance(progress, bool)  # a caller's bar (e.g. one for all shards): advanced, never closed
    bar = progress if external else tqdm(total=total or None, unit="img", desc="examples", disable=not progress)
    if workers and source.length:
        stream = parallel_batches(source, span or (0, source.length), model.preprocess_pil, batch, workers, skipped)
    else:
        stream = batches(source if span is None else source.range(*span), model.preprocess_pil, batch, skipped)
    for images, idx, caps in stream:
        _, cache = model.run_with_cache(images, [point.name])
        act = cache[point.name].float()  # (B, N, d)
        if layer is not None:
            whole = reduce_tokens(act, "patches", layout, dim=1).T  # (width, B)
            layer.update(whole, torch.tensor(list(idx), device=whole.device).expand(whole.shape[0], -1))
        if not every_neuron:  # indexing copies: skip it when every neuron is kept
            act = act[..., neurons]
        score = top.update(act, idx)
        if keep_activations:
            all_rows.append(score.half().cpu())
            all_ids += idx
        for i, c in zip(idx, caps, strict=True):
            if c is not None:
                captions[i] = c
        if len(captions) > _CAPTIONS_KEPT:  # forget the captions of images that left every top-k list
            captions = _kept(captions, top.indices)
        seen += len(idx)
        bar.update(len(idx))
    if not external:
        bar.close()
    if top.scores is None:
        what = f"all {len(skipped)} images were unreadable" if skipped else "it has no images"
        raise ClipvizError(f"no examples from '{source.name}': {what}")
    top_scores, top_idx, top_maps = top.scores.cpu(), top.indices.cpu(), top.maps.cpu()
    names = {i: source.describe[i] for i in set(top_idx.flatten().tolist()) if i < len(source.describe)}
    return ExampleResult(
        hook=hook,
        neurons=list(neurons),
        scores=top_scores,
        indices=top_idx,
        maps=top_maps,
        reduce=reduce,
        seen=seen,
        skipped=skipped,
        names=names,
        captions=_kept(captions, top_idx),
        activations=torch.cat(all_rows) if keep_activations else None,
        activation_indices=torch.tensor(all_ids) if keep_activations else None,
        layer_top=layer.indices.cpu() if layer is not None else None,
        layer_top_scores=layer.scores.cpu() if layer is not None else None,
        settings={
            **(identity or model.identity()),
            "source": source.name,
            "source_location": source.location,  # reopened from there, whatever the working folder
            "source_identity": source.identity,
            "source_options": source.options,
            "top_k": top_k,
            "reduce": reduce,
        },
    )


def write_thumbnails(
    source: Source,
    result: ExampleResult | Sequence[ExampleResult],
    out: Path,
    size: int = 96,
    skip_existing: bool = False,
    model=None,
) -> None:
    """Small PNGs of every kept image of one or several results (of one source), ``thumbnail_path``, for the atlas
    and the demo; with ``skip_existing`` a thumbnail already there is kept, and the source is not read when all
    are. With ``model``, each thumbnail is what the model saw (its own resize + centre crop), so the patch maps
    line up."""
    results = [result] if isinstance(result, ExampleResult) else list(result)
    settings = results[0].settings
    wanted = {i for r in results for i in r.indices.flatten().tolist()}
    if skip_existing:
        wanted = {i for i in wanted if not thumbnail_path(out, i, settings).is_file()}
    if not wanted:
        return
    for i, img, _ in source.range(min(wanted), max(wanted) + 1) if hasattr(source, "range") else source:
        if i in wanted and img is not None:
            thumb = tensor_to_pil(model.preprocess_pil(img)) if model is not None else img.copy()
            thumb.thumbnail((size, size))
            write_png(thumbnail_path(out, i, settings), thumb)


def merge(results: Sequence[ExampleResult], top_k: int) -> ExampleResult:
    """Exact top-k over the union of several results (shards of one dataset, same hook and neurons)."""
    first = results[0]
    top_scores, top_idx, top_maps = _select(
        torch.cat([r.scores for r in results], 1),
        torch.cat([r.indices for r in results], 1),
        torch.cat([r.maps for r in results], 1),
        top_k,
    )
    kept = set(top_idx.flatten().tolist())
    names = {i: n for r in results for i, n in r.names.items() if i in kept}
    captions = {i: c for r in results for i, c in r.captions.items() if i in kept}
    activations = activation_indices = None
    if all(r.activations is not None for r in results):
        activation_indices = torch.cat([r.activation_indices for r in results])
        order = activation_indices.argsort()
        activations = torch.cat([r.activations for r in results])[order]
        activation_indices = activation_indices[order]
    layer_top = layer_top_scores = None
    if all(r.layer_top is not None for r in results):
        layer = LayerTop(LAYER_TOP)
        for r in results:
            layer.update(r.layer_top_scores, r.layer_top)
        layer_top, layer_top_scores = layer.indices, layer.scores
    return ExampleResult(
        hook=first.hook,
        neurons=first.neurons,
        scores=top_scores,
        indices=top_idx,
        maps=top_maps,
        reduce=first.reduce,
        seen=sum(r.seen for r in results),
        skipped=sorted(i for r in results for i in r.skipped),
        names=names,
        captions=captions,
        activations=activations,
        activation_indices=activation_indices,
        layer_top=layer_top,
        layer_top_scores=layer_top_scores,
        settings=first.settings,
    )


def mine_examples_resumable(
    model: HookedVisionModel,
    hook: str,
    source: Source,
    out: Path,
    *,
    neurons: Sequence[int] | None = None,
    top_k: int = 16,
    reduce: MiningReduce = "patches",
    batch: int = 64,
    shard_size: int = 1024,
    accelerator=None,
    progress: bool | object = True,
    keep_activations: bool = False,
    workers: int = 0,
) -> ExampleResult:
    """``mine_examples`` in shards of ``shard_size`` images, each saved when done: a killed run started again
    redoes only unfinished shards, processes (``accelerate``) take shards in turn, and the merge is exact."""
    if not source.length:
        raise ClipvizError(
            f"resumable runs need a dataset of known length; '{source.name}' has none (use a "
            "folder, a saved dataset or a non-streaming split)"
        )
    check_mining(source, top_k, batch, workers, shard_size=shard_size, reduce=reduce)
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator(cpu=model.device.type == "cpu")
    model = model.to(accelerator.device)
    hook = model.hook_point(hook).name  # an unknown hook is a one-line error before any bar is drawn
    check_token_activations(model, hook, model.hook_layout(hook))
    if neurons is not None:
        neurons = model.check_neurons(hook, neurons)
    identity = model.identity()
    key = settings_id(
        {
            **identity,
            "hook": hook,
            "neurons": list(neurons) if neurons is not None else None,
            "top_k": top_k,
            "reduce": reduce,
            "source": source.identity,
            "n": source.length,
            "shard_size": shard_size,
            "activations": keep_activations,
        }
    )
    folder = Path(out) / SHARDS_DIR / key
    n_shards = -(-source.length // shard_size)
    if accelerator.is_local_main_process:
        remove_stale_temporaries(Path(out))
    parts: dict[int, ExampleResult] = {}

    def done(s: int) -> bool:
        """A shard is done when its files read back whole; a truncated or corrupt one is unfinished work."""
        if read_json(folder / f"{s:05d}.empty.json") is not None:
            return True
        if not has_examples(folder / f"{s:05d}", hook):
            return False
        try:
            part = ExampleResult.load(folder / f"{s:05d}", hook)
        except (OSError, KeyError, ValueError, TypeError):
            return False
        if part.neurons != (list(neurons) if neurons is not None else part.neurons):
            return False
        parts[s] = part
        return True

    todo = [s for s in range(n_shards) if not done(s)]
    accelerator.wait_for_everyone()  # every process sees the same to-do list before any shard is written
    mine = todo[accelerator.process_index :: accelerator.num_processes]
    spans = {s: (s * shard_size, min((s + 1) * shard_size, source.length)) for s in mine}
    bar = progress  # one bar over this process's unfinished shards, not one restarting per shard
    if progress is True:
        left = sum(hi - lo for lo, hi in spans.values())
        bar = tqdm(total=left, unit="img", desc=f"examples ({len(mine)} of {n_shards} shards)")
    try:
        for s, span in spans.items():
            try:
                part = mine_examples(
                    model,
                    hook,
                    source,
                    neurons=neurons,
                    top_k=top_k,
                    reduce=reduce,
                    batch=batch,
                    progress=bar,
                    span=span,
                    keep_activations=keep_activations,
                    workers=workers,
                    identity=identity,
                )
            except ClipvizError as error:
                if "no examples" not in str(error):
                    raise
                # No readable image in the shard: every index of its span was skipped.
                write_json(folder / f"{s:05d}.empty.json", {"span": list(span), "skipped": list(range(*span))})
                continue
            part.save(folder / f"{s:05d}")
            parts[s] = part
    finally:
        if progress is True:
            bar.close()
    accelerator.wait_for_everyone()
    for s in range(n_shards):  # the other processes' shards
        if s not in parts and has_examples(folder / f"{s:05d}", hook):
            parts[s] = ExampleResult.load(folder / f"{s:05d}", hook)
    if not parts:
        raise ClipvizError(f"no examples from '{source.name}': it has no readable images")
    result = merge([parts[s] for s in sorted(parts)], top_k)
    for empty in sorted(folder.glob("*.empty.json")):
        marker = read_json(empty) or {}
        result.skipped += marker.get("skipped", list(range(*marker.get("span", (0, 0)))))
    result.skipped.sort()
    if accelerator.is_main_process:
        result.save(Path(out))
    return result
