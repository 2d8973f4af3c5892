"""What a request asks, parsed once at the boundary: the map query shared by the map endpoints
(method, class, layer, sign, style, colours, options) and the errors that carry an HTTP status."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from cnnviz.errors import CnnvizError
from cnnviz.options import SIGNS, MapStyle, values

OPTION_PREFIX = "o."
"""Query parameters that start with this are method options: ``o.steps=32``."""


class HttpError(CnnvizError, ValueError):
    """A request the explorer refuses, with the HTTP ``status`` that says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def not_found(what: str) -> HttpError:
    return HttpError(f"{what} not found.", 404)


def option_value(text: str) -> Any:
    """A query value as a method option: a whole number, a decimal, ``true``/``false``/``none``
    or the text itself (as ``--option KEY=VALUE`` reads it)."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return None if lowered == "none" else text


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """``params[name]`` as a whole number in ``[low, high]`` (``default`` when absent)."""
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise HttpError(f"{name} must be a whole number, got {text!r}.") from None
    if not low <= value <= high:
        raise HttpError(f"{name} must lie in {low}…{high}, got {value}.")
    return value


def required(params: Mapping[str, str], name: str) -> str:
    text = params.get(name, "").strip()
    if not text:
        raise HttpError(f"The query parameter {name!r} is required.")
    return text


@dataclass(frozen=True)
class MapQuery:
    """One map asked for: what is explained (method, options, class, layer) and how it is drawn
    (sign, style, cmap, alpha, outlier). ``target`` and ``layer`` are ``None`` for the defaults
    (the predicted class, the automatic layer)."""

    method: str = "gradcam"
    target: str | None = None
    layer: str | None = None
    sign: str = "auto"
    style: str = MapStyle.OVERLAY.value
    cmap: str = "jet"
    alpha: float = 0.5
    outlier: float | str | None = "auto"
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> MapQuery:
        """Read the query parameters of docs/explorer-api.md; bad values raise 400."""
        sign = params.get("sign", "auto") or "auto"
        if sign not in SIGNS:
            raise HttpError(f"sign must be one of {', '.join(SIGNS)}, got {sign!r}.")
        style = params.get("style", MapStyle.OVERLAY.value) or MapStyle.OVERLAY.value
        if style not in values(MapStyle):
            raise HttpError(f"style must be one of {', '.join(values(MapStyle))}, got {style!r}.")
        alpha = _number(params, "alpha", 0.5)
        if not 0.0 <= alpha <= 1.0:
            raise HttpError(f"alpha must lie in [0, 1], got {alpha}.")
        outlier: float | str | None = params.get("outlier", "auto") or "auto"
        if outlier == "none":
            outlier = None
        elif outlier != "auto":
            outlier = _number(params, "outlier", 0.0)
            if not 0.0 <= outlier < 50.0:
                raise HttpError(f"outlier must be a percentage in [0, 50), got {outlier}.")
        options = tuple(
            sorted(
                (key[len(OPTION_PREFIX) :].replace("-", "_"), option_value(value))
                for key, value in params.items()
                if key.startswith(OPTION_PREFIX)
            )
        )
        return cls(
            method=(params.get("method") or "gradcam").strip().lower(),
            target=(params.get("class") or "").strip() or None,
            layer=(params.get("layer") or "").strip() or None,
            sign=sign,
            style=style,
            cmap=(params.get("cmap") or "jet").strip(),
            alpha=alpha,
            outlier=outlier,
            options=options,
        )

    def query_string(self) -> str:
        """These parameters as a URL query (for the picture's URL)."""
        pairs: list[tuple[str, str]] = [("method", self.method)]
        if self.target is not None:
            pairs.append(("class", self.target))
        if self.layer is not None:
            pairs.append(("layer", self.layer))
        pairs += [("sign", self.sign), ("style", self.style), ("cmap", self.cmap)]
        pairs += [("alpha", f"{self.alpha:g}"), ("outlier", _outlier_text(self.outlier))]
        pairs += [(OPTION_PREFIX + key, _text(value)) for key, value in self.options]
        return urlencode(pairs)


def _number(params: Mapping[str, str], name: str, default: float) -> float:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise HttpError(f"{name} must be a number, got {text!r}.") from None
    if not math.isfinite(value):
        raise HttpError(f"{name} must be finite, got {text!r}.")
    return value


def _outlier_text(outlier: float | str | None) -> str:
    if outlier is None:
        return "none"
    return outlier if isinstance(outlier, str) else f"{outlier:g}"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)
