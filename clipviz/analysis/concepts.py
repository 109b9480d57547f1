"""Naming neurons of CLIP-like models with words.

The **direct lens** reads weights only. Neuron ``n`` of block ``l`` writes ``a_n * w_n`` (column ``n`` of the MLP's
output matrix, times any layer scale) into the residual stream. Its direct effect on the image embedding, with the
final LayerNorm linearised around its input (centre, then scale by ``gamma``; the common ``1/sigma`` does not change
a ranking), is ``u_n = P (gamma * (w_n - mean(w_n)))`` where ``P`` is the image projection. Vocabulary entries are
ranked by the cosine between ``u_n`` and their text embedding. For the last block this is the neuron's whole
effect on the embedding (up to the LayerNorm's linearisation); for earlier blocks it is the direct path only:
what later blocks make of the neuron's output is ignored.

>>> import clipviz
>>> from clipviz.analysis.concepts import direct_lens, load_vocabulary
>>> model = clipviz.load("world-clip")
>>> table = direct_lens(model, "blocks.3.mlp.hook_post", [0, 1], load_vocabulary("world"), top_k=3)
>>> len(table), sorted(table[0])
(2, ['neuron', 'scores', 'tied', 'words'])
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from clipviz.errors import ClipvizError, UnsupportedModelError
from clipviz.model.architecture import mlp_output_directions
from clipviz.model.trained_words import some_trained_words, token_ids, trained_words, untrained_words
from clipviz.plugins import registry
from clipviz.results import atomic_write, write_concepts

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

DEFAULT_TEMPLATES = ("a photo of a {}.",)
ENSEMBLE_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a rendering of a {}.",
    "a drawing of a {}.",
)
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100's fine labels, in the dataset's (alphabetical) order, underscores as spaces.
CIFAR100 = (
    "apple",
    "aquarium fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak tree",
    "orange",
    "orchid",
    "otter",
    "palm tree",
    "pear",
    "pickup truck",
    "pine tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow tree",
    "wolf",
    "woman",
    "worm",
)


@dataclass(frozen=True)
class Vocabulary:
    """Concepts to rank and how to turn each into prompts (``templates``; ``"{}"`` alone uses the concept as is)."""

    name: str
    concepts: tuple[str, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    license: str = ""

    def digest(self) -> str:
        text = "\n".join((self.name, *self.templates, *self.concepts))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    """Make duplicates unique by numbering them ('missile', 'missile (2)'), keeping order."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return tuple(out)


# English function words (pronouns, articles, auxiliaries, conjunctions): as names of what a neuron sees they say
# nothing. Words of place, number and quantity ("above", "behind", "one", "many") stay: a neuron can see them.
FUNCTION_WORDS = frozenset(
    {
        "about",
        "after",
        "again",
        "almost",
        "also",
        "although",
        "always",
        "and",
        "anyone",
        "anything",
        "are",
        "because",
        "been",
        "before",
        "being",
        "besides",
        "but",
        "cannot",
        "could",
        "did",
        "does",
        "doing",
        "done",
        "during",
        "else",
        "etc",
        "even",
        "ever",
        "everyone",
        "everything",
        "for",
        "from",
        "further",
        "get",
        "gets",
        "got",
        "had",
        "has",
        "have",
        "having",
        "her",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "however",
        "its",
        "itself",
        "just",
        "let",
        "lets",
        "like",
        "may",
        "might",
        "must",
        "myself",
        "never",
        "nevertheless",
        "nor",
        "not",
        "now",
        "okay",
        "once",
        "only",
        "otherwise",
        "ought",
        "our",
        "ours",
        "ourselves",
        "per",
        "perhaps",
        "quite",
        "rather",
        "really",
        "shall",
        "she",
        "should",
        "since",
        "some",
        "someone",
        "something",
        "somewhat",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "therefore",
        "these",
        "they",
        "this",
        "those",
        "though",
        "thus",
        "too",
        "unless",
        "until",
        "very",
        "via",
        "was",
        "were",
        "what",
        "whatever",
        "when",
        "whenever",
        "where",
        "whereas",
        "wherever",
        "whether",
        "which",
        "while",
        "who",
        "whoever",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "would",
        "yes",
        "yet",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
    }
)
_WORDS_SPEC = re.compile(r"^words-([0-9]+)(k?)$")
_WORDFREQ_LICENSE = "wordfreq (code Apache-2.0, data CC-BY-SA 4.0)"


