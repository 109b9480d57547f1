"""Each image of a batch must be processed on its own: a model that mixes the images of a batch is refused.

clipviz runs batches of any size (one image in the Space, hundreds in example mining, many neurons' images in one
optimisation pass) and reads each image's activations as that image's. A model that folds several images into one
sample (X-CLIP's frames of a video, whose message tokens attend across the frames of the batch) would make every
result depend on its batch-mates: a silently wrong answer. So at load time one image is run alone and beside two
different neighbours, and its output must not move (beyond the rounding of the model's precision) while the
neighbours' outputs differ; a pass that fails for a batch size is refused the same way.
"""

from __future__ import annotations

import torch

from clipviz.errors import UnsupportedModelError
from clipviz.model.probe import evaluating, native_failures

#: How far the output of one image may move with its batch-mates, relative to how far two different images'
#: outputs are apart: rounding only (kernels differ with the batch size), per precision.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 2e-2, torch.bfloat16: 2e-2}


@torch.no_grad()
def check_batch_independence(model) -> None:
    """Refuse ``model`` (a ``HookedVisionModel`` under construction) when one image's output depends on the other
    images of its batch, or when it cannot run batches of one and two images."""
    generator = torch.Generator().manual_seed(1)
    a, b, c = torch.rand(3, 1, 3, *model.backend.image_size, generator=generator)
    outputs = []
    with evaluating(model.native):
        for batch in (torch.cat([a, b]), torch.cat([a, c]), a):
            what = f"a batch of {len(batch)} image{'s' if len(batch) > 1 else ''} (clipviz runs batches of any size)"
            with native_failures(model.backend.architecture, what):
                out = model.backend.forward(model.prepare(batch))
            if not isinstance(out, torch.Tensor):
                return  # nothing to compare (the probe has already refused an output clipviz cannot read)
            outputs.append(out.detach().float().flatten(1))
    ab, ac, alone = outputs
    apart = float((ab[1] - ac[1]).abs().max())
    moved = max(float((ab[0] - ac[0]).abs().max()), float((ab[0] - alone[0]).abs().max()))
    tolerance = TOLERANCE.get(model.dtype, 2e-2)
    if apart > 0 and moved > tolerance * apart:
        name = model.backend.architecture.split("/")[-1]
        raise UnsupportedModelError(
            f"unsupported architecture {name}: the images of a batch are not processed independently (one image's "
            f"output moved by {moved:.2g} when its batch-mate changed, {moved / apart:.1%} of how far two images' "
            "outputs are apart; frames of a video folded into the batch?), so clipviz cannot read one image's "
            "activations"
        )
