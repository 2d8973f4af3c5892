"""How a map is drawn and what its colours mean: :class:`MapDrawing` and :func:`legend_text`.

A picture of a map is decided by five choices, the same in the CLI (``--sign``, ``--style``,
``--cmap``, ``--alpha``, ``--outlier-percent``), the report and the Python API: which evidence
to show (the method's own sign by default), how the map meets the image
(:class:`~cnnviz.options.MapStyle`), the colour map (signed maps always in the diverging one,
:func:`~cnnviz.render.colours.colormap_for`), the opacity, and the share of the brightest pixels
that saturate the colour scale (the method's own by default: 2 % for gradient maps).

Every picture of a map says what its colours mean (:func:`legend_text`), naming the colours of
the colour map's ends ("red: more evidence for espresso · blue: none").
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from cnnviz.errors import ArgumentError
from cnnviz.methods.postprocess import Display, check_outlier_percent, parse_sign
from cnnviz.options import SIGNS, MapStyle
from cnnviz.render.colours import colormap_for, colormap_lut, compose

# Hue (degrees) up to which a saturated colour takes a name, in order round the colour circle.
_HUES = (
    (15.0, "red"),
    (45.0, "orange"),
    (70.0, "yellow"),
    (165.0, "green"),
    (195.0, "cyan"),
    (255.0, "blue"),
    (290.0, "purple"),
    (335.0, "magenta"),
    (360.0, "red"),
)


def colour_name(rgb: tuple[int, int, int] | np.ndarray) -> str:
    """A plain English name for an 8-bit RGB colour: black, white or gray when it is dark or
    unsaturated, else the hue's name (red, orange, yellow, green, cyan, blue, purple, magenta).

    Example:
        >>> colour_name((128, 0, 0)), colour_name((0, 0, 255)), colour_name((253, 231, 37))
        ('red', 'blue', 'yellow')
    """
    r, g, b = (float(v) / 255.0 for v in rgb)
    hue, saturation, value = colorsys.rgb_to_hsv(r, g, b)
    if value < 0.25:
        return "black"
    if saturation < 0.2:
        return "white" if value > 0.85 else "gray"
    degrees = 360.0 * hue
    return next(name for limit, name in _HUES if degrees < limit)


def colour_names(cmap: str) -> tuple[str, str, str]:
    """The names of ``cmap``'s low end, middle and high end; ``("low", "middle", "high")``
    when both ends take the same name (a cyclic map)."""
    lut = colormap_lut(cmap)
    low, middle, high = (colour_name(lut[i]) for i in (0, 128, 255))
    if low == high:
        return "low", "middle", "high"
    return low, middle, high


def legend_text(display: Display, label: str | None, *, cmap: str | None = None) -> str:
    """What the colours of a map picture mean, in one line.

    ``label`` names what is explained (a class name); ``None`` gives the generic "evidence".
    ``cmap`` is the colour map the picture is drawn in; ``None``: the one cnnviz draws
    ``display`` in by default (``jet``, or the diverging map for signed maps,
    :func:`~cnnviz.render.colours.colormap_for`).

    Example:
        >>> legend_text(Display.POSITIVE, "espresso")
        'red: more evidence for espresso · blue: none'
        >>> legend_text(Display.SIGNED, "espresso")
        'red: for espresso · blue: against · white: neither'
    """
    low, middle, high = colour_names(cmap or colormap_for(display, "jet"))
    what = f" {label}" if label else ""
    if display is Display.SIGNED:
        return f"{high}: for{what} · {low}: against · {middle}: neither"
    if display is Display.NEGATIVE:
        return f"{high}: more evidence against{what} · {low}: none"
    if display is Display.ABSOLUTE:
        target = f" on{what}" if label else ""
        return f"{high}: more influence{target}, for or against · {low}: none"
    return f"{high}: more evidence{' for' + what if label else ''} · {low}: none"


def colour_strip(cmap: str, width: int, height: int) -> np.ndarray:
    """``cmap`` from its low end (left) to its high end (right): ``(height, width, 3)`` uint8;
    column ``x`` takes LUT entry ``round(255·x / (width − 1))``."""
    lut = colormap_lut(cmap)
    index = np.floor(np.linspace(0.0, 255.0, max(width, 1)) + 0.5).astype(np.intp)
    return np.ascontiguousarray(np.broadcast_to(lut[index][None], (height, max(width, 1), 3)))


@dataclass(frozen=True)
class MapDrawing:
    """How maps are drawn: which sign, in which style, colours, opacity and outlier clipping.

    Attributes:
        sign: ``"auto"`` (the method's own display) or a sign of
            :data:`~cnnviz.methods.postprocess.SIGN_NAMES` (``positive``, ``negative``,
            ``absolute``, ``all``).
        style: a :class:`~cnnviz.options.MapStyle` (or its value).
        cmap: matplotlib colour map of unsigned maps (signed ones use the diverging map).
        alpha: opacity of the map in ``overlay`` and ``alpha`` styles, in [0, 1].
        outlier_percent: share (%) of each map's brightest pixels that saturate the colour
            scale; ``None``: the method's own (2 for gradient maps, none for CAMs); 0: min-max.
    """

    sign: str = "auto"
    style: MapStyle | str = MapStyle.OVERLAY
    cmap: str = "jet"
    alpha: float = 0.5
    outlier_percent: float | None = None

    def __post_init__(self) -> None:
        """Check every setting (:class:`~cnnviz.errors.ArgumentError` naming the wrong one)."""
        if self.sign not in SIGNS:
            raise ArgumentError(f"sign must be one of {', '.join(SIGNS)}; got {self.sign!r}")
        try:
            object.__setattr__(self, "style", MapStyle(self.style))
        except ValueError:
            styles = ", ".join(s.value for s in MapStyle)
            raise ArgumentError(f"style must be one of {styles}; got {self.style!r}") from None
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ArgumentError(f"alpha must be a number in [0, 1], got {alpha!r}")
        try:
            check_outlier_percent(self.outlier_percent)
        except (TypeError, ValueError) as error:
            raise ArgumentError(str(error)) from None

    def display_for(self, own: Display) -> Display:
        """The display a map is drawn with: the method's ``own`` unless a sign was chosen."""
        return own if self.sign == "auto" else parse_sign(self.sign)

    @property
    def percent(self) -> float | Literal["auto"]:
        """``outlier_percent`` as :meth:`cnnviz.methods.base.Explanation.shown` takes it."""
        return "auto" if self.outlier_percent is None else self.outlier_percent

    def colormap(self, display: Display) -> str:
        """The colour map of a map drawn with ``display``."""
        return colormap_for(display, self.cmap)

    def draw(
        self, image: np.ndarray | Image.Image, map01: np.ndarray, display: Display
    ) -> np.ndarray:
        """``map01`` (in [0, 1]; signed maps as ``(s + 1) / 2``) drawn with ``image``:
        :func:`~cnnviz.render.colours.compose`, ``(H, W, 3)`` uint8."""
        return compose(
            image,
            map01,
            style=MapStyle(self.style),
            cmap=self.colormap(display),
            alpha=self.alpha,
            signed=display is Display.SIGNED,
        )

    def legend(self, display: Display, label: str | None) -> str:
        """:func:`legend_text` in this drawing's colours."""
        return legend_text(display, label, cmap=self.colormap(display))

    def record(self) -> dict[str, Any]:
        """The settings as a manifest records them (``outlier_percent`` ``"auto"``: each
        method's own)."""
        return {
            "cmap": self.cmap,
            "alpha": self.alpha,
            "sign": self.sign,
            "style": MapStyle(self.style).value,
            "outlier_percent": self.percent,
        }


@dataclass(frozen=True)
class DrawingSettings:
    """The drawing fields a run's settings share (``cnnviz explain``'s and the report's), and
    the :class:`MapDrawing` they make."""

    cmap: str = "jet"
    alpha: float = 0.5
    sign: str = "auto"
    style: str = "overlay"
    outlier_percent: float | None = None

    @property
    def drawing(self) -> MapDrawing:
        """How the maps are drawn (checked: an :class:`~cnnviz.errors.ArgumentError` names a
        wrong value)."""
        return MapDrawing(self.sign, self.style, self.cmap, self.alpha, self.outlier_percent)
