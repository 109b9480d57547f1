"""Decoding: a source's images as batches of model input tensors, in the main process or in worker processes.

``to_tensor`` turns one PIL image into a (3, H, W) tensor in [0, 1]: a model's own ``preprocess_pil`` (its
backend's resize and centre crop), or any function of the same shape.

>>> from clipviz.data.sources import open_source
>>> from clipviz.images import fit_pil, pil_to_tensor
>>> skipped = []
>>> to_tensor = lambda img: pil_to_tensor(fit_pil(img, (32, 32)))
>>> images, indices, captions = next(batches(open_source("world:5"), to_tensor, 4, skipped))
>>> tuple(images.shape), indices
((4, 3, 32, 32), [0, 1, 2, 3])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from clipviz.data.sources import Source

ToTensor = Callable[[Image.Image], torch.Tensor]


def batches(source, to_tensor: ToTensor, batch: int, skipped: list[int]):
    buf, idx, caps = [], [], []
    for i, img, cap in source:
        if img is None:
            skipped.append(i)
            continue
        buf.append(to_tensor(img))
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

    def __init__(self, source: Source, lo: int, hi: int, to_tensor: ToTensor, batch: int):
        self.source, self.lo, self.hi, self.to_tensor, self.batch = source, lo, hi, to_tensor, batch

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
                images.append(self.to_tensor(img))
                idx.append(i)
                caps.append(cap)
            yield (torch.stack(images) if images else None), idx, caps, bad


def parallel_batches(
    source: Source, span: tuple[int, int], to_tensor: ToTensor, batch: int, workers: int, skipped: list[int]
):
    """``batches`` with decoding and resizing in ``workers`` processes (forked: sources need not pickle)."""
    import multiprocessing

    loader = torch.utils.data.DataLoader(
        _DecodedChunks(source, *span, to_tensor, batch),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4,
        multiprocessing_context="fork" if "fork" in multiprocessing.get_all_start_methods() else None,
    )
    for images, idx, caps, bad in loader:
        skipped += bad
        if images is not None:
            yield images, idx, caps
