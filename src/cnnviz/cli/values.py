"""The value types of the ``cnnviz`` options: each parses one option's text or says, in one
line, what it expected (an ``argparse.ArgumentTypeError``). Import-light, like the parser."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence

__all__ = [
    "channel_list",
    "comma_choices",
    "crop_fraction",
    "fraction",
    "input_size",
    "non_negative_int",
    "numbers",
    "outlier_percent",
    "positive_int",
]


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """An option value that is a whole number ≥ 1."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An option value that is a whole number ≥ 0."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def fraction(text: str) -> float:
    """An option value that is a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def outlier_percent(text: str) -> float:
    """An option value that is a percentage in [0, 50): the share of a map's brightest pixels
    that saturate its colour scale."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 <= value < 50):
        raise argparse.ArgumentTypeError(f"must be a percentage in [0, 50), got {text}")
    return value


def comma_choices(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """An option value that is a comma-separated list of some of ``choices``."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
        wrong = [item for item in items if item not in choices]
        if wrong or not items:
            raise argparse.ArgumentTypeError(
                f"takes one or more of {', '.join(choices)} (comma-separated), got {text!r}"
            )
        return items

    return parse


def input_size(text: str) -> tuple[int, int]:
    """An option value that is a size in pixels: ``224`` (square) or ``HxW`` / ``H,W``."""
    parts = [p.strip() for p in text.lower().replace("×", "x").replace(",", "x").split("x")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected N or HxW pixels, got {text!r}")
    height, width = (positive_int(part) for part in parts)
    return height, width


def crop_fraction(text: str) -> float:
    """An option value that is a fraction in (0, 1]: timm's ``crop_pct``."""
    value = fraction(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 (1 keeps the whole resized image)")
    return value


def numbers(text: str) -> tuple[float, ...]:
    """An option value that is a comma-separated list of finite numbers."""
    try:
        values_ = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values_ or not all(math.isfinite(v) for v in values_):
        raise argparse.ArgumentTypeError(
            f"expected finite numbers separated by commas, got {text!r}"
        )
    return values_


MAX_CHANNELS = 4096
"""The most channels one ``--channels`` value may name (a typo like ``0-100000`` is refused)."""


def channel_list(text: str) -> tuple[int, ...]:
    """``--channels``: indices and ranges, e.g. ``0-15``, ``3`` or ``0,4,7-9`` (ranges inclusive),
    in the order given, each once."""
    channels: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low_text, dash, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected channel numbers or ranges like 0-15 or 0,4,7-9, got {text!r}"
            ) from None
        if low < 0 or high < low:
            raise argparse.ArgumentTypeError(
                f"a channel range goes from a number ≥ 0 up to one as large, got {part!r}"
            )
        channels.extend(range(low, high + 1))
        if len(channels) > MAX_CHANNELS:
            raise argparse.ArgumentTypeError(
                f"at most {MAX_CHANNELS} channels at a time, got more in {text!r}"
            )
    if not channels:
        raise argparse.ArgumentTypeError(f"expected at least one channel, got {text!r}")
    return tuple(dict.fromkeys(channels))
