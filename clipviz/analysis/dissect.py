"""CLIP-Dissect's SoftWPMI: name neurons of any vision model from their activations on a probe image set.

Given each probe image's cosine with each concept's text embedding (from a CLIP labeller, which may differ from
the model being dissected) and each neuron's activation on each image:

* ``P = softmax_c(a * cos(image_i, text_c))`` with ``a = 10`` (the paper's, for OpenAI CLIP labellers;
  ``labeller_a`` scales it to another labeller's trained temperature);
* a neuron's top-``K`` images (``K = 100``), the j-th best kept with probability ``p_j`` falling linearly from
  0.998 to 0.97;
* ``log p(c | E) = sum_j log(p_j P_jc + 1 - p_j)``;
* ``score = log p(c | E) - lambda log p(c)``, ``lambda = 1``, with the prior ``log p(c)`` the log of the mean of
  ``p(c | E)`` over the layer's neurons.

One neuron alone has no population: its prior then comes from random ``K``-image sets of the probe set (the neuron
a random draw would be), so a single-neuron call still ranks concepts instead of scoring every one 0.

>>> from dataclasses import dataclass

import torch
>>> sims = torch.tensor([[0.3, 0.1], [0.1, 0.3], [0.3, 0.1]])
>>> acts = torch.tensor([[1.0], [0.0], [0.9]])
>>> softwpmi(acts, sims, top_k=2).argmax(dim=1).tolist()
[0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clipviz.errors import ClipvizError
from clipviz.model.layout import reduce_tokens

#: CLIP-Dissect's softmax scale ``a``, set for OpenAI CLIP labellers (trained logit scale ``PAPER_LOGIT_SCALE``).
PAPER_A, PAPER_LOGIT_SCALE = 10.0, 100.0
#: The paper's number of top-activating probe images per neuron; a probe set must hold more than this.
TOP_K = 100
#: SoftWPMI scores this close to the top one (relative) are one score. A neuron whose top images all carry several
#: concepts that no other neuron's top images carry scores each of them at the ``log(width)`` ceiling, apart only by
#: how nearly certain each is (``log 0.9994`` and ``log 0.99999``): the method cannot tell them apart.
CEILING_TIE = 1e-4


def labeller_a(labeller) -> float:
    """The softmax scale ``a`` for a labeller: the paper's 10 at OpenAI CLIP's trained logit scale (100), scaled
    with the labeller's own trained logit scale otherwise (its cosines spread as its temperature asks), 10 when the
    labeller has none. A fixed ``a = 10`` on a labeller trained at a lower temperature gives a softmax far sharper
    than the paper's, which lets a conjunction's most visible factor win (docs/validation.md measures it).

    >>> class Labeller:
    ...     logit_scale = 38.8
    >>> round(labeller_a(Labeller()), 4), labeller_a(object())
    (3.88, 10.0)
    """
    scale = getattr(labeller, "logit_scale", None)
    return PAPER_A if scale is None else PAPER_A * float(scale) / PAPER_LOGIT_SCALE


def check_probe_size(n_images: int, name: str | None = None, top_k: int = TOP_K) -> None:
    """Refuse a probe set of at most ``top_k`` images: every neuron's top set would be all of it, so every neuron
    would get the same words.

    >>> check_probe_size(100, "world:100")
    Traceback (most recent call last):
    ...
    clipviz.errors.ClipvizError: the probe set 'world:100' has 100 images, and CLIP-Dissect compares each ...
    """
    if n_images <= top_k:
        called = f" '{name}'" if name else ""
        raise ClipvizError(
            f"the probe set{called} has {n_images} image{'s' if n_images != 1 else ''}, and CLIP-Dissect compares "
            f"each neuron's top {top_k} with the rest, so every neuron would get the same words: use more than "
            f"{top_k} images (thousands name neurons far better)"
        )


def open_probe(spec: str, **options):
    """The probe set ``spec`` (``open_source``'s spec and options), refused in one line when it is too small for
    CLIP-Dissect (``check_probe_size``; a source of unknown length is counted when it is read)."""
    from clipviz.data.sources import open_source

    source = open_source(spec, **options)
    if source.length:
        check_probe_size(source.length, source.name)
    return source


def _inclusion(k: int, hi: float = 0.998, lo: float = 0.97) -> torch.Tensor:
    return torch.linspace(hi, lo, k) if k > 1 else torch.tensor([hi])


#: Elements of the (sets, K, concepts) temporary computed at once: a whole layer of a large model against a large
#: vocabulary (3072 x 100 x 20000) would otherwise need tens of GB.
_CHUNK_ELEMENTS = 2**24


def _log_p_given_set(probs: torch.Tensor, members: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``members`` (n_sets, K) image indices -> log p(c | E) (n_sets, concepts), a few sets at a time."""
    step = max(1, _CHUNK_ELEMENTS // max(1, members.shape[1] * probs.shape[1]))
    keep, drop = p[None, :, None], 1 - p[None, :, None]
    rows = [torch.log(keep * probs[members[i : i + step]] + drop).sum(dim=1) for i in range(0, len(members), step)]
    return torch.cat(rows) if rows else probs.new_zeros(0, probs.shape[1])


def softwpmi(
    activations: torch.Tensor,
    similarities: torch.Tensor,
    *,
    top_k: int = TOP_K,
    a: float = 10.0,
    lam: float = 1.0,
    prior: torch.Tensor | None = None,
    population: torch.Tensor | None = None,
    random_sets: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """SoftWPMI scores (neurons, concepts) from activations (images, neurons) and image-text cosines (images,
    concepts). See the module docstring. The prior ``log p(c)`` is ``prior`` (concepts,) where given, else the mean
    over ``population`` (images, the layer's neurons: scoring a few neurons of a layer must not make those few
    the population, or their scores collapse to ``log`` of their number), else over the neurons given, else (one
    neuron) ``random_prior``'s."""
    if activations.ndim != 2 or similarities.ndim != 2 or activations.shape[0] != similarities.shape[0]:
        raise ClipvizError(
            f"activations (images, neurons) and similarities (images, concepts) must share the image "
            f"axis; got {tuple(activations.shape)} and {tuple(similarities.shape)}"
        )
    n_images = activations.shape[0]
    if n_images == 0 or similarities.shape[1] == 0:
        raise ClipvizError("the probe set and the vocabulary must not be empty")
    check_probe_size(n_images, top_k=top_k)
    k = top_k
    probs = (a * similarities.double()).softmax(dim=1)
    p = _inclusion(k).double()
    log_cond = _log_p_given_set(probs, activations.double().topk(k, dim=0).indices.T, p)
    if (
        prior is None
        and population is not None
        and population.shape == activations.shape
        and (torch.equal(population, activations))
    ):
        prior = _log_mean(log_cond)  # the neurons asked are the whole layer: computed once
    elif prior is None and population is not None:
        prior = _population_prior(probs, population.double().topk(k, dim=0).indices.T, p)
    elif prior is None and activations.shape[1] > 1:
        prior = _log_mean(log_cond)
    elif prior is None:
        prior = random_prior(similarities, top_k=top_k, a=a, random_sets=random_sets, seed=seed)
    return (log_cond - lam * prior.double()).float()


def layer_softwpmi(
    activations: torch.Tensor,
    columns: list[int],
    neurons: list[int],
    width: int,
    similarities: torch.Tensor,
    a: float,
    layer_top: torch.Tensor | None = None,
) -> torch.Tensor:
    """SoftWPMI scores (neurons, concepts) of ``neurons`` of a layer of ``width`` neurons, from ``activations``
    (images, one column per neuron of ``columns``): the prior is the whole layer's (the paper's) where every
    neuron is at hand, or where ``layer_top`` (width, ``TOP_K``) gives every neuron's top images as row positions
    of ``activations``, best first (what ``clipviz examples --save-activations`` keeps of a layer's other
    neurons); else ``random_prior``'s. Never that of the neurons asked about, so a neuron's words do not depend
    on which others are named with it.

    >>> acts = torch.rand(300, 4)
    >>> sims = torch.rand(300, 3)
    >>> top = acts.topk(TOP_K, dim=0).indices.T
    >>> torch.allclose(layer_softwpmi(acts[:, [2]], [2], [2], 4, sims, 10.0, layer_top=top),
    ...                layer_softwpmi(acts, [0, 1, 2, 3], [2], 4, sims, 10.0))
    True
    """
    where = {n: j for j, n in enumerate(columns)}
    missing = [n for n in neurons if n not in where]
    if missing:
        raise ClipvizError(f"no activations for neurons {missing[:5]}: mine them first")
    rows = activations[:, [where[n] for n in neurons]]
    if set(columns) >= set(range(width)):
        return softwpmi(rows, similarities, a=a, population=activations)
    if layer_top is not None and tuple(layer_top.shape) == (width, TOP_K):
        probs = (a * similarities.double()).softmax(dim=1)
        prior = _population_prior(probs, layer_top.long(), _inclusion(TOP_K).double())
        return softwpmi(rows, similarities, a=a, prior=prior)
    return softwpmi(rows, similarities, a=a, prior=random_prior(similarities, a=a))


def _population_prior(probs: torch.Tensor, members: torch.Tensor, p: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``log mean_E p(c | E)`` over the sets ``members`` (the layer's neurons' top sets), a chunk of sets at a time:
    never the whole (neurons, concepts) table."""
    total = None
    for i in range(0, len(members), chunk):
        part = torch.logsumexp(_log_p_given_set(probs, members[i : i + chunk], p), dim=0)
        total = part if total is None else torch.logaddexp(total, part)
    return total - torch.log(torch.tensor(float(len(members)), dtype=total.dtype))


def random_prior(
    similarities: torch.Tensor, *, top_k: int = TOP_K, a: float = 10.0, random_sets: int = 256, seed: int = 0
) -> torch.Tensor:
    """``log p(c)`` (concepts,) of the neuron a random draw would be: the mean of ``p(c | E)`` over random
    ``top_k``-image sets of the probe set. For one neuron, or a few whose layer's other neurons are not at hand."""
    n_images = similarities.shape[0]
    probs = (a * similarities.double()).softmax(dim=1)
    g = torch.Generator().manual_seed(seed)
    sets = torch.stack([torch.randperm(n_images, generator=g)[:top_k] for _ in range(random_sets)])
    return _log_mean(_log_p_given_set(probs, sets, _inclusion(top_k).double()))


def _log_mean(log_values: torch.Tensor) -> torch.Tensor:
    """``log mean exp`` over the first axis."""
    return torch.logsumexp(log_values, dim=0) - torch.log(torch.tensor(float(log_values.shape[0])))


@torch.no_grad()
def probe_activations(
    model, hook: str, source, neurons=None, batch: int = 64, progress: bool = False
) -> tuple[torch.Tensor, list[int]]:
    """Patch-mean activations (images, neurons) of ``hook`` over a probe ``Source``, and the images' indices."""
    from tqdm.auto import tqdm

    from clipviz.data.decoding import batches

    point = model.hook_point(hook)
    layout = model.hook_layout(hook)
    neurons = None if neurons is None else model.check_neurons(hook, neurons)
    rows, kept, skipped = [], [], []
    bar = tqdm(total=source.length or None, desc="probe activations", unit="img", disable=not progress)
    for images, idx, _ in batches(source, model.preprocess_pil, batch, skipped):
        _, cache = model.run_with_cache(images, [point.name])
        act = reduce_tokens(cache[point.name].float(), "patches", layout, dim=1)
        rows.append(act if neurons is None else act[:, list(neurons)])
        kept += idx
        bar.update(len(idx))
    bar.close()
    if not rows:
        raise ClipvizError(f"the probe set '{source.name}' has no readable images")
    return torch.cat(rows).cpu(), kept


@dataclass(frozen=True)
class StoredActivations:
    """A probe matrix stored by ``clipviz examples --save-activations``."""

    activations: torch.Tensor  # (images, neurons), float32
    indices: list[int]  # dataset index of each row
    source: str  # the probe set's name (a source spec)
    neurons: list[int]  # neuron of each column
    options: dict = field(default_factory=dict)  # open_source's options that reopen it (a dataset's split, columns)
    location: str = ""  # where it reopens from (a folder's absolute path; the name otherwise)
    # every neuron of the layer's top images, as row positions, best first (``layer_softwpmi``); None where the
    # matrix holds the whole layer, or was stored by a clipviz that did not keep them
    layer_top: torch.Tensor | None = None

    def require(self, neurons, where: str = "") -> None:
        """Refuse, naming the first, neurons the matrix has no column for."""
        missing = [n for n in neurons if n not in self.neurons]
        if missing:
            raise ClipvizError(
                f"neuron {missing[0]} has no stored activations{f' in {where!r}' if where else ''} (it holds "
                f"{len(self.neurons)} neurons)"
            )


def stored_activations(folder, hook: str, neurons=None, *, model=None) -> StoredActivations:
    """The probe matrix that ``clipviz examples --save-activations`` stored under ``folder``: activations (images,
    neurons) as float32, the images' indices, the probe set's name and the neurons (all stored ones by default).
    Reading it instead of running the model again gives the same SoftWPMI input as ``probe_activations``.

    Refused where it is not this ``model``'s (another spec or other weights) or where the probe set's images are
    no longer those it was mined from."""
    from pathlib import Path

    from clipviz.analysis.examples import ExampleResult
    from clipviz.data.sources import open_source
    from clipviz.model.loading import same_model

    folder = Path(folder)
    if not (folder / hook / "examples.json").is_file():
        raise ClipvizError(f"no examples for hook '{hook}' in '{folder}': run clipviz examples --save-activations")
    stored = ExampleResult.load(folder, hook)
    if model is not None:
        mine = model.identity()
        theirs = {k: stored.settings.get(k) for k in ("model", "weights")}
        if theirs["weights"] != mine["weights"] or not same_model(theirs["model"], mine["model"]):
            which = (
                "by a clipviz that did not record the weights"
                if theirs["weights"] is None
                else "with other weights"
                if same_model(theirs["model"], mine["model"])
                else f"with model '{theirs['model']}'"
            )
            raise ClipvizError(
                f"the activations in '{folder}' were mined {which}, not with these weights of '{mine['model']}': "
                "mine them again with this model"
            )
    name, options = stored.settings.get("source", ""), stored.settings.get("source_options") or {}
    name = stored.settings.get("source_location") or name  # a folder's absolute path: any working folder
    if stored.settings.get("source_identity") not in (None, open_source(name, **options).identity):
        raise ClipvizError(
            f"the images of '{name}' are not those the activations in '{folder}' were mined from: mine them again"
        )
    if stored.activations is None:
        raise ClipvizError(
            f"the examples in '{folder}' kept no activation matrix: run clipviz examples with --save-activations"
        )
    if stored.reduce != "patches":
        raise ClipvizError(
            f"the stored activations are reduced by '{stored.reduce}'; CLIP-Dissect uses the patch "
            "mean: run clipviz examples with --reduce patches"
        )
    neurons = list(stored.neurons) if neurons is None else list(neurons)
    missing = [n for n in neurons if n not in stored.neurons]
    if missing:
        raise ClipvizError(
            f"neuron {missing[0]} has no stored activations in '{folder}' (it holds "
            f"{len(stored.neurons)} neurons of '{hook}')"
        )
    columns = [stored.neurons.index(n) for n in neurons]
    indices = stored.activation_indices.tolist()
    layer_top = None
    if stored.layer_top is not None:
        row = {i: r for r, i in enumerate(indices)}
        layer_top = torch.tensor([[row[i] for i in top] for top in stored.layer_top.tolist()], dtype=torch.long)
    return StoredActivations(
        stored.activations[:, columns].float(),
        indices,
        stored.settings.get("source", ""),
        neurons,
        options,
        name,
        layer_top,
    )


@torch.no_grad()
def image_text_similarities(
    labeller, source, indices: list[int], text: torch.Tensor, batch: int = 64, progress: bool = False
) -> torch.Tensor:
    """Cosines (images, concepts) between the labeller's embeddings of the probe images and unit text embeddings."""
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from clipviz.data.decoding import batches

    wanted = set(indices)
    embs = []
    bar = tqdm(total=len(wanted), desc="labeller image embeddings", unit="img", disable=not progress)
    for images, idx, _ in batches(_Filtered(source, wanted), labeller.preprocess_pil, batch, []):
        embs.append(F.normalize(labeller.encode_image(images).float(), dim=-1).cpu())
        bar.update(len(idx))
    bar.close()
    return torch.cat(embs) @ text.T


class _Filtered:
    """The items of a source whose index is in ``wanted`` (the images the dissected model could read)."""

    def __init__(self, source, wanted: set[int]):
        self.source, self.wanted = source, wanted

    def __iter__(self):
        return ((i, img, cap) for i, img, cap in self.source if i in self.wanted)
