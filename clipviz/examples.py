"""Dataset examples: the images (and patches) that excite each neuron most, in one pass over a dataset.

Sources: a folder of images (recursively), a Hugging Face dataset id or ``imagefolder`` directory (``datasets``),
or ``world:<n>`` (a held-out sample of the bundled synthetic world). Images that cannot be read are skipped and
counted; grayscale, RGBA, CMYK and palette images are converted to RGB; every image is resized to the model's
input size (the model's own normalisation happens inside it).

>>> import clipviz
>>> model = clipviz.load("world-clip")
>>> result = mine_examples(model, "blocks.3.mlp.hook_post", open_source("world:64"), neurons=[0, 1], top_k=4,
...                        progress=False)
>>> result.scores.shape, result.maps.shape
(torch.Size([2, 4]), torch.Size([2, 4, 8, 8]))
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .errors import ClipvizError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Source:
    """A stream of (index, PIL image or None if unreadable, caption or None) with a length and names."""

    name: str
    length: int
    items: object  # callable (lo, hi) returning an iterator over indices lo..hi-1 (hi None: to the end)
    describe: list[str] = field(default_factory=list)  # a name per index (file path or dataset row)

    def __iter__(self) -> Iterator[tuple[int, Image.Image | None, str | None]]:
        return self.items(0, None)

    def range(self, lo: int, hi: int) -> Iterator[tuple[int, Image.Image | None, str | None]]:
        """The items with index in [lo, hi), reading only those."""
        return self.items(lo, hi)


def _read(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def open_source(
    spec: str,
    *,
    split: str = "train",
    image_column: str | None = None,
    caption_column: str | None = None,
    streaming: bool = False,
) -> Source:
    """A folder, ``world:<n>``, or a Hugging Face dataset (id or local ``imagefolder``)."""
    if spec.startswith("world:"):
        from .world import generate

        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise ClipvizError(f"bad dataset '{spec}': use world:<number of images>") from None
        from .groundtruth import HELDOUT_SEED

        batch = generate(n, seed=HELDOUT_SEED + 7)

        def world_items(lo=0, hi=None):
            for i in range(lo, n if hi is None else min(hi, n)):
                yield i, Image.fromarray(batch.images[i]), batch.captions[i]

        return Source(spec, n, world_items, [f"world #{i}" for i in range(n)])
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "dataset_info.json").is_file():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ClipvizError(f"no images in '{spec}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")

        def folder_items(lo=0, hi=None):
            for i in range(lo, len(files) if hi is None else min(hi, len(files))):
                yield i, _read(files[i]), None

        return Source(spec, len(files), folder_items, [str(p.relative_to(path)) for p in files])
    return _hf_source(spec, split, image_column, caption_column, streaming)


def _hf_source(spec: str, split: str, image_column: str | None, caption_column: str | None, streaming: bool) -> Source:
    import datasets

    from .backends.hub import fetching

    local = Path(spec).expanduser()
    if local.is_dir() and ((local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file()):
        ds = datasets.load_from_disk(str(local))  # saved with Dataset.save_to_disk
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ClipvizError(f"dataset '{spec}' has no split '{split}'; splits: {', '.join(ds)}")
            ds = ds[split]
        streaming = False
    else:
        ds = fetching(spec, lambda: datasets.load_dataset(spec, split=split, streaming=streaming))
    features = ds.features or {}
    if image_column is None:
        image_column = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
    if image_column is None or image_column not in features:
        raise ClipvizError(
            f"dataset '{spec}' has no image column{f' named {image_column!r}' if image_column else ''}"
            f"; columns: {', '.join(features)}"
        )
    if caption_column is None:
        caption_column = next((k for k in ("caption", "text", "label") if k in features), None)
    if streaming:
        splits = ds.info.splits or {}
        length = splits[split].num_examples if split in splits else None
    else:
        length = len(ds)
    if length == 0:
        raise ClipvizError(f"dataset '{spec}' split '{split}' is empty")

    def rows(lo=0, hi=None):
        if streaming:
            part = ds.skip(lo) if lo else ds
            part = part.take(hi - lo) if hi is not None else part
        else:
            part = ds.select(range(lo, len(ds) if hi is None else min(hi, len(ds))))
        for i, row in enumerate(part, start=lo):
            img = row[image_column]
            try:
                img = img.convert("RGB") if img is not None else None
            except (OSError, ValueError):
                img = None
            cap = row.get(caption_column) if caption_column else None
            if hasattr(features.get(caption_column), "int2str") and isinstance(cap, int):
                cap = features[caption_column].int2str(cap)
            yield i, img, (str(cap) if cap is not None else None)

    return Source(spec, length or 0, rows, [])


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
    # How the result was made: model, source, top_k, reduce (shown by the atlas next to the examples).
    settings: dict = field(default_factory=dict)

    def save(self, out: Path) -> None:
        from safetensors.torch import save_file

        from .artifacts import _atomic, write_json

        folder = out / self.hook
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "neurons": torch.tensor(self.neurons),
            "scores": self.scores.contiguous(),
            "indices": self.indices.contiguous(),
            "maps": self.maps.contiguous(),
        }
        if self.activations is not None:
            tensors["activations"] = self.activations.contiguous()
            tensors["activation_indices"] = self.activation_indices.contiguous()
        _atomic(folder / "examples.safetensors", lambda tmp: save_file(tensors, tmp))
        write_json(
            folder / "examples.json",
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
        from safetensors.torch import load_file

        t = load_file(str(out / hook / "examples.safetensors"))
        meta = json.loads((out / hook / "examples.json").read_text())
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


def model_input(model):
    """What turns a PIL image into this model's input: its backend's own resize + centre crop (``preprocess_pil``),
    or, for objects without one, a size to resize to."""
    return getattr(model, "preprocess_pil", None) or model.image_size


def _to_tensor(img: Image.Image, size) -> torch.Tensor:
    """A (3, H, W) tensor in [0, 1]: ``size`` is the model's own ``preprocess_pil`` or an (H, W) to resize to."""
    if callable(size):
        return size(img)
    array = np.asarray(img.resize((size[1], size[0]), Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _batches(source, size: tuple[int, int], batch: int, skipped: list[int]):
    buf, idx, caps = [], [], []
    for i, img, cap in source:
        if img is None:
            skipped.append(i)
            continue
        buf.append(_to_tensor(img, size))
        idx.append(i)
        caps.append(cap)
        if len(buf) == batch:
            yield torch.stack(buf), idx, caps
            buf, idx, caps = [], [], []
    if buf:
        yield torch.stack(buf), idx, caps


class _DecodedChunks(torch.utils.data.IterableDataset):
    """Chunks of ``batch`` consecutive indices, decoded and resized; chunk ``c`` goes to worker ``c % workers``, so
    the loader's round-robin returns them in index order."""

    def __init__(self, source: Source, lo: int, hi: int, size: tuple[int, int], batch: int):
        self.source, self.lo, self.hi, self.size, self.batch = source, lo, hi, size, batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for c, start in enumerate(range(self.lo, self.hi, self.batch)):
            if c % workers != worker:
                continue
            images, idx, caps, bad = [], [], [], []
            for i, img, cap in self.source.range(start, min(start + self.batch, self.hi)):
                if img is None:
                    bad.append(i)
                    continue
                images.append(_to_tensor(img, self.size))
                idx.append(i)
                caps.append(cap)
            yield (torch.stack(images) if images else None), idx, caps, bad


def _parallel_batches(
    source: Source, span: tuple[int, int], size: tuple[int, int], batch: int, workers: int, skipped: list[int]
):
    """``_batches`` with decoding and resizing in ``workers`` processes (forked: sources need not pickle)."""
    import multiprocessing

    loader = torch.utils.data.DataLoader(
        _DecodedChunks(source, *span, size, batch),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4,
        multiprocessing_context="fork" if "fork" in multiprocessing.get_all_start_methods() else None,
    )
    for images, idx, caps, bad in loader:
        skipped += bad
        if images is not None:
            yield images, idx, caps


class RunningTopK:
    """Per neuron, the ``k`` best images seen so far by a reduced activation, with their patch maps.

    It lives on the activations' device: each batch's own top-k is taken first, so only ``k`` maps per neuron are
    ever gathered, and nothing returns to the host until the caller asks.
    """

    def __init__(self, k: int, layout, reduce: str = "patches"):
        self.k, self.layout, self.reduce = k, layout, reduce
        self.scores: torch.Tensor | None = None  # (neurons, k)
        self.indices: torch.Tensor | None = None  # (neurons, k) dataset indices
        self.maps: torch.Tensor | None = None  # (neurons, k, gh, gw)

    def update(self, act: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
        """Take in activations ``(B, tokens, neurons)`` of the images ``ids``; returns their scores ``(B, neurons)``."""
        if act.shape[1] != self.layout.n_tokens:
            raise ClipvizError(
                f"this activation has {act.shape[1]} tokens but its layout has "
                f"{self.layout.n_tokens}: mine a block hook (blocks.<i>.<point>)"
            )
        patches = act[:, self.layout.patches]  # (B, P, neurons)
        if self.reduce == "patches":
            reduced = patches.mean(1)
        elif self.reduce == "max":
            reduced = patches.amax(1)
        else:
            reduced = act[:, self.layout.prefix.index("cls")]
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


@torch.no_grad()
def mine_examples(
    model,
    hook: str,
    source: Source,
    *,
    neurons: Sequence[int] | None = None,
    top_k: int = 16,
    reduce: str = "patches",
    batch: int = 64,
    progress: bool = True,
    span: tuple[int, int] | None = None,
    keep_activations: bool = False,
    workers: int = 0,
) -> ExampleResult:
    """One pass over ``source`` keeping, per neuron, the ``top_k`` images by the reduced activation (``patches``:
    mean over patch tokens, ``cls``, ``max``: max over patches) with their patch activation maps; with
    ``keep_activations`` also every image's reduced activation (float16), e.g. as a CLIP-Dissect probe matrix.
    ``workers`` > 0 decodes and resizes images in that many processes (sources of known length), so that the
    model, not the loader, sets the pace; the result is the same."""
    if reduce not in ("patches", "cls", "max"):
        raise ClipvizError(f"unknown reduction '{reduce}'; accepted: patches, cls, max")
    point = model.hook_point(hook)
    layout = model.layout_of(hook)
    top = RunningTopK(top_k, layout, reduce)
    width = None
    skipped: list[int] = []
    seen = 0
    all_rows: list[torch.Tensor] = []
    all_ids: list[int] = []
    captions: dict[int, str] = {}
    total = source.length if span is None else span[1] - span[0]
    bar = tqdm(total=total or None, unit="img", desc="examples", disable=not progress)
    if workers < 0:
        raise ClipvizError(f"workers must be >= 0, got {workers}")
    if workers and source.length:
        batches = _parallel_batches(source, span or (0, source.length), model_input(model), batch, workers, skipped)
    else:
        batches = _batches(source if span is None else source.range(*span), model_input(model), batch, skipped)
    for images, idx, caps in batches:
        _, cache = model.run_with_cache(images, [point.name])
        act = cache[point.name].float()  # (B, N, d)
        if width is None:
            width = act.shape[-1]
            neurons = list(range(width)) if neurons is None else list(neurons)
            bad = [n for n in neurons if not 0 <= n < width]
            if bad:
                raise ClipvizError(
                    f"neuron index {bad[0]} out of range for hook '{hook}': it has {width} neurons (0..{width - 1})"
                )
        if neurons != list(range(width)):  # indexing copies: skip it when every neuron is kept
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
        settings={"model": model.spec, "source": source.name, "top_k": top_k, "reduce": reduce},
    )


def write_thumbnails(source: Source, result: ExampleResult, out: Path, size: int = 96, model=None) -> None:
    """Small PNGs of every kept image, ``out/thumbs/<index>.png``, for the atlas and the demo. With ``model``, each
    thumbnail is what the model saw (its own resize + centre crop), so the patch maps line up with it."""
    from .artifacts import write_png

    wanted = set(result.indices.flatten().tolist())
    for i, img, _ in source:
        if i in wanted and img is not None:
            if model is not None and hasattr(model, "preprocess_pil"):
                seen = (model.preprocess_pil(img).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
                img = Image.fromarray(seen.astype(np.uint8))
            thumb = img.copy()
            thumb.thumbnail((size, size))
            write_png(out / "thumbs" / f"{i}.png", thumb)


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
        settings=first.settings,
    )


def mine_examples_resumable(
    model,
    hook: str,
    source: Source,
    out: Path,
    *,
    neurons: Sequence[int] | None = None,
    top_k: int = 16,
    reduce: str = "patches",
    batch: int = 64,
    shard_size: int = 1024,
    accelerator=None,
    progress: bool = True,
    keep_activations: bool = False,
    workers: int = 0,
) -> ExampleResult:
    """``mine_examples`` in shards of ``shard_size`` images, each saved when done: a killed run started again
    redoes only unfinished shards, processes (``accelerate``) take shards in turn, and the merge is exact."""
    from .artifacts import settings_id, write_json

    if not source.length:
        raise ClipvizError(
            f"resumable runs need a dataset of known length; '{source.name}' has none (use a "
            "folder, a saved dataset or a non-streaming split)"
        )
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator(cpu=model.device.type == "cpu")
    model = model.to(accelerator.device)
    key = settings_id(
        {
            "model": model.spec,
            "hook": hook,
            "neurons": list(neurons) if neurons is not None else None,
            "top_k": top_k,
            "reduce": reduce,
            "source": source.name,
            "n": source.length,
            "shard_size": shard_size,
            "activations": keep_activations,
        }
    )
    folder = Path(out) / "shards" / key
    n_shards = -(-source.length // shard_size)

    def done(s: int) -> bool:
        return (folder / f"{s:05d}" / hook / "examples.json").is_file() or (folder / f"{s:05d}.empty.json").is_file()

    todo = [s for s in range(n_shards) if not done(s)]
    accelerator.wait_for_everyone()  # every process sees the same to-do list before any shard is written
    for s in todo[accelerator.process_index :: accelerator.num_processes]:
        span = (s * shard_size, min((s + 1) * shard_size, source.length))
        try:
            part = mine_examples(
                model,
                hook,
                source,
                neurons=neurons,
                top_k=top_k,
                reduce=reduce,
                batch=batch,
                progress=progress,
                span=span,
                keep_activations=keep_activations,
                workers=workers,
            )
        except ClipvizError as error:
            if "no examples" not in str(error):
                raise
            # No readable image in the shard: every index of its span was skipped.
            write_json(folder / f"{s:05d}.empty.json", {"span": list(span), "skipped": list(range(*span))})
            continue
        part.save(folder / f"{s:05d}")
    accelerator.wait_for_everyone()
    parts = [
        ExampleResult.load(folder / f"{s:05d}", hook)
        for s in range(n_shards)
        if (folder / f"{s:05d}" / hook / "examples.json").is_file()
    ]
    if not parts:
        raise ClipvizError(f"no examples from '{source.name}': it has no readable images")
    result = merge(parts, top_k)
    for empty in sorted(folder.glob("*.empty.json")):
        span = json.loads(empty.read_text())["span"]
        result.skipped += json.loads(empty.read_text()).get("skipped", list(range(*span)))
    result.skipped.sort()
    if accelerator.is_main_process:
        result.save(Path(out))
    return result
