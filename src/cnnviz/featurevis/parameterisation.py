"""How the optimised image is parameterised: Fourier with decorrelated colour, or plain pixels.

Feature visualisation optimises an image, but *which* variables are optimised decides what comes
out. Olah, Mordvintsev & Schubert ("Feature Visualization", Distill 2017, section
"Preconditioning and Parameterization") optimise the image's Fourier coefficients, scaled by
``1 / f`` so that every frequency has about the same energy, with the colours decorrelated and a
sigmoid keeping pixels in (0, 1):

    spectrum S ∈ ℂ^{B×C×H×(W/2+1)},  s(f) = 1 / max(|f|, 1 / max(H, W))^decay
    y = irfft2(s · S) / 4                      (orthonormal inverse FFT)
    x = σ( M · y )                             (per pixel, M: 3×3 colour matrix, RGB only)

``M`` is the square root of ImageNet's colour covariance (Lucid's ``color_correlation_svd_sqrt``)
divided by its largest column norm. A model with another number of input channels (grayscale,
RGBA, multispectral) gets one independent Fourier image per channel (``M`` is the identity), so a
grayscale model sees a grayscale parameterisation.

The pixel parameterisation is ``x = σ(P)``, or ``x = P`` clamped to [0, 1] with
``sigmoid=False`` — Simonyan, Vedaldi & Zisserman's class models (ICLR 2014 workshop) are
L2-regularised ascent on raw pixels.

A unit that is dead on the near-grey start (a ReLU channel that answers nothing there, so its
gradient is zero) would never move; ``restart`` draws such images again with more contrast
(:mod:`cnnviz.featurevis.optimise` does it during the first steps).

Every parameterisation is an ``nn.Module`` without inputs: ``image = param()`` is a
``(B, C, H, W)`` tensor in [0, 1] that depends differentiably on ``param.parameters()``.
Example::

    seeded = torch.Generator().manual_seed(0)
    param = FourierImage(batch=4, channels=3, size=(128, 128), generator=seeded)
    image = param()            # (4, 3, 128, 128), values in (0, 1)
"""

from __future__ import annotations

import torch
from torch import nn

from cnnviz.options import Parameterisation

COLOUR_CORRELATION_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)
"""The square root of ImageNet's RGB covariance (Lucid's ``color_correlation_svd_sqrt``)."""

FOURIER_MAGIC = 4.0
"""Lucid divides the inverse transform by 4 so that the initial image is near mid-grey."""


def colour_matrix(channels: int) -> torch.Tensor:
    """``M`` for ``channels`` input channels: Lucid's decorrelation for RGB, else the identity."""
    if channels == 3:
        matrix = COLOUR_CORRELATION_SQRT
        return matrix / matrix.norm(dim=0).max()  # type: ignore[no-any-return]  # Tensor ops
    return torch.eye(channels)


def frequency_scale(size: tuple[int, int], decay: float = 1.0) -> torch.Tensor:
    """``1 / max(|f|, 1 / max(H, W))^decay`` on the ``(H, W // 2 + 1)`` grid of ``rfft2``."""
    height, width = size
    fy = torch.fft.fftfreq(height).view(-1, 1)
    fx = torch.fft.rfftfreq(width).view(1, -1)
    magnitude = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(magnitude, min=1.0 / max(height, width)) ** decay


def redraw(
    values: torch.Tensor,
    images: torch.Tensor,
    generator: torch.Generator,
    sd: float,
    centre: float = 0.0,
) -> None:
    """Draw the entries of the ``images`` (a boolean mask over the first dimension) of
    ``values`` again from ``N(centre, sd²)``, in place."""
    with torch.no_grad():
        fresh = torch.randn(values.shape, generator=generator) * sd + centre
        mask = images.to(values.device).view(-1, *[1] * (values.dim() - 1))
        values.copy_(torch.where(mask, fresh.to(values.device), values))


