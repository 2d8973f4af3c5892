"""Model preprocessing: how an image becomes the tensor a model expects.

The pipeline is timm's evaluation transform, written out: resize (shorter side, or both sides for
a non-square input), centre-crop to ``input_size``, scale to ``[0, 1]``, normalise per channel.
:func:`resize_and_crop` stops before the scaling, so overlays are drawn on exactly the pixels the
model saw; :func:`denormalize` undoes the normalisation of a tensor.

A model with ``C`` input channels has ``C`` means and stds; the image is resized in the Pillow
mode of that count (:data:`cnnviz.inputs.images.CHANNEL_MODES`: 1 grey, 2 grey+alpha, 3 RGB,
4 RGBA), so the tensor has ``C`` channels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from cnnviz.errors import positive_int
from cnnviz.inputs.images import image_mode

if TYPE_CHECKING:
    from PIL import Image

from cnnviz.options import INTERPOLATIONS as INTERPOLATIONS  # re-exported, defined once


@dataclass(frozen=True)
class Preprocessing:
    """Resize, centre-crop and normalise settings (timm's ``pretrained_cfg`` vocabulary).

    The image is resized so its shorter side is ``floor(input_size / crop_pct)`` with
    ``interpolation`` (timm's rule; both sides are resized to ``floor(side / crop_pct)`` when
    ``input_size`` is not square), centre-cropped to ``input_size`` (height, width) and
    normalised with ``mean``/``std``: one value per input channel (ImageNet's R, G, B by
    default), so ``len(mean) == len(std)`` is the model's channel count, :attr:`channels`.
    Sequences are stored as tuples of floats.
    """

    input_size: tuple[int, int] = (224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or any(
            not isinstance(s, int) or s < 1 for s in self.input_size
        ):
            raise ValueError(
                f"input_size must be (height, width) positive integers, got {self.input_size!r}"
            )
        if not 0 < self.crop_pct <= 1 or not math.isfinite(self.crop_pct):
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            try:
                if isinstance(values, (str, bytes)):
                    raise TypeError(name)
                object.__setattr__(self, name, tuple(float(v) for v in values))
            except (TypeError, ValueError):
                raise TypeError(
                    f"{name} must be a sequence of numbers (one per channel), got {values!r}"
                ) from None
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(
                "mean and std need one value per input channel, as many of each (at least 1); "
                f"got {len(self.mean)} mean and {len(self.std)} std values: "
                f"{self.mean!r} and {self.std!r}"
            )
        if any(not math.isfinite(s) or s <= 0 for s in self.std) or not all(
            math.isfinite(m) for m in self.mean
        ):
            raise ValueError(
                f"std must be finite and positive, mean finite; got {self.mean!r}, {self.std!r}"
            )

    @property
    def channels(self) -> int:
        """The number of input channels: ``len(mean)`` (``== len(std)``)."""
        return len(self.mean)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One model input without the batch dimension: ``(channels, height, width)``."""
        return (self.channels, *self.input_size)

    def with_channels(self, n: int) -> Preprocessing:
        """A copy for a model with ``n`` input channels (everything but mean and std kept).

        The rule, applied to ``mean`` and to ``std`` alike: ``n == channels`` gives ``self``;
        ``n == 1`` the average of the values (ImageNet's RGB means become their grey mean);
        otherwise ``n < channels`` the first ``n`` values and ``n > channels`` the values followed,
        for each extra channel, by their average (RGB → RGBA appends the average for alpha).
        """
        positive_int(n, "n (the number of channels)")
        if n == self.channels:
            return self
        return dataclasses.replace(self, mean=_fitted(self.mean, n), std=_fitted(self.std, n))

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for manifests."""
        return {
            "input_size": list(self.input_size),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """The settings :meth:`to_dict` wrote (a manifest's ``model.preprocessing``)."""
        height, width = (int(v) for v in data["input_size"])
        return cls(
            input_size=(height, width),
            crop_pct=float(data["crop_pct"]),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
        )

    @property
    def resize_size(self) -> tuple[int, ...]:
        """The resize target: ``(shorter side,)`` for a square input, else ``(height, width)``.

        ``floor(side / crop_pct)`` as timm computes it; a quotient within 1e-6 of a whole number
        is that number, so torchvision's ``crop / resize`` ratios (224/232) come back exactly.
        """
        sides = [_scaled(side, self.crop_pct) for side in self.input_size]
        height, width = self.input_size
        return (sides[0],) if height == width else (sides[0], sides[1])


def _fitted(values: tuple[float, ...], n: int) -> tuple[float, ...]:
    """``values`` fitted to ``n`` channels by the rule of :meth:`Preprocessing.with_channels`."""
    average = math.fsum(values) / len(values)
    if n == 1:
        return (average,)
    if n <= len(values):
        return values[:n]
    return values + (average,) * (n - len(values))


def _scaled(side: int, crop_pct: float) -> int:
    exact = side / crop_pct
    nearest = round(exact)
    return nearest if abs(exact - nearest) < 1e-6 else math.floor(exact)


def resize_and_crop(image: Image.Image, prep: Preprocessing) -> Image.Image:
    """The resized and centre-cropped image: the pixels the model sees, before scaling.

    Its size is ``prep.input_size`` (height, width), the size of the model input, so maps
    upsampled to the input can be drawn on it directly. It is resized in the mode of
    ``prep.channels`` (``"L"``, ``"LA"``, ``"RGB"``, ``"RGBA"``); an image in another mode is
    first converted with Pillow's ``convert`` (which drops an alpha channel rather than
    compositing it: :func:`cnnviz.inputs.images.load_image_for` reads files the cnnviz way).

    Raises:
        ImageLoadError: ``prep`` has a channel count no image mode has (not 1, 2, 3 or 4).
    """
    # lazy: torchvision takes seconds to import
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    if not isinstance(image, PILImage.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    target_mode = image_mode(prep.channels)
    if image.mode != target_mode:
        image = image.convert(target_mode)
    mode = InterpolationMode(prep.interpolation)
    resized = TF.resize(image, list(prep.resize_size), interpolation=mode, antialias=True)
    cropped = TF.center_crop(resized, list(prep.input_size))
    if not isinstance(cropped, PILImage.Image):  # torchvision returns the input's type
        raise TypeError(f"torchvision returned {type(cropped).__name__} for a PIL image")
    return cropped


def normalize_pixels(pixels: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """``(pixels / 255 − mean) / std`` in float32 for uint8 ``(C, H, W)`` pixels, per channel.

    Raises:
        ValueError: ``C`` is not ``prep.channels``.
    """
    if pixels.dim() != 3 or pixels.shape[0] != prep.channels:
        raise ValueError(
            f"expected ({prep.channels}, H, W) pixels for a preprocessing with "
            f"{prep.channels} channel(s), got shape {tuple(pixels.shape)}"
        )
    scaled = pixels.to(torch.float32) / 255.0
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(-1, 1, 1)
    return (scaled - mean) / std


def preprocess_image(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """The normalised ``(C, H, W)`` float32 tensor for ``image`` (``C = prep.channels``,
    ``H, W = prep.input_size``).

    Equal, to float rounding, to timm's ``create_transform(**resolve_data_config(...))`` for RGB.

    Example::

        x = preprocess_image(Image.open("cat.jpg").convert("RGB"), loaded.preprocessing)
        logits = loaded.module(x[None])
    """
    from torchvision.transforms.v2 import functional as TF  # lazy: torchvision is slow to import

    pixels: torch.Tensor = TF.pil_to_tensor(resize_and_crop(image, prep))
    return normalize_pixels(pixels, prep)


def preprocess_images(images: Sequence[Image.Image], prep: Preprocessing) -> torch.Tensor:
    """A ``(N, C, H, W)`` batch: :func:`preprocess_image` of each image, stacked in order."""
    if len(images) == 0:
        raise ValueError("preprocess_images needs at least one image, got an empty sequence")
    return torch.stack([preprocess_image(image, prep) for image in images])


def denormalize(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Undo the normalisation of a ``(C, H, W)`` or ``(N, C, H, W)`` tensor, clamped to [0, 1]
    (``C == prep.channels``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    c = prep.channels
    if x.dim() not in (3, 4) or x.shape[-3] != c:
        raise ValueError(
            f"expected a ({c}, H, W) or (N, {c}, H, W) tensor for a preprocessing with "
            f"{c} channel(s), got shape {tuple(x.shape)}"
        )
    mean = torch.tensor(prep.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(prep.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)


def gaussian_blur(images: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images with replicated borders.

    The kernel is ``exp(−k² / 2σ²)`` for ``k = −radius … radius``, normalised to sum 1 (computed
    in float64, then cast to the images' dtype); ``radius`` defaults to ``max(1, ⌈3σ⌉)``. Used for
    Integrated Gradients' blurred baseline and RISE's insertion start image (11×11, σ = 5).
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
    r = max(1, math.ceil(3 * sigma)) if radius is None else radius
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"radius must be a whole number >= 0, got {radius!r}")
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(dtype=images.dtype, device=images.device)
    n, c, h, w = images.shape
    flat = F.pad(images.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)
