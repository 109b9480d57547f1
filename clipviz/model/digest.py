"""Hashes of tensors by their bytes: what identifies a model's weights to the caches and the resumable runs.

>>> import hashlib, torch
>>> a, b = hashlib.blake2b(), hashlib.blake2b()
>>> update_with_tensors(a, [("w", torch.zeros(3))]); update_with_tensors(b, [("w", torch.zeros(3))])
>>> a.hexdigest() == b.hexdigest()
True
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def update_with_tensors(digest, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feed ``digest`` (a ``hashlib`` object) each tensor's name, dtype, shape and bytes, in the order given."""
    for name, tensor in named:
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        if flat.numel():
            digest.update(flat.contiguous().view(torch.uint8).cpu().numpy())  # the buffer itself, not a copy