class FourierImage(nn.Module):
    """A batch of images parameterised by scaled Fourier coefficients and decorrelated colour.

    Args:
        batch: images in the batch.
        channels: the model's input channels (3: decorrelated RGB; otherwise independent).
        size: ``(H, W)``.
        generator: seeds the initial coefficients (normal, standard deviation ``sd``).
        sd: standard deviation of the initial coefficients (Lucid: 0.01).
        decay: exponent of the ``1/f`` scaling (Lucid: 1).
    """

    def __init__(
        self,
        batch: int,
        channels: int,
        size: tuple[int, int],
        *,
        generator: torch.Generator | None = None,
        sd: float = 0.01,
        decay: float = 1.0,
    ) -> None:
        super().__init__()
        height, width = size
        shape = (batch, channels, height, width // 2 + 1, 2)
        self.size = (height, width)
        self.sd = sd
        self.spectrum = nn.Parameter(torch.randn(shape, generator=generator) * sd)
        self.scale: torch.Tensor
        self.colours: torch.Tensor
        self.register_buffer("scale", frequency_scale(self.size, decay), persistent=False)
        self.register_buffer("colours", colour_matrix(channels), persistent=False)

    def restart(self, images: torch.Tensor, generator: torch.Generator, factor: float) -> None:
        """Draw the coefficients of ``images`` (a boolean mask over the batch) again, with
        ``factor`` times the spread: a start on which the unit is dead gets more contrast."""
        self.sd *= factor
        redraw(self.spectrum, images, generator, self.sd)

    def forward(self) -> torch.Tensor:
        coefficients = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(coefficients, s=self.size, norm="ortho") / FOURIER_MAGIC
        mixed = torch.einsum("ij,bjhw->bihw", self.colours, image)
        return torch.sigmoid(mixed)


class PixelImage(nn.Module):
    """A batch of images whose pixels are optimised directly.

    With ``sigmoid=True`` (default) ``x = σ(P)`` starts near mid-grey; with ``False`` the image is
    ``P`` clamped to [0, 1] (the gradient passes where it is inside), as in Simonyan et al. 2014.
    """

    def __init__(
        self,
        batch: int,
        channels: int,
        size: tuple[int, int],
        *,
        generator: torch.Generator | None = None,
        sd: float = 0.01,
        sigmoid: bool = True,
    ) -> None:
        super().__init__()
        start = torch.randn((batch, channels, *size), generator=generator) * sd
        self.sigmoid = sigmoid
        self.sd = sd
        self.pixels = nn.Parameter(start if sigmoid else start + 0.5)

    def restart(self, images: torch.Tensor, generator: torch.Generator, factor: float) -> None:
        """Draw the pixels of ``images`` (a boolean mask over the batch) again, ``factor`` times
        as spread."""
        self.sd *= factor
        redraw(self.pixels, images, generator, self.sd, 0.0 if self.sigmoid else 0.5)

    def forward(self) -> torch.Tensor:
        if self.sigmoid:
            return torch.sigmoid(self.pixels)
        return self.pixels.clamp(0.0, 1.0)


def make_image(
    kind: Parameterisation,
    batch: int,
    channels: int,
    size: tuple[int, int],
    *,
    generator: torch.Generator | None = None,
    sd: float = 0.01,
) -> FourierImage | PixelImage:
    """The parameterised image of ``kind`` (see the module docstring), its initial coefficients
    (or pixels) drawn with standard deviation ``sd``."""
    if batch < 1 or channels < 1 or min(size) < 2:
        raise ValueError(
            "a parameterised image needs batch ≥ 1, channels ≥ 1 and sides ≥ 2, got "
            f"batch={batch}, "
            f"channels={channels}, size={size}"
        )
    if Parameterisation(kind) is Parameterisation.FOURIER:
        return FourierImage(batch, channels, size, generator=generator, sd=sd)
    return PixelImage(batch, channels, size, generator=generator, sd=sd)
