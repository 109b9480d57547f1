"""Image parameterisations: what the optimiser changes to produce images in [0, 1].

Each holds ``n`` independent images, one per objective, each initialised from its own seed, so an image does
not depend on which other images share its batch.

* ``PixelImage``: raw RGB pixels, initialised ``U[0, 1)`` and clamped to ``[0, 1]`` after every step (the ViT paper).
* ``FourierImage``: a scaled 2-D Fourier spectrum with decorrelated colour and a sigmoid (Lucid).
* ``MacoImage``: a fixed magnitude spectrum, only the phase is optimised (MaCo, Fel et al. 2023); the default
  magnitude is the ``1/f`` power law of natural images.

>>> import torch
>>> p = PixelImage([0, 1], size=(32, 32))
>>> p().shape
torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from clipviz.images import luminance

# Square root of the colour correlation of natural images (Lucid's ImageNet estimate), normalised below.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _frequencies(h: int, w: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def _decorrelated_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """``einsum("nchw,dc->ndhw", x, _COLOR_SQRT)`` as one broadcast matrix product over the flattened pixels:
    the same bits (values and gradients; ``tests/test_speedups.py``), a contiguous result, and at one thread
    1.3 ms instead of 14 ms forward + backward for 4 images of 224 px (the einsum's batched product with
    3-long rows and its channels-last output)."""
    n, c, h, w = x.shape
    return torch.matmul(_COLOR_SQRT.to(x), x.reshape(n, c, h * w)).view(n, -1, h, w)


class ImageParam(nn.Module, ABC):
    """Base class: ``forward()`` returns ``(n, 3, H, W)`` images in ``[0, 1]``; with ``grey``, their luminance in
    all three channels (for a model that reads one channel: ``clipviz.model.channels``)."""

    def __init__(self, seeds: Sequence[int], size: tuple[int, int], grey: bool = False):
        super().__init__()
        self.seeds = [int(s) for s in seeds]
        self.size = (int(size[0]), int(size[1]))
        self.grey = bool(grey)

    def forward(self) -> torch.Tensor:
        x = self.render()
        return luminance(x).expand_as(x) if self.grey else x

    @abstractmethod
    def render(self) -> torch.Tensor:
        """The parameterisation's RGB images (n, 3, H, W) in [0, 1]."""

    @property
    def n(self) -> int:
        return len(self.seeds)

    @torch.no_grad()
    def after_step(self) -> None:
        """Project back onto the feasible set after an optimiser step (no-op unless overridden)."""

    @torch.no_grad()
    def set_image(self, images: torch.Tensor) -> None:
        """Start from ``images`` (n, 3, H, W) in [0, 1] instead of the seeded noise (feature accentuation)."""
        from clipviz.errors import ClipvizError

        raise ClipvizError(
            f"the {type(self).__name__} parameterisation cannot start from an image; use pixel or fourier"
        )


class PixelImage(ImageParam):
    def __init__(self, seeds: Sequence[int], size: tuple[int, int], grey: bool = False):
        super().__init__(seeds, size, grey)
        h, w = self.size
        init = torch.stack([torch.rand(3, h, w, generator=g) for g in _generators(self.seeds)])
        self.pixels = nn.Parameter(init)

    def render(self) -> torch.Tensor:
        return self.pixels

    @torch.no_grad()
    def after_step(self) -> None:
        self.pixels.clamp_(0.0, 1.0)

    @torch.no_grad()
    def set_image(self, images: torch.Tensor) -> None:
        self.pixels.copy_(images.to(self.pixels).clamp(0, 1))


