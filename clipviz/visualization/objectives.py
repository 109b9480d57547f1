"""Objectives: what a visualization maximises, one value per image in the batch.

Objectives compose with ``+``, ``-``, unary ``-`` and scalar ``*``; each operation returns a new objective and
never changes its operands. An objective evaluates to a tensor ``(n,)``: one value per image, to be *maximised*.

>>> a, b = Neuron("blocks.0.mlp.hook_post", 3), Neuron("blocks.1.mlp.hook_post", 5)
>>> combo = a - 0.5 * b
>>> combo.hooks
('blocks.0.mlp.hook_post', 'blocks.1.mlp.hook_post')
>>> str(combo)
'1*neuron(blocks.0.mlp.hook_post, 3, patches) + -0.5*neuron(blocks.1.mlp.hook_post, 5, patches)'
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real

import torch
import torch.nn.functional as F

from clipviz.errors import ClipvizError
from clipviz.model.layout import Reduce, check_reduce, reduce_tokens
from clipviz.visualization.penalties import l2_penalty, total_variation


@dataclass
class Context:
    """What objectives read: activations of the augmented batch, the head output, the clean images."""

    model: object  # HookedVisionModel
    cache: dict[str, torch.Tensor]  # name -> (n * copies, ...)
    output: torch.Tensor | None  # (n * copies, ...) head output, if it was computed
    images: torch.Tensor  # (n, 3, H, W) before augmentation
    copies: int
    picked: dict[int, torch.Tensor] = field(default_factory=dict)  # id(Neuron) -> (n * copies, N), if sliced

    @property
    def n(self) -> int:
        return self.images.shape[0]

    def act(self, name: str) -> torch.Tensor:
        value = self.cache[name]
        return value.reshape(self.n, self.copies, *value.shape[1:])

    def head(self) -> torch.Tensor:
        if self.output is None:
            raise RuntimeError("this objective needs the model's output, but the forward pass stopped early")
        return self.output.reshape(self.n, self.copies, *self.output.shape[1:])


class Objective(ABC):
    """Base class. Subclasses set ``hooks`` / ``needs_output`` and implement ``__call__(ctx) -> (n,)``."""

    hooks: tuple[str, ...] = ()
    needs_output: bool = False

    @abstractmethod
    def __call__(self, ctx: Context) -> torch.Tensor:
        """One value per image, to be maximised."""

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum(((1.0, self), (1.0, other)))

    def __radd__(self, other):
        if isinstance(other, Real) and other == 0:  # sum([...]) starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum(((1.0, self), (-1.0, other)))

    def __mul__(self, scalar: float) -> Objective:
        if not isinstance(scalar, Real):
            return NotImplemented
        return Sum(((float(scalar), self),))

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return Sum(((-1.0, self),))

    def __truediv__(self, scalar: float) -> Objective:
        if not isinstance(scalar, Real):
            return NotImplemented
        return self * (1.0 / float(scalar))


@dataclass(frozen=True, eq=False)
class Sum(Objective):
    """A weighted sum of objectives (what the arithmetic operators build); flattened, never nested in place."""

    terms: tuple[tuple[float, Objective], ...]

    def __post_init__(self):
        flat: list[tuple[float, Objective]] = []
        for weight, term in self.terms:
            if isinstance(term, Sum):
                flat += [(weight * w, t) for w, t in term.terms]
            else:
                flat.append((weight, term))
        object.__setattr__(self, "terms", tuple(flat))

    @property
    def hooks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h for _, t in self.terms for h in t.hooks))

    @property
    def needs_output(self) -> bool:
        return any(t.needs_output for _, t in self.terms)

    def __call__(self, ctx: Context) -> torch.Tensor:
        return sum(w * t(ctx) for w, t in self.terms)

    def __str__(self) -> str:
        return " + ".join(f"{w:g}*{t}" for w, t in self.terms)


def _indices(value, n: int, size: int, what: str, device) -> torch.Tensor:
    """One index per image, range-checked on the CPU (a check on the GPU would wait for it at every step) and
    copied to ``device`` once per request, not at every step."""
    key = (int(value),) if isinstance(value, int) else tuple(int(v) for v in torch.as_tensor(value).flatten())
    return _device_indices(key, n, size, what, torch.device(device))


@functools.lru_cache(maxsize=64)
def _device_indices(key: tuple[int, ...], n: int, size: int, what: str, device: torch.device) -> torch.Tensor:
    t = torch.tensor(key, dtype=torch.long)
    t = t.expand(n) if len(key) == 1 and n != 1 else t
    if t.numel() and (int(t.max()) >= size or int(t.min()) < 0):
        raise ClipvizError(
            f"{what} index out of range: {size} accepted (0..{size - 1}), got "
            f"{int(t.max()) if int(t.max()) >= size else int(t.min())}"
        )
    return t.to(device)


class _AtHook(Objective):
    """An objective on the activations at one hook (``hook``), reduced over tokens by ``reduce``."""

    def __post_init__(self):
        object.__setattr__(self, "reduce", check_reduce(self.reduce))

    @property
    def hooks(self) -> tuple[str, ...]:
        return (self.hook,)


class PatchTokens(Objective):
    """An objective on the patch tokens (prefix tokens dropped) of the activations at one hook (``hook``)."""

    @property
    def hooks(self) -> tuple[str, ...]:
        return (self.hook,)

    def patches(self, ctx: Context) -> torch.Tensor:
        """(n, copies, T, C) float activations of the patch tokens at ``hook``."""
        act = ctx.act(self.hook).float()
        if act.ndim != 4:
            raise ClipvizError(
                f"{type(self).__name__} needs (B, N, C) activations; hook '{self.hook}' gives "
                f"{tuple(ctx.cache[self.hook].shape)}"
            )
        return act[:, :, ctx.model.hook_layout(self.hook).n_prefix :]


@dataclass(frozen=True, eq=False)
class Neuron(_AtHook):
    """Mean activation of neuron ``index`` at ``hook`` (one index, or one per image), reduced over tokens.

    ``reduce``: ``"patches"`` (mean over patch tokens, prefix tokens excluded: the ViT paper), ``"cls"``,
    ``"all"``, ``"max"``, ``("patch", row, col)`` or ``("region", r0, r1, c0, c1)``.
    """

    hook: str
    index: int | Sequence[int]
    reduce: Reduce = "patches"

    def __call__(self, ctx: Context) -> torch.Tensor:
        sliced = ctx.picked.get(id(self))  # computed by the sliced MLP (clipviz.visualization.sliced)
        picked = self._pick(ctx) if sliced is None else sliced.reshape(ctx.n, ctx.copies, -1)
        return reduce_tokens(picked.float(), self.reduce, ctx.model.hook_layout(self.hook)).mean(1)

    def _pick(self, ctx: Context) -> torch.Tensor:
        act = ctx.act(self.hook)  # (n, copies, N, d)
        if act.ndim != 4:
            raise ClipvizError(
                f"neuron objectives need (B, N, d) activations; hook '{self.hook}' gives "
                f"{tuple(ctx.cache[self.hook].shape)}"
            )
        idx = _indices(self.index, ctx.n, act.shape[-1], f"neuron (hook '{self.hook}')", act.device)
        return act.gather(-1, idx.view(-1, 1, 1, 1).expand(*act.shape[:3], 1)).squeeze(-1)

    def __str__(self) -> str:
        index = self.index if isinstance(self.index, int) else list(self.index)
        return f"neuron({self.hook}, {index}, {self.reduce})"


@dataclass(frozen=True, eq=False)
class Direction(_AtHook):
    """Dot product of the activations at ``hook`` with a direction ``(d,)`` or one per image ``(n, d)``."""

    hook: str
    vector: torch.Tensor
    reduce: Reduce = "patches"
    cosine: bool = False

    def __call__(self, ctx: Context) -> torch.Tensor:
        act = ctx.act(self.hook).float()
        vec = self.vector.to(act)
        vec = vec.expand(ctx.n, -1) if vec.ndim == 1 else vec
        if self.cosine:
            act, vec = F.normalize(act, dim=-1), F.normalize(vec, dim=-1)
        values = torch.einsum("ncth,nh->nct", act, vec)
        return reduce_tokens(values, self.reduce, ctx.model.hook_layout(self.hook)).mean(1)

    def __str__(self) -> str:
        return f"direction({self.hook}, d={self.vector.shape[-1]}, {self.reduce})"


@dataclass(frozen=True, eq=False)
class TextDirection(Objective):
    """Cosine between the image embedding and a text embedding ``(E,)`` or one per image ``(n, E)``.

    Build it with ``TextDirection.from_prompts(model, ["a dog", ...])``.
    """

    embedding: torch.Tensor
    prompts: tuple[str, ...] = ()
    needs_output: bool = True

    @classmethod
    def from_prompts(cls, model, prompts: Sequence[str]) -> TextDirection:
        with torch.no_grad():
            emb = model.encode_text(list(prompts)).float()
        return cls(embedding=emb, prompts=tuple(prompts))

    def __call__(self, ctx: Context) -> torch.Tensor:
        img = F.normalize(ctx.head().float(), dim=-1)  # (n, copies, E)
        txt = F.normalize(self.embedding.to(img), dim=-1)
        txt = txt.expand(ctx.n, -1) if txt.ndim == 1 else txt
        return torch.einsum("nce,ne->nc", img, txt).mean(1)

    def __str__(self) -> str:
        return f"text({list(self.prompts) or 'embedding'})"


@dataclass(frozen=True, eq=False)
class ClassLogit(Objective):
    """Log-probability of class ``index`` (one, or one per image): maximising it minimises cross-entropy (PII)."""

    index: int | Sequence[int]
    needs_output: bool = True

    def __call__(self, ctx: Context) -> torch.Tensor:
        logits = ctx.head().float()  # (n, copies, classes)
        idx = _indices(self.index, ctx.n, logits.shape[-1], "class", logits.device)
        logp = logits.log_softmax(-1)
        return logp.gather(-1, idx.view(-1, 1, 1).expand(*logp.shape[:2], 1)).squeeze(-1).mean(1)

    def __str__(self) -> str:
        return f"class({self.index})"


@dataclass(frozen=True, eq=False)
class Diversity(Objective):
    """Pushes images of the same group apart: minus the mean cosine similarity between an image's activation
    Gram matrix at ``hook`` and those of the other images in its group (Lucid's diversity term)."""

    hook: str
    groups: Sequence[int] = field(default_factory=tuple)

    @property
    def hooks(self) -> tuple[str, ...]:
        return (self.hook,)

    def __call__(self, ctx: Context) -> torch.Tensor:
        act = ctx.act(self.hook).float().mean(1)  # (n, N, d)
        gram = F.normalize((act.transpose(1, 2) @ act).flatten(1), dim=-1)
        sim = gram @ gram.T
        groups = torch.as_tensor(self.groups or [0] * ctx.n, device=sim.device)
        same = (groups[:, None] == groups[None, :]) & ~torch.eye(ctx.n, dtype=torch.bool, device=sim.device)
        count = same.sum(1).clamp(min=1)
        return -(sim * same).sum(1) / count

    def __str__(self) -> str:
        return f"diversity({self.hook})"


class _ImagePenalty(Objective):
    """Minus a penalty computed on each clean image (``penalty``: (n, 3, H, W) -> (n,))."""

    label: str
    penalty: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, ctx: Context) -> torch.Tensor:
        return -type(self).penalty(ctx.images)

    def __str__(self) -> str:
        return f"-{self.label}"


class TotalVariation(_ImagePenalty):
    """Minus the ViT paper's 4-direction total variation of each clean image (a smoothness prior)."""

    label = "tv"
    penalty = staticmethod(total_variation)


class L2(_ImagePenalty):
    """Minus the mean squared distance of each clean image from mid-grey."""

    label = "l2"
    penalty = staticmethod(l2_penalty)
