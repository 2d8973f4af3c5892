"""The caller's choices over a model's own defaults: preprocessing given whole or field by field.

``load_model(..., preprocessing=…)`` and the command line's ``--input-size``, ``--resize``,
``--crop``, ``--mean``, ``--std`` and ``--interpolation`` come here: a whole
:class:`~cnnviz.inputs.preprocess.Preprocessing` replaces the model's, a mapping of some of its
fields (plus ``resize``, the shorter side before the centre crop) overrides only those. The
mean and std must have one value per input channel of the model; one value stands for all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeAlias

from cnnviz.errors import CnnvizError
from cnnviz.inputs.preprocess import Preprocessing


class PreprocessingError(CnnvizError, ValueError):
    """Preprocessing settings that do not make sense (an unknown field, a bad value)."""


PreprocessingChoice: TypeAlias = Preprocessing | Mapping[str, Any] | None
"""What ``preprocessing=`` takes: a whole :class:`Preprocessing`, or some of its fields
(``{"input_size": (96, 96), "mean": (0.5,), "std": (0.5,)}``) over the model's own."""


def chosen_preprocessing(own: Preprocessing, chosen: PreprocessingChoice) -> Preprocessing:
    """``chosen`` over the model's ``own`` preprocessing (see :data:`PreprocessingChoice`).

    A mapping may also hold ``resize`` (the shorter side before the centre crop, which sets
    ``crop_pct``); one ``mean`` / ``std`` value stands for every input channel.
    """
    if chosen is None:
        return own
    if isinstance(chosen, Preprocessing):
        _channels_checked(chosen.channels, own.channels)
        return chosen
    if not isinstance(chosen, Mapping):
        raise TypeError(
            "preprocessing must be a Preprocessing or a mapping of its fields, "
            f"got {type(chosen).__name__}"
        )
    fields = dict(chosen)
    resize = fields.pop("resize", None)
    for key in ("mean", "std"):
        if key not in fields:
            continue
        if len(fields[key]) == 1 and own.channels > 1:
            fields[key] = tuple(fields[key]) * own.channels
        _channels_checked(len(fields[key]), own.channels)
    try:
        prep = replace(own, **fields)
        if resize is not None:
            prep = replace(prep, crop_pct=_crop_for(prep, resize))
    except TypeError as e:  # an unknown field name
        names = ", ".join(f.name for f in dataclasses.fields(Preprocessing))
        raise PreprocessingError(
            f"preprocessing takes the fields {names} (and resize); got {chosen!r:.80}"
        ) from e
    except ValueError as e:
        raise PreprocessingError(str(e)) from e
    return prep


def _crop_for(prep: Preprocessing, resize: int) -> float:
    smaller = min(prep.input_size)
    if not isinstance(resize, int) or resize < smaller:
        raise PreprocessingError(
            f"resize {resize!r} is smaller than the input size {prep.input_size}; resize the "
            "shorter side to at least the input size (it is then centre-cropped)"
        )
    return smaller / resize


def _channels_checked(given: int, channels: int) -> None:
    if given != channels:
        raise PreprocessingError(
            f"the mean and std have {given} value(s) but the model takes {channels} "
            "input channel(s); give one value per channel (or one for all)"
        )
