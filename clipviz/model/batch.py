"""Each image of a batch must be processed on its own: a model that mixes the images of a batch is refused.

clipviz runs batches of any size (one image in the Space, hundreds in example mining, many neurons' images in one
optimisation pass) and reads each image's activations as that image's. A model that folds several images into one
sample (X-CLIP's frames of a video, whose message tokens attend across the frames of the batch) would make every
result depend on its batch-mates: a silently wrong answer. So at load time three batches of two images are run,
``[a, b]``, ``[a, c]`` and ``[c, b]``: ``a`` in first place and ``b`` in second each get another batch-mate (so a
mixing that only looks back, or only forward, is seen too), and their outputs must not move beyond the rounding of
the model's precision. Batches of one size run the same kernels, so the outputs should agree to the last bit; the
tolerance, relative to the outputs' size, leaves room for kernels that are not deterministic. A model that cannot
run a batch of one image is refused by the residual-stream check, which runs one.
"""

from __future__ import annotations

import torch

from clipviz.errors import UnsupportedModelError
from clipviz.model.evaluation import evaluating
from clipviz.model.probe import _first, native_failures

#: How far one image's output may move when its batch-mate changes, relative to the largest output value.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@torch.no_grad()
def check_batch_independence(model) -> None:
    """Refuse ``model`` (a ``HookedVisionModel`` under construction) when one image's output depends on the other
    images of its batch."""
    generator = torch.Generator().manual_seed(1)
    a, b, c = torch.rand(3, 1, 3, *model.backend.image_size, generator=generator)
    outputs = []
    with evaluating(model.native), native_failures(model.backend.architecture, "a batch of 2 images"):
        for batch in (torch.cat([a, b]), torch.cat([a, c]), torch.cat([c, b])):
            out = _first(model.backend.forward(model.prepare(batch)))  # open_clip's output_tokens: (pooled, tokens)
            if not isinstance(out, torch.Tensor):
                raise UnsupportedModelError(
                    f"unsupported architecture {model.backend.architecture.split('/')[-1]}: its output is a "
                    f"{type(out).__name__}, not a tensor clipviz can read"
                )
            outputs.append(out.detach().float().flatten(1))
    ab, ac, cb = outputs
    scale = max(float(o.abs().max()) for o in outputs)
    moved = max(float((ab[0] - ac[0]).abs().max()), float((ab[1] - cb[1]).abs().max()))
    if moved > TOLERANCE.get(model.dtype, 3e-2) * scale:
        name = model.backend.architecture.split("/")[-1]
        raise UnsupportedModelError(
            f"unsupported architecture {name}: the images of a batch are not processed independently (one image's "
            f"output moved by {moved:.2g}, {moved / scale:.1%} of its largest value, when its batch-mate changed; "
            "frames of a video folded into the batch?), so clipviz cannot read one image's activations"
        )
