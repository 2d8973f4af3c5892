"""The closed option sets that the CLI offers as ``choices``, as enums (no torch import).

Each enum is defined here, once, so that building the ``cnnviz`` parser reads its choices from
the enum without importing the torch-based module that uses it; those modules import the enum
from here and keep it importable under its old name (``cnnviz.inspect.filters.FilterScale``,
``cnnviz.metrics.faithfulness.Baseline``, …).
"""

from __future__ import annotations

import enum

__all__ = [
    "INTERPOLATIONS",
    "SANITY_MODES",
    "SIGNS",
    "ChannelOrder",
    "DeepFilterView",
    "DeletionBaseline",
    "FilterScale",
    "MapStyle",
    "SanityMode",
    "values",
]


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
"""The resampling filters of preprocessing (torchvision's ``InterpolationMode`` names)."""


SIGNS = ("auto", "positive", "negative", "absolute", "all")
"""Which evidence a picture shows (``--sign``): the method's own default, the evidence for the
target, against it, its magnitude, or both signs in a diverging colour map."""


class MapStyle(enum.Enum):
    """How a map is drawn with its image (``--style``)."""

    OVERLAY = "overlay"
    """The colourised map blended over the image at a fixed ``alpha``."""
    HEATMAP = "heatmap"
    """The colourised map alone."""
    MASKED = "masked"
    """The image darkened where the map is low: ``image × map``."""
    ALPHA = "alpha"
    """The colourised map over the image with its opacity scaled by the map: ``alpha × map``,
    so the image stays clear where there is no evidence."""


class FilterScale(enum.Enum):
    """How signed weights are mapped to gray levels / colours."""

    PER_FILTER = "per-filter"
    """Each filter stretched to its own min…max."""
    GLOBAL = "global"
    """One min…max over all shown filters, so their magnitudes can be compared."""


class DeepFilterView(enum.Enum):
    """How a filter with many input channels is shown."""

    CHANNEL_MEAN = "mean"
    """One tile per filter: the mean over its input channels."""
    PER_INPUT_CHANNEL = "per-input"
    """One tile per (filter, input channel) for the first filters and input channels."""


class ChannelOrder(enum.Enum):
    """Which channels of an activation to show."""

    FIRST = "first"
    """Channels 0, 1, …, n − 1."""
    TOP = "top"
    """The n channels with the highest mean activation, highest first (ties: lower index first)."""


class DeletionBaseline(enum.Enum):
    """What deleted pixels become (deletion/insertion; ``cnnviz.metrics.faithfulness.Baseline``)."""

    ZEROS = "zeros"
    """Zeros of the model input (the dataset mean colour for a mean/std-normalised model)."""
    MEAN = "mean"
    """The image's own per-channel mean."""
    BLUR = "blur"
    """The image's Gaussian blur (11×11, σ = 5)."""


class SanityMode(enum.Enum):
    """How the model parameter randomisation test randomises (Adebayo et al. 2018)."""

    CASCADING = "cascading"
    """From the logits down, cumulatively: step k randomises the last k layer groups."""
    INDEPENDENT = "independent"
    """One layer group at a time, on an otherwise trained model."""


SANITY_MODES: tuple[str, ...] = tuple(mode.value for mode in SanityMode)
"""The values of :class:`SanityMode`, in order (``cnnviz.metrics.sanity.MODES``)."""


class Parameterisation(enum.Enum):
    """What a feature visualisation optimises (:mod:`cnnviz.featurevis.parameterisation`)."""

    FOURIER = "fourier"
    """Fourier coefficients with 1/f scaling and decorrelated colour (Olah et al. 2017)."""
    PIXEL = "pixel"
    """The pixels themselves (Simonyan et al. 2014)."""


class FeatureUnit(enum.Enum):
    """What one image of a layer's feature visualisation is about."""

    CHANNEL = "channel"
    """A channel, averaged over the image."""
    NEURON = "neuron"
    """One position (the centre) of a channel."""
    LAYER = "layer"
    """The whole layer (DeepDream)."""


def values(options: type[enum.Enum]) -> list[str]:
    """The string values of an option enum, in definition order: the CLI's ``choices``."""
    return [str(member.value) for member in options]