class FourierImage(ImageParam):
    """Lucid's parameterisation: spectrum scaled by ``1/f**decay``, decorrelated colour, sigmoid."""

    def __init__(
        self, seeds: Sequence[int], size: tuple[int, int], grey: bool = False, std: float = 0.01, decay: float = 1.0
    ):
        super().__init__(seeds, size, grey)
        h, w = self.size
        freqs = _frequencies(h, w)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay
        # complex once here: the product with the complex spectrum promoted the real scale at every step (and its
        # backward again); the promoted values are these, so the images are the same bits
        self.register_buffer("scale", scale.to(torch.complex64), persistent=False)
        init = torch.stack([torch.randn(3, h, w // 2 + 1, 2, generator=g) * std for g in _generators(self.seeds)])
        self.spectrum = nn.Parameter(init)

    def render(self) -> torch.Tensor:
        h, w = self.size
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") / 4.0
        return torch.sigmoid(_decorrelated_to_rgb(x))

    @torch.no_grad()
    def set_image(self, images: torch.Tensor) -> None:
        """The inverse of ``forward``: pixels clamped to [1/512, 1 - 1/512] (so the logit is finite), so an
        8-bit image comes back exactly after rounding."""
        h, w = self.size
        logit = torch.logit(images.to(self.spectrum).clamp(1 / 512, 1 - 1 / 512))
        x = torch.einsum("ndhw,cd->nchw", logit, torch.linalg.inv(_COLOR_SQRT).to(logit)) * 4.0
        spectrum = torch.fft.rfft2(x, s=(h, w), norm="ortho") / self.scale
        self.spectrum.copy_(torch.view_as_real(spectrum))


class _AddColour(torch.autograd.Function):
    """``x + colour`` for ``x`` (n, 3, H, W) and ``colour`` (n, 3, 1, 1), whose gradient for ``colour`` is the
    per-image sum over (H, W) of a contiguous gradient. The gradient arrives with a memory layout that depends on
    the batch size, and autograd's own reduction then summed in another order for a batch of 8 than for a batch of 1
    (1e-6 apart), so an image's colour and phase depended on its batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        return x + colour

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()  # the decorrelation's backward hands a batch-dependent memory layout
        return grad, grad.sum(dim=(2, 3), keepdim=True)


class MacoImage(ImageParam):
    """Magnitude-constrained Fourier image: ``irfft(magnitude * exp(i * phase))`` scaled to unit variance, plus a
    learnable mean colour per image (the fixed spectrum alone cannot make a globally red image), decorrelated
    colour, sigmoid.

    ``magnitude`` (3, H, W//2+1) defaults to ``1/f``; pass a photo's own magnitude to reconstruct that photo.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        size: tuple[int, int],
        grey: bool = False,
        magnitude: torch.Tensor | None = None,
        decorrelate: bool = True,
    ):
        super().__init__(seeds, size, grey)
        h, w = self.size
        if magnitude is None:
            magnitude = (1.0 / torch.clamp(_frequencies(h, w), min=1.0 / max(h, w))).expand(3, -1, -1).clone()
        self.register_buffer("magnitude", magnitude.float(), persistent=False)
        self.decorrelate = decorrelate
        init = torch.stack(
            [(torch.rand(3, h, w // 2 + 1, generator=g) * 2 - 1) * torch.pi for g in _generators(self.seeds)]
        )
        self.phase = nn.Parameter(init)
        self.colour = nn.Parameter(torch.zeros(self.n, 3, 1, 1))

    def render(self) -> torch.Tensor:
        h, w = self.size
        x = torch.fft.irfft2(torch.polar(self.magnitude.expand_as(self.phase), self.phase), s=(h, w), norm="ortho")
        x = _AddColour.apply(x / (x.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-8), self.colour)
        if self.decorrelate:
            x = _decorrelated_to_rgb(x) * 2.0
        return torch.sigmoid(x)


PARAMETERISATIONS = {"pixel": PixelImage, "fourier": FourierImage, "maco": MacoImage}


def make_param(kind: str, seeds: Sequence[int], size: tuple[int, int], grey: bool = False) -> ImageParam:
    from clipviz.errors import ClipvizError

    if kind not in PARAMETERISATIONS:
        raise ClipvizError(f"unknown parameterisation '{kind}'; accepted: {', '.join(PARAMETERISATIONS)}")
    return PARAMETERISATIONS[kind](seeds, size, grey)