def _common_words(spec: str, templates: Sequence[str] | None) -> Vocabulary:
    """``words-<N>`` / ``words-<N>k``: the N most common English words of three letters or more, function words
    left out (``FUNCTION_WORDS``)."""
    match = _WORDS_SPEC.match(spec)
    n = int(match.group(1)) * (1000 if match.group(2) else 1) if match else 0
    if n < 1:
        raise ClipvizError(f"bad vocabulary '{spec}': use words-<N> or words-<N>k with a whole N >= 1, e.g. words-20k")
    try:
        from wordfreq import top_n_list
    except ImportError:
        raise ClipvizError("the words-<N> vocabularies need wordfreq: pip install 'clipviz[words]'") from None

    def kept(listed: int) -> list[str]:
        words = top_n_list("en", listed)
        return [w for w in words if w.isalpha() and len(w) > 2 and w not in FUNCTION_WORDS][:n]

    words = kept(n * 2)
    if len(words) < n:  # rare words are more often dropped: read the whole list
        words = kept(10**7)
    if len(words) < n:
        raise ClipvizError(f"bad vocabulary '{spec}': wordfreq lists only {len(words)} such English words")
    return Vocabulary(spec, tuple(words), tuple(templates or DEFAULT_TEMPLATES), _WORDFREQ_LICENSE)


def load_vocabulary(spec: str, templates: Sequence[str] | None = None) -> Vocabulary:
    """``world``, ``imagenet``, ``cifar10``, ``cifar100``, ``words-<N>`` (the N most common English words, from
    wordfreq) or a path to a UTF-8 text file with one concept per line (blank lines and lines starting with ``#``
    are skipped, a repeated concept is kept once with a warning)."""
    plugged = registry().vocabularies.get(spec)
    if plugged is not None:
        return plugged(templates)
    if spec == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return Vocabulary(
            "imagenet",
            _unique(IMAGENET_CLASSNAMES),
            tuple(templates or DEFAULT_TEMPLATES),
            "class names from open_clip (MIT)",
        )
    if spec == "cifar10":
        return Vocabulary("cifar10", CIFAR10, tuple(templates or DEFAULT_TEMPLATES), "CIFAR-10 class names")
    if spec == "cifar100":
        return Vocabulary("cifar100", CIFAR100, tuple(templates or DEFAULT_TEMPLATES), "CIFAR-100 class names")
    if spec.startswith("words-"):
        return _common_words(spec, templates)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ClipvizError(
            f"unknown vocabulary '{spec}'; accepted: world, imagenet, cifar10, cifar100, words-<N>, "
            "or a text file with one concept per line"
        )
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is no part of a concept
    except (OSError, UnicodeDecodeError) as error:
        raise ClipvizError(f"cannot read vocabulary file '{spec}': {error}") from None
    kept = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    odd = next((i for i, line in enumerate(kept) if any(ord(ch) < 32 for ch in line)), None)
    if odd is not None:
        raise ClipvizError(
            f"vocabulary file '{spec}' has control characters in concept {odd + 1} ({kept[odd][:30]!r}): "
            "it needs plain text, one concept per line"
        )
    concepts = tuple(dict.fromkeys(kept))
    if not concepts:
        raise ClipvizError(f"vocabulary file '{spec}' is empty: it needs one concept per line")
    if len(concepts) < len(kept):
        repeated = len(kept) - len(concepts)
        warnings.warn(f"vocabulary file '{spec}': {repeated} repeated concepts kept once", stacklevel=2)
    return Vocabulary(path.stem, concepts, tuple(templates or DEFAULT_TEMPLATES), f"user file {path}")


