"""Model preprocessing: how an RGB image becomes the tensor a model expects."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preprocessing:
    """Resize, centre-crop and normalise settings (timm's ``pretrained_cfg`` vocabulary).

    The image is resized so its shorter side is ``round(input_size / crop_pct)`` with
    ``interpolation``, centre-cropped to ``input_size`` and normalised with ``mean``/``std``.
    """

    input_size: tuple[int, int] = (224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for manifests."""
        return {
            "input_size": list(self.input_size),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }
