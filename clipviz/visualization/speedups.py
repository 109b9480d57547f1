"""The exact speed-ups of the optimisation step, and the switches that turn them off.

=================  ==============================================================================================
``sliced_mlp``     a ``Neuron`` objective at an MLP hook computes per image only its own neuron, also when other
                   terms read hooks that fire before that MLP's input (``vital``'s sort matching: captured in
                   the same truncated pass) (``clipviz.visualization.sliced``); every device
``matmul_stem``    the patch-embedding convolution as reshape + matrix product (``clipviz.model.stem``);
                   ``None``: where it was measured faster (the CPU; not measured on a GPU, so off there)
``fused_affine``   ColorShift, offset noise and the model's normalisation as one ``a * x + b`` pass
                   (``clipviz.visualization.fused``); every device
``onednn_linear``  the vision tower's linear layers as oneDNN products on pre-packed frozen weights, backward
                   the input gradient only (``clipviz.model.onednn``); ``None``: where it was measured faster
                   (CPU float32); not together with ``compiled_blocks``
``compiled_blocks`` the blocks before the hooked one as ``torch.compile`` graphs (``clipviz.model.compiled``);
                   off by default: on the CPU it was measured slower including its compile time, and on a GPU
                   it has not been measured
=================  ==============================================================================================

Each gives the same images as the plain computation up to float rounding (the tolerances are in each module and
pinned by ``tests/test_speedups.py``) and keeps an image independent of its batch-mates.
``SpeedUps.none()`` turns all of them off (for comparisons and benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipviz.model.onednn import onednn_linear_is_faster
from clipviz.model.stem import stem_matmul_is_faster
from clipviz.visualization.fused import fuse_affine


@dataclass(frozen=True)
class SpeedUps:
    sliced_mlp: bool = True
    matmul_stem: bool | None = None
    fused_affine: bool = True
    onednn_linear: bool | None = None
    compiled_blocks: bool = False

    @classmethod
    def none(cls) -> SpeedUps:
        return cls(sliced_mlp=False, matmul_stem=False, fused_affine=False, onednn_linear=False)

    def stem_on(self, device: torch.device) -> bool:
        return stem_matmul_is_faster(device) if self.matmul_stem is None else bool(self.matmul_stem)

    def linear_on(self, device: torch.device) -> bool:
        if self.compiled_blocks:  # the packed weights are not graph material
            return False
        return onednn_linear_is_faster(device) if self.onednn_linear is None else bool(self.onednn_linear)


def augmentations(recipe, model, shape: tuple[int, int], speedups: SpeedUps) -> tuple[list, bool]:
    """The recipe's per-step transforms for images of ``shape`` (height, width), with the affine chain fused where
    it may be, and whether the model's normalisation was folded into it (then the model must take the images as
    they are: ``model.prenormalised()``)."""
    transforms = recipe.transforms()
    if not speedups.fused_affine:
        return transforms, False
    # the normalisation folds only into RGB inputs: a grey model's is of the luminance, taken in ``prepare``
    folds = tuple(shape) == tuple(model.image_size) and model.input_channels == 3
    chain, rest, folded = fuse_affine(transforms, model.normalisation() if folds else None)
    return ([chain] if chain is not None else []) + rest, folded
