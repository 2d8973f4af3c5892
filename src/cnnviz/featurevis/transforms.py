"""Transformation robustness: the random jitter, scale and rotation an optimised image must survive.

An image optimised to excite a unit in one exact position fills with high-frequency patterns
that the unit answers but a person cannot read. Olah, Mordvintsev & Schubert ("Feature
Visualization", Distill 2017, "Transformation robustness") instead maximise the objective of a
*randomly transformed* image each step. Lucid's standard stack, for a 224-pixel model, is

    pad 12 (grey) → jitter 8 → scale ∈ {0.90, 0.92, …, 1.10} → rotate ∈ [−10°, 10°] → jitter 4

cnnviz draws the same distribution of moves but composes them into **one** affine resampling
per image (``affine_grid`` + ``grid_sample``, bilinear), so a step costs one pass over the
pixels instead of five, and every image of a batch gets its own draw:

    src = R(−θ) · dst / s + t,   s ~ U(0.9, 1.1),  θ ~ U(−10°, 10°),  t = t₁ + t₂,
    t₁ ~ U(−j₁/2, j₁/2)², t₂ ~ U(−j₂/2, j₂/2)²   (pixels, about the image centre)

Where the transformed image leaves the canvas it is filled with mid-grey, which is what Lucid's
padding shows the model. The output has the input's size, so models with a fixed input size
work. The pixel amounts (padding, jitters) scale with the image: a 64×64 model gets
``64 / 224`` of them, so small inputs stay sharp instead of being blurred by moves meant for
224 pixels (lucent #10), and nothing is upsampled. Draws come from a ``torch.Generator``, so a
seed reproduces them. Example::

    moves = RobustnessTransforms().for_size((64, 64))
    moved = moves(images, torch.Generator().manual_seed(0))   # same shape, differentiable
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

REFERENCE_SIDE = 224
"""The image side Lucid's pixel amounts were chosen for."""

FILL = 0.5
"""The grey that fills the canvas where the moved image does not reach (Lucid's padding value)."""


@dataclasses.dataclass(frozen=True)
class RobustnessTransforms:
    """The random moves applied to the image before each step (see the module docstring).

    Attributes:
        jitter: the first jitter, pixels (Lucid: 8 at 224).
        scale: the range of the random scale (Lucid: 0.9 to 1.1).
        degrees: the largest rotation either way (Lucid: 10°).
        jitter_after: the second jitter, pixels (Lucid: 4 at 224).
        pad: the grey border Lucid pads with, pixels (12 at 224); moves that reach past the
            image show grey, so it is kept for the record and as the bound on the shift.
    """

    jitter: float = 8.0
    scale: tuple[float, float] = (0.9, 1.1)
    degrees: float = 10.0
    jitter_after: float = 4.0
    pad: float = 12.0

    def __post_init__(self) -> None:
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"scale must be a range 0 < low ≤ high, got {self.scale!r}")
        for name in ("jitter", "degrees", "jitter_after", "pad"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")

    def for_size(self, size: tuple[int, int]) -> RobustnessTransforms:
        """These moves with their pixel amounts scaled from 224 pixels to ``size``'s longer side."""
        factor = max(size) / REFERENCE_SIDE
        return dataclasses.replace(
            self,
            jitter=self.jitter * factor,
            jitter_after=self.jitter_after * factor,
            pad=self.pad * factor,
        )

    @property
    def identity(self) -> bool:
        return (
            self.jitter == 0
            and self.jitter_after == 0
            and self.degrees == 0
            and self.scale == (1.0, 1.0)
        )

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``(batch, 4)`` draws: scale, angle (radians), shift x and shift y (pixels)."""
        u = torch.rand((batch, 6), generator=generator, dtype=torch.float64)
        low, high = self.scale
        scale = low + (high - low) * u[:, 0]
        angle = torch.deg2rad((2 * u[:, 1] - 1) * self.degrees)
        shift = (u[:, 2:4] - 0.5) * self.jitter + (u[:, 4:6] - 0.5) * self.jitter_after
        return torch.stack([scale, angle, shift[:, 0], shift[:, 1]], dim=1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``images`` (B, C, H, W) moved, each by its own draw from ``generator``."""
        if self.identity:
            return images
        return move(images, self.draw(images.shape[0], generator))


def affine_matrices(draws: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 2, 3)`` matrices for ``affine_grid`` (normalised coordinates, ``align_corners=False``)
    that map each output pixel to ``R(−θ) · dst / s + t`` in the input."""
    height, width = size
    scale, angle, shift_x, shift_y = draws.unbind(dim=1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # In pixels src = [[cos, sin], [-sin, cos]] · dst + t; normalised x is px / (W / 2).
    aspect = width / height
    matrices = torch.zeros((draws.shape[0], 2, 3), dtype=draws.dtype)
    matrices[:, 0, 0] = cos
    matrices[:, 0, 1] = sin / aspect
    matrices[:, 1, 0] = -sin * aspect
    matrices[:, 1, 1] = cos
    matrices[:, 0, 2] = shift_x * 2 / width
    matrices[:, 1, 2] = shift_y * 2 / height
    return matrices


def move(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Resample ``images`` by ``draws`` (:meth:`RobustnessTransforms.draw`), grey outside."""
    matrices = affine_matrices(draws, (images.shape[-2], images.shape[-1]))
    matrices = matrices.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(matrices, list(images.shape), align_corners=False)
    moved = F.grid_sample(
        images - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return moved + FILL