def _one_slot(template: str) -> bool:
    """Whether ``template`` has exactly one replacement field and it is ``{}`` (``{x}``, ``{0}`` or a stray brace
    would fail, or fill in something else, when the concept is put in).

    >>> [_one_slot(t) for t in ("a photo of a {}.", "a {} of {x}", "{} {0}", "a {{literal}} {}", "a {")]
    [True, False, False, True, False]
    """
    import string

    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return False
    return fields == [("", "", None)]


def parse_templates(text: str | None) -> tuple[str, ...] | None:
    """``None`` (the vocabulary's default), ``"ensemble"`` (six photo/drawing templates) or ``|``-separated
    templates, each with one ``{}``."""
    if text is None:
        return None
    if text == "ensemble":
        return ENSEMBLE_TEMPLATES
    templates = tuple(t.strip() for t in text.split("|") if t.strip())
    bad = [t for t in templates if not _one_slot(t)]
    if not templates or bad:
        raise ClipvizError(
            f"bad template {bad[0] if bad else text!r}: each template needs exactly one {{}}, e.g. "
            "'a photo of a {}.|a drawing of a {}.' or 'ensemble'"
        )
    return templates


def _cache_dir() -> Path:
    root = os.environ.get("CLIPVIZ_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "clipviz")
    return Path(root).expanduser() / "text-embeddings"


CACHE_FORMAT = "2"  # bump when the cached embeddings change meaning


def _model_digest(model: HookedVisionModel) -> str:
    """Identifies the whole text tower: a hash of every parameter and buffer outside the vision tower (name, dtype,
    shape and bytes), the model's spec and revision, and its tokenizer's output for a probe text; changing any
    text weight changes the digest."""
    from clipviz.model.digest import update_with_tensors

    b = model.backend
    h = hashlib.sha256(f"{CACHE_FORMAT}\n{b.spec}\n{b.kind}\n{b.architecture}\n{getattr(b, 'revision', '')}".encode())
    vision = f"{b.vision_path}." if b.vision_path else None
    named = sorted([*model.native.named_parameters(), *model.native.named_buffers()], key=lambda p: p[0])
    update_with_tensors(h, [(n, t) for n, t in named if vision is None or not n.startswith(vision)])
    h.update(repr(token_ids(model, ["a photo of a {}."])).encode())
    return h.hexdigest()[:16]


def _listed(items: list[str], limit: int, sep: str = ", ") -> str:
    """The first ``limit`` of ``items`` joined, and how many more there are.

    >>> _listed(["a", "b", "c"], 2)
    'a, b and 1 more'
    """
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


def _untrained(model: HookedVisionModel, vocab: Vocabulary) -> dict[str, list[str]]:
    """Per concept, its prompts' words that ``model``'s text tower was never trained on (``untrained_words``). A
    template with such a word, or a vocabulary of nothing else, is refused."""
    if trained_words(model) is None:
        return {}
    for template in vocab.templates:
        bad = untrained_words(model, [template.replace("{}", " ")])
        if bad:
            raise ClipvizError(
                f"template '{template}' uses {', '.join(repr(w) for w in next(iter(bad.values())))}, which "
                f"{model.spec}'s text tower was never trained on: use --templates '{{}}' or a template of the words "
                f"it knows ({some_trained_words(model)})"
            )
    unknown: dict[str, list[str]] = {}
    for template in vocab.templates:
        prompts = {template.format(c): c for c in vocab.concepts}
        for prompt, words in untrained_words(model, list(prompts)).items():
            kept = unknown.setdefault(prompts[prompt], [])
            kept += [w for w in words if w not in kept]
    if unknown and len(unknown) == len(vocab.concepts):
        shown = _listed([f"{c!r} ({' '.join(w)})" for c, w in unknown.items()], 4)
        raise ClipvizError(
            f"vocabulary '{vocab.name}': every concept uses words {model.spec}'s text tower was never trained on "
            f"(e.g. {shown}); it knows only the words of its training ({some_trained_words(model)})"
        )
    return unknown


def known_words_only(model: HookedVisionModel, vocab: Vocabulary) -> Vocabulary:
    """``vocab`` without the concepts whose prompts use a word that ``model``'s text tower was never trained on,
    where a plug-in says which words it was (``registry().text_words``: world-clip's are the world's 60). Such a
    word's embedding is where initialisation left it, so its score names nothing, yet it can outrank every trained
    concept. The concepts left out are named in a warning; a vocabulary with none left is refused.

    >>> import clipviz, warnings
    >>> model = clipviz.load("world-clip")
    >>> with warnings.catch_warnings(record=True):
    ...     known_words_only(model, Vocabulary("mine", ("red", "zebra", "blue"), ("a {} object",))).concepts
    ('red', 'blue')
    """
    unknown = _untrained(model, vocab)
    if not unknown:
        return vocab
    shown = _listed([f"{c!r} ({' '.join(w)})" for c, w in unknown.items()], 4)
    warnings.warn(
        f"vocabulary '{vocab.name}': {len(unknown)} concepts left out, their words were never in {model.spec}'s "
        f"training, so their embeddings are untrained: {shown}",
        stacklevel=2,
    )
    return replace(vocab, concepts=tuple(c for c in vocab.concepts if c not in unknown))


def merge_same_text(model: HookedVisionModel, vocab: Vocabulary) -> Vocabulary:
    """``vocab`` with the concepts that ``model``'s tokenizer cannot tell apart (``Apple`` and ``apple`` to CLIP's
    lower-casing tokenizer, ``ice cream`` and ``ice  cream``) kept once, by their first spelling, with a warning.
    Such twins have one embedding: they would tie on every score and fill two places of every top-k.

    >>> import clipviz, warnings
    >>> model = clipviz.load("world-clip")
    >>> with warnings.catch_warnings(record=True):
    ...     merge_same_text(model, Vocabulary("mine", ("red", "Red", "blue"))).concepts
    ('red', 'blue')
    """
    keys: dict[tuple, str] = {}
    rows = [token_ids(model, [t.format(c) for c in vocab.concepts]) for t in vocab.templates]
    twins: dict[str, list[str]] = {}
    for i, concept in enumerate(vocab.concepts):
        key = tuple(tuple(r[i]) for r in rows)
        if key in keys:
            twins.setdefault(keys[key], []).append(concept)
        else:
            keys[key] = concept
    if not twins:
        return vocab
    shown = _listed([f"{', '.join(repr(t) for t in same)} as {kept!r}" for kept, same in twins.items()], 3, "; ")
    warnings.warn(
        f"vocabulary '{vocab.name}': {sum(map(len, twins.values()))} concepts read as the same text as an earlier one "
        f"by {model.spec}'s tokenizer, kept once: {shown}",
        stacklevel=2,
    )
    return replace(vocab, concepts=tuple(keys.values()))


def _read_cache(path: Path, rows: int) -> torch.Tensor | None:
    """The cached embeddings, or ``None`` if the file is missing, garbage, empty, truncated or of the wrong shape
    (a cache miss: they are computed again and the file replaced)."""
    from safetensors.torch import load_file

    try:
        emb = load_file(str(path))["embeddings"]
    except Exception:  # noqa: BLE001 - safetensors raises its own error type for corrupt files
        return None
    if emb.ndim != 2 or emb.shape[0] != rows or emb.shape[1] == 0 or not emb.is_floating_point():
        return None
    if not bool(torch.isfinite(emb).all()) or not torch.allclose(emb.norm(dim=-1), torch.ones(rows), atol=1e-3):
        return None
    return emb


@torch.no_grad()
def text_embeddings(
    model, vocab: Vocabulary, batch: int = 256, cache: bool = True, progress: bool = False
) -> torch.Tensor:
    """Unit-norm text embeddings (len(vocab), E), averaged over the templates; cached on disk as safetensors,
    keyed by (every text-tower weight, tokenizer, vocabulary, templates). A corrupt cache file is rebuilt;
    ``progress`` shows a bar of prompts encoded. A concept with a word the text tower was never trained on
    (``known_words_only``) is refused: its embedding would be initialisation noise."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if not model.is_clip:
        raise ClipvizError(f"model '{model.spec}' has no text tower: naming neurons with words needs a CLIP-like model")
    unknown = _untrained(model, vocab)
    if unknown:
        raise ClipvizError(
            f"vocabulary '{vocab.name}': {len(unknown)} concepts use words {model.spec}'s text tower was never trained "
            f"on ({', '.join(repr(c) for c in list(unknown)[:4])}): leave them out first (known_words_only)"
        )
    path = _cache_dir() / f"{_model_digest(model)}-{vocab.digest()}.safetensors"
    if cache and path.is_file():
        cached = _read_cache(path, len(vocab.concepts))
        if cached is not None:
            return cached
    total = None
    bar = tqdm(
        total=len(vocab.concepts) * len(vocab.templates), desc="text embeddings", unit="prompt", disable=not progress
    )
    for template in vocab.templates:
        prompts = [template.format(c) for c in vocab.concepts]
        parts = []
        for i in range(0, len(prompts), batch):
            parts.append(F.normalize(model.encode_text(prompts[i : i + batch]).float(), dim=-1).cpu())
            bar.update(len(prompts[i : i + batch]))
        emb = torch.cat(parts)
        total = emb if total is None else total + emb
    bar.close()
    result = F.normalize(total, dim=-1)
    if cache:
        atomic_write(path, lambda tmp: save_file({"embeddings": result.contiguous()}, tmp))
    return result


def output_directions(model: HookedVisionModel, hook: str, neurons: Sequence[int] | None = None) -> torch.Tensor:
    """Each neuron's direct write into the residual stream, (len(neurons), d_model), including any layer scale."""
    point = model.hook_point(hook)
    if point.block is None or not point.name.endswith("mlp.hook_post"):
        raise ClipvizError(f"the direct lens reads MLP neurons: use blocks.<i>.mlp.hook_post, not '{hook}'")
    indirect = model.token_layouts.indirect_write.get(point.block)
    if indirect is not None:
        raise UnsupportedModelError(f"the direct lens cannot read block {point.block}'s neurons: {indirect}")
    directions = mlp_output_directions(model.blocks[point.block])
    return directions if neurons is None else directions[model.check_neurons(hook, neurons)]


#: Scores this close to the top one (relative to it, at least 1) are one score: float noise. Methods with a ceiling
#: that several concepts reach pass their own (``clipviz.analysis.dissect.CEILING_TIE``).
TIE_TOLERANCE = 1e-6


def words_table(
    scores: torch.Tensor,
    concepts: Sequence[str],
    top_k: int,
    neurons: Sequence[int] | None = None,
    tolerance: float = TIE_TOLERANCE,
) -> list[dict]:
    """Rows ``{"neuron", "words", "scores", "tied"}`` of the ``top_k`` concepts per row of ``scores`` (rows,
    concepts). ``tied`` counts the concepts that share the top score (within ``tolerance`` of it, relative to it and
    at least 1), as CLIP-Dissect's do where a neuron's top images carry several concepts that no other neuron's
    carry (all at its ``log(width)`` ceiling): more than 1 means the first word is not the neuron's name but one of
    ``tied`` equals. Tied concepts are listed in the vocabulary's order, never in the order float noise gives them.

    >>> words_table(torch.tensor([[0.1, 0.9, 0.5]]), ["a", "b", "c"], 2, neurons=[7])
    [{'neuron': 7, 'words': ['b', 'c'], 'scores': [0.9, 0.5], 'tied': 1}]
    >>> words_table(torch.tensor([[0.2, 4.1589, 4.15891]]), ["a", "b", "c"], 3, tolerance=1e-4)
    [{'words': ['b', 'c', 'a'], 'scores': [4.1589, 4.15891, 0.2], 'tied': 2}]
    >>> words_table(torch.tensor([[0.19228, 0.19236]]), ["a", "b"], 2)[0]["tied"]  # close, but two scores
    1
    """
    k = min(top_k, len(concepts))
    values, index = scores.topk(k, dim=1)
    top = values[:, :1]
    shared = scores >= top - tolerance * top.abs().clamp(min=1.0)
    rows = []
    for r in range(scores.shape[0]):
        tied = int(shared[r].sum())
        order = index[r].tolist()
        if tied > 1:  # the equals first, in the vocabulary's order, then the rest as ranked
            equals = shared[r].nonzero().squeeze(1).tolist()
            order = (equals + [i for i in order if not shared[r, i]])[:k]
        words = [concepts[i] for i in order]
        rows.append({"words": words, "scores": [round(float(scores[r, i]), 5) for i in order], "tied": tied})
    if neurons is None:
        return rows
    return [{"neuron": int(n), **row} for n, row in zip(neurons, rows, strict=True)]


def joint_directions(model: HookedVisionModel, residual: torch.Tensor) -> torch.Tensor:
    """Residual-stream directions (k, d_model) mapped into the joint image-text space (k, E) through the linearised
    final LayerNorm and the image projection."""
    proj = model.backend.projection
    if proj is None:
        raise ClipvizError(
            f"the direct lens needs a CLIP-like model with a linear image projection; '{model.spec}' has none"
        )
    norm = proj.final_norm
    centred = residual - residual.mean(dim=-1, keepdim=True)
    gamma = getattr(norm, "weight", None)
    if isinstance(gamma, torch.Tensor):
        centred = centred * gamma.detach().float().to(centred.device)
    return centred @ proj.matrix().detach().float().T.to(centred.device)


def direct_lens(
    model, hook: str, neurons: Sequence[int], vocab: Vocabulary, top_k: int = 5, embeddings: torch.Tensor | None = None
) -> list[dict]:
    """Top ``top_k`` vocabulary entries per neuron by the cosine of its direct effect with their text embedding.

    The direct effect is what the neuron writes for a positive activation. A neuron whose activation can be
    negative (a gated MLP's ``act(gate) * up``) writes the opposite direction then: the words of that side are the
    bottom of this ranking, not its top."""
    if not vocab.concepts:
        raise ClipvizError("the vocabulary is empty")
    text = text_embeddings(model, vocab) if embeddings is None else embeddings
    u = F.normalize(joint_directions(model, output_directions(model, hook, neurons)).cpu(), dim=-1)
    return words_table(u @ text.T, vocab.concepts, top_k, neurons)


def omp(target: torch.Tensor, dictionary: torch.Tensor, k: int) -> tuple[list[int], torch.Tensor]:
    """Orthogonal matching pursuit: ``target (E,) ~ weights @ dictionary[chosen]`` with ``k`` atoms.

    Returns the chosen rows and their least-squares weights.
    """
    residual = target.clone()
    chosen: list[int] = []
    weights = torch.zeros(0)
    atoms = F.normalize(dictionary, dim=-1)
    for _ in range(min(k, dictionary.shape[0])):
        scores = (atoms @ residual).abs()
        if chosen:
            scores[chosen] = -1
        chosen.append(int(scores.argmax()))
        basis = dictionary[chosen].T  # (E, j)
        weights = torch.linalg.lstsq(basis, target.unsqueeze(1)).solution.squeeze(1)
        residual = target - basis @ weights
        if residual.norm() < 1e-6 * target.norm():
            break
    return chosen, weights


def sparse_words(
    model, hook: str, neuron: int, vocab: Vocabulary, k: int = 3, embeddings: torch.Tensor | None = None
) -> list[tuple[str, float]]:
    """A neuron's direct effect written as a sparse mix of ``k`` words (OMP), strongest first."""
    text = text_embeddings(model, vocab) if embeddings is None else embeddings
    u = F.normalize(joint_directions(model, output_directions(model, hook, [neuron])).cpu(), dim=-1)[0]
    chosen, weights = omp(u, text, k)
    pairs = [(vocab.concepts[i], float(w)) for i, w in zip(chosen, weights, strict=True)]
    return sorted(pairs, key=lambda p: -abs(p[1]))


def write_table(
    out: Path, hook: str, table: list[dict], method: str, vocabulary: Vocabulary, *, identity: dict
) -> list[Path]:
    """Write ``neuron -> words, scores`` as parquet and CSV (one row per neuron and rank, with the neuron's ``tied``
    count) under ``out/<hook>/``,
    each row with the model and weights it names (``identity``: the named model's ``identity()``), so that an
    atlas never shows one model's words on another's neurons."""
    rows = [
        {
            "hook": hook,
            "neuron": r["neuron"],
            "rank": k,
            "word": w,
            "score": s,
            "method": method,
            "vocabulary": vocabulary.name,
            "model": identity["model"],
            "weights": identity["weights"],
            "tied": r.get("tied", 1),
        }
        for r in table
        for k, (w, s) in enumerate(zip(r["words"], r["scores"], strict=True))
    ]
    return write_concepts(Path(out), hook, method, rows)


@torch.no_grad()
def visual_words(
    labeller,
    images: torch.Tensor,
    vocab: Vocabulary,
    top_k: int = 5,
    embeddings: torch.Tensor | None = None,
    contrast: bool = True,
    a: float = 10.0,
    population: torch.Tensor | None = None,
) -> list[dict]:
    """Rank the vocabulary for each group of feature visualizations ``images`` (neurons, samples, 3, H, W) by the
    cosine between the mean of their unit image embeddings (from the CLIP ``labeller``) and the text embeddings.

    With ``contrast``, each concept is scored instead by its pointwise mutual information with the group,
    CLIP-Dissect's prior applied to visualizations: ``log P(c | group) - log mean_population P(c | group')`` with
    ``P = softmax_c(a * cos)``. Feature visualizations share a look no natural image has, and a labeller reads that
    look as the same few concepts for every neuron (a hub); the population's mean removes it, so a concept wins
    where this group is read as it more than the population's groups are. The population is ``population``
    (groups of visualizations made alike, e.g. of a fixed set of the layer's neurons: a neuron's words then do not
    depend on which others are named with it), else the groups themselves where there are several.
    """
    text = text_embeddings(labeller, vocab) if embeddings is None else embeddings

    def cosines(groups: torch.Tensor) -> torch.Tensor:
        n, s = groups.shape[:2]
        emb = F.normalize(labeller.encode_image(groups.flatten(0, 1)).float(), dim=-1).reshape(n, s, -1).mean(1)
        return F.normalize(emb, dim=-1).cpu() @ text.T

    scores = cosines(images)
    reference = scores if population is None else cosines(population)
    if contrast and reference.shape[0] > 1:
        log_p = (a * scores.double()).log_softmax(dim=1)
        log_ref = (a * reference.double()).log_softmax(dim=1)
        prior = torch.logsumexp(log_ref, dim=0) - torch.log(torch.tensor(float(len(log_ref)), dtype=torch.float64))
        scores = (log_p - prior).float()
    return words_table(scores, vocab.concepts, top_k)


#: How many of a layer's neurons ``reference_neurons`` chooses as the visual method's population.
REFERENCE_NEURONS = 16


def reference_neurons(width: int, count: int = REFERENCE_NEURONS) -> list[int]:
    """A fixed, evenly spread set of a layer's neurons whose visualizations are the visual method's population.

    >>> reference_neurons(512)[:4], reference_neurons(3)
    ([0, 34, 68, 102], [0, 1, 2])
    """
    n = min(count, width)
    return sorted({round(i * (width - 1) / max(n - 1, 1)) for i in range(n)})
