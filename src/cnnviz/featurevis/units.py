"""Which units a feature visualisation optimises, and the objective of the whole batch.

:func:`plan_units` turns what the caller asked for (a layer's channels or neurons, the layer
itself, classes, a direction, or any objective) into :class:`Unit` s and the objective that
scores each unit; :func:`batch_objective` lays it out over the batch — each unit's facets
together, the whole list once per start of the stability check — and adds the diversity and
the regularisers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.layers import LayerRef, auto_cam_layer, resolve_layer
from cnnviz.errors import ArgumentError, LayerError, TargetError, close_matches
from cnnviz.featurevis import objectives as obj
from cnnviz.featurevis.result import Unit, UnitKind

logger = logging.getLogger(__name__)

DEFAULT_CHANNELS = 16
"""Channels visualised when none are named: the first 16 of the layer."""

DEFAULT_DIVERSITY = 10.0
"""The diversity weight when several facets of a unit are asked for and no weight is given."""


@dataclass(frozen=True)
class Plan:
    """The units and the objective that scores them (one index per unit, before the layout)."""

    units: tuple[Unit, ...]
    unit_objective: obj.Objective
    layer: str | None  # the layer the units belong to (None for classes and custom objectives)


def plan_units(
    module: nn.Module,
    class_names: Sequence[str] | None,
    example: torch.Tensor,
    layer: LayerRef | None,
    channels: Sequence[int] | int | None,
    unit: str,
    classes: Sequence[int | str] | int | str | None,
    direction: torch.Tensor | Sequence[float] | None,
    objective: obj.Objective | None,
) -> Plan:
    if classes is not None:
        indices = _class_indices(classes, class_names, module, example)
        labels = [class_names[i] if class_names else f"class {i}" for i in indices]
        units = tuple(
            Unit(UnitKind.CLASS, None, i, label) for i, label in zip(indices, labels, strict=True)
        )
        return Plan(units, obj.class_logit(indices), None)
    if objective is not None:
        if not isinstance(objective, obj.Objective):
            raise TypeError(f"objective must be a cnnviz Objective, got {type(objective).__name__}")
        return Plan((Unit(UnitKind.OBJECTIVE, None, None, objective.describe()),), objective, None)
    name = _layer_name(module, layer, example)
    shape = layer_output_shape(module, name, example)
    if direction is not None:
        term = obj.direction(name, direction)
        return Plan((Unit(UnitKind.DIRECTION, name, None, f"direction in {name}"),), term, name)
    kinds = {k.value: k for k in (UnitKind.CHANNEL, UnitKind.NEURON, UnitKind.LAYER)}
    if unit not in kinds:
        raise ArgumentError(f"unit must be 'channel', 'neuron' or 'layer', got {unit!r}")
    kind = kinds[unit]
    if kind is UnitKind.LAYER:
        return Plan(
            (Unit(UnitKind.LAYER, name, None, f"{name} (DeepDream)"),), obj.layer(name), name
        )
    if kind is UnitKind.NEURON and len(shape) != 4:
        raise _spatial_error(name, shape)
    count = shape[1]
    chosen = _channels(channels, count, name)
    units = tuple(Unit(kind, name, c, f"{kind.value} {c}") for c in chosen)
    term = obj.neuron(name, chosen) if kind is UnitKind.NEURON else obj.channel(name, chosen)
    return Plan(units, term, name)


def _layer_name(module: nn.Module, layer: LayerRef | None, example: torch.Tensor) -> str:
    if layer is not None:
        return resolve_layer(module, layer)
    name = auto_cam_layer(module, example)
    logger.info("Layer not given: visualising %s (the last convolutional block).", name)
    return name


def layer_output_shape(module: nn.Module, name: str, example: torch.Tensor) -> tuple[int, ...]:
    with LayerCapture(module, [name], grad=GradFrom.NONE, stop_after_layers=True) as cap:
        cap.forward(example)
        return tuple(cap.activations[name].shape)


def _spatial_error(name: str, shape: tuple[int, ...]) -> Exception:
    return LayerError(
        f"A neuron is a position in a feature map, but layer {name!r} gives {len(shape)}-D "
        f"output {shape}; visualise its channels (unit='channel') or choose a convolutional layer."
    )


def _channels(channels: Sequence[int] | int | None, count: int, name: str) -> list[int]:
    if channels is None:
        chosen = list(range(min(DEFAULT_CHANNELS, count)))
        if count > DEFAULT_CHANNELS:
            logger.info(
                "Channels not given: the first %d of %s's %d.", DEFAULT_CHANNELS, name, count
            )
        return chosen
    chosen = [channels] if isinstance(channels, int) else [int(c) for c in channels]
    bad = [c for c in chosen if not 0 <= c < count]
    if bad:
        raise ArgumentError(
            f"channel {bad[0]} is out of range: layer {name!r} has {count} channels (0–{count - 1})"
        )
    if not chosen:
        raise ArgumentError("channels is empty; name at least one channel")
    return list(dict.fromkeys(chosen))


def _class_indices(
    classes: Sequence[int | str] | int | str,
    class_names: Sequence[str] | None,
    module: nn.Module,
    example: torch.Tensor,
) -> list[int]:
    items = [classes] if isinstance(classes, int | str) else list(classes)
    with LayerCapture(module, [], grad=GradFrom.NONE) as cap:
        logits = cap.forward(example)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ArgumentError(
            "class visualisation needs a model that returns (batch, classes) logits"
        )
    count = logits.shape[1]
    indices = []
    for item in items:
        if isinstance(item, str) and not item.isdigit():
            indices.append(_class_by_name(item, class_names))
        else:
            index = int(item)
            if not 0 <= index < count:
                raise TargetError(f"class {index} is out of range: the model has {count} classes")
            indices.append(index)
    if not indices:
        raise TargetError("classes is empty; name at least one class")
    return list(dict.fromkeys(indices))


def _class_by_name(name: str, class_names: Sequence[str] | None) -> int:
    names = list(class_names or [])
    lowered = [n.lower() for n in names]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    hint = close_matches(name, names)
    raise TargetError(
        f"Unknown class {name!r}{hint}; give a class index or one of the model's class names"
    )


def batch_objective(
    plan: Plan, facets: int, starts: int, l2: float, tv: float, diversity: float | None
) -> obj.Objective:
    """The objective of the whole batch of ``starts × units × facets`` images."""
    term = plan.unit_objective
    indices = [u.index for _ in range(starts) for u in plan.units for _ in range(facets)]
    kind = plan.units[0].kind
    if kind is UnitKind.CLASS:
        term = obj.class_logit([int(i or 0) for i in indices])
    elif kind is UnitKind.CHANNEL and isinstance(term, obj.Channel):
        term = obj.channel(term.layer, [int(i or 0) for i in indices])
    elif kind is UnitKind.NEURON and isinstance(term, obj.Neuron):
        term = obj.neuron(term.layer, [int(i or 0) for i in indices], term.y, term.x)
    total = term
    weight = (DEFAULT_DIVERSITY if facets > 1 else 0.0) if diversity is None else float(diversity)
    if weight and facets > 1:
        layer = plan.layer or next(iter(plan.unit_objective.layers), None)
        if layer is None:
            raise ArgumentError(
                "diversity needs a layer: give layer= for class or custom objectives"
            )
        total = total + weight * obj.diversity(layer, facets)
    if l2:
        total = total + float(l2) * obj.l2()
    if tv:
        total = total + float(tv) * obj.total_variation()
    return total
