"""``cnnviz.featurevis``: what a channel, a neuron, a layer or a class wants to see, checked.

Feature visualisation by optimisation (Olah, Mordvintsev & Schubert, "Feature Visualization",
Distill 2017; class models: Simonyan, Vedaldi & Zisserman, ICLR 2014 workshop; DeepDream:
Mordvintsev, Olah & Tyka 2015): start from a near-grey image and climb the unit's activation,
through a Fourier parameterisation with decorrelated colour and random moves at every step, so
that what comes out is what the unit answers robustly rather than adversarial noise. Defaults are
Lucid's: Fourier image, the standard moves, Adam with learning rate 0.05, 512 steps.

Every requested unit is one image of **one** batch (all channels of a layer at once), and the
checks of :mod:`cnnviz.featurevis.checks` are computed beside every picture. Example::

    import cnnviz
    model = cnnviz.load_model("shapes_vgg11")
    result = cnnviz.featurevis(model, "relu4_2", channels=range(8), steps=256, seed=0)
    result                      # the pictures and their checks, inline in a notebook
    result.checks[0].selectivity
    cnnviz.featurevis(model, classes=["circle", "star"]).save("out/")
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from cnnviz.api import model_preprocessing, unpack_model
from cnnviz.capture.forward import model_device
from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.layers import LayerRef, resolve_layer
from cnnviz.errors import ArgumentError
from cnnviz.featurevis import checks as check
from cnnviz.featurevis import objectives as obj
from cnnviz.featurevis.exemplars import Exemplars, collect_exemplars, image_items
from cnnviz.featurevis.optimise import DEFAULT_LEARNING_RATE, DEFAULT_STEPS, normaliser, optimise
from cnnviz.featurevis.parameterisation import make_image
from cnnviz.featurevis.result import FeatureVisualization, UnitKind
from cnnviz.featurevis.transforms import REFERENCE_SIDE, RobustnessTransforms
from cnnviz.featurevis.units import Plan, batch_objective, plan_units
from cnnviz.inputs.given import as_batch
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.models.loaded import LoadedModel
from cnnviz.models.registry import from_module
from cnnviz.options import Parameterisation

logger = logging.getLogger(__name__)

STARTS = 3
"""Independent starts per unit for the stability check."""

INIT_SD = 0.01
"""Lucid's spread of the initial Fourier coefficients at 224 pixels (scaled with the image, so a
small image starts with the same contrast as Lucid's)."""

EXEMPLAR_BATCH = 32

EXEMPLARS_SHOWN = 3
"""Dataset exemplars (receptive-field crops of the images where it peaks) shown per channel."""


def features(
    model: nn.Module | LoadedModel,
    layer: LayerRef | None = None,
    channels: Sequence[int] | int | None = None,
    *,
    unit: str = "channel",
    classes: Sequence[int | str] | int | str | None = None,
    direction: torch.Tensor | Sequence[float] | None = None,
    objective: obj.Objective | None = None,
    size: int | tuple[int, int] | None = None,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LEARNING_RATE,
    thresholds: Sequence[int] = (),
    parameterisation: Parameterisation | str = Parameterisation.FOURIER,
    transforms: RobustnessTransforms | bool = True,
    l2: float = 0.0,
    tv: float = 0.0,
    facets: int = 1,
    diversity: float | None = None,
    seed: int = 0,
    stability: bool = True,
    exemplars: Any = None,
) -> FeatureVisualization:
    """Optimise one image per unit (all in one batch) and check each picture.

    Args:
        model: a module or a :class:`~cnnviz.models.LoadedModel` (its preprocessing, size and
            class names are used); left exactly as found.
        layer: dotted name, alias or module (default: the layer CAM methods use, logged).
        channels: the layer's channels (default: the first 16), one image each.
        unit: ``"channel"`` (mean over the image), ``"neuron"`` (the centre position) or
            ``"layer"`` (DeepDream: the whole layer, one image).
        classes: class indices or names: class visualisations (the logit, Simonyan et al.)
            instead of a layer's units.
        direction: a vector in ``layer``'s channel space to visualise.
        objective: any :mod:`cnnviz.featurevis.objectives` objective (then ``facets`` images).
        size: the image size (default: the model's input size).
        steps, lr: Adam's steps and learning rate.
        thresholds: steps at which to keep the images as well (the last is always kept).
        parameterisation: ``"fourier"`` (default) or ``"pixel"``.
        transforms: the random moves (``True``: Lucid's standard stack scaled to the image,
            ``False``: none, or your own :class:`RobustnessTransforms`).
        l2, tv: weights of the L2 and total-variation regularisers (0: off).
        facets: images per unit, pushed apart by the diversity term.
        diversity: the diversity weight (default 10 when ``facets > 1``).
        seed: seeds the initial images and the moves: the same seed gives the same pictures.
        stability: also optimise every unit from two more starts, for check (c); the picture
            shown is the start that scored highest at the last step (the others are in
            ``starts``).
        exemplars: natural images for check (a): paths, a folder's files, PIL images, arrays or a
            preprocessed tensor (preprocessed at ``size``).

    Raises:
        LayerError: an unknown layer (with close matches), a layer the forward pass never runs,
            or a spatial objective on a 1-D layer.
        TargetError: an unknown class (name or index).
        ArgumentError: channels out of range, a bad option (both are ``ValueError`` s).
    """
    module, class_names = unpack_model(model)
    prep = model_preprocessing(model, module)
    height, width = _image_size(size, prep)
    prep = replace(prep, input_size=(height, width), crop_pct=1.0)
    device = model_device(module)
    example = torch.zeros((1, prep.channels, height, width), device=device)
    plan = plan_units(
        module, class_names, example, layer, channels, unit, classes, direction, objective
    )
    try:
        kind = Parameterisation(parameterisation)
    except ValueError:
        choices = ", ".join(p.value for p in Parameterisation)
        raise ArgumentError(
            f"parameterisation must be one of {choices}, got {parameterisation!r}"
        ) from None
    facets = _positive(facets, "facets")
    starts = STARTS if stability else 1
    batch = starts * len(plan.units) * facets
    total = batch_objective(plan, facets, starts, l2, tv, diversity)
    moves = _moves(transforms, (height, width))
    generator = torch.Generator().manual_seed(int(seed))
    image = make_image(
        kind, batch, prep.channels, (height, width), generator=generator, sd=_init_sd(height, width)
    )
    name = model.name if isinstance(model, LoadedModel) else type(module).__name__
    logger.info(
        "Visualising %d unit(s) of %s in one batch of %d image(s), %d steps.",
        len(plan.units),
        name,
        batch,
        steps,
    )
    run = optimise(
        module,
        total,
        image,
        prep,
        steps=steps,
        lr=lr,
        thresholds=thresholds,
        transforms=moves,
        generator=generator,
        desc=f"features {plan.layer or 'classes'}",
    )
    order = _best_start_first(run.scores, starts, len(plan.units), facets)
    images = _reordered(run.images, order, starts)
    snapshots = {step: _reordered(s, order, starts)[0] for step, s in run.snapshots.items()}
    collected = _collected(model, module, prep, plan, exemplars)
    unit_checks = _checks(module, prep, plan, images, facets, seed, collected or exemplars)
    return FeatureVisualization(
        model_name=name,
        objective=total.describe(),
        units=plan.units,
        images=images[0].clone(),
        facets=facets,
        checks=tuple(unit_checks),
        snapshots=snapshots,
        starts=images[1:].clone() if starts > 1 else None,
        steps=run.steps,
        stopped=run.stopped,
        exemplars=collected,
        settings={
            "steps": steps,
            "lr": lr,
            "size": [height, width],
            "parameterisation": kind.value,
            "transforms": None if moves is None else vars(moves) | {"scale": list(moves.scale)},
            "l2": l2,
            "tv": tv,
            "facets": facets,
            "diversity": diversity,
            "seed": seed,
            "starts": starts,
        },
    )


# -- what is optimised -----------------------------------------------------------------------


def _image_size(size: int | tuple[int, int] | None, prep: Preprocessing) -> tuple[int, int]:
    if size is None:
        return prep.input_size
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(not isinstance(s, int) or s < 8 for s in size):
        raise ArgumentError(
            f"size must be a side or (height, width) of at least 8 pixels, got {size!r}"
        )
    return (int(size[0]), int(size[1]))


def _positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(f"{what} must be a whole number ≥ 1, got {value!r}")
    return value


def _init_sd(height: int, width: int) -> float:
    return INIT_SD * REFERENCE_SIDE / max(height, width)


def _moves(
    transforms: RobustnessTransforms | bool, size: tuple[int, int]
) -> RobustnessTransforms | None:
    if transforms is True:
        return RobustnessTransforms().for_size(size)
    if transforms is False or transforms is None:
        return None
    if isinstance(transforms, RobustnessTransforms):
        return transforms
    raise TypeError(f"transforms must be True, False or RobustnessTransforms, got {transforms!r}")


def _best_start_first(scores: torch.Tensor, starts: int, units: int, facets: int) -> torch.Tensor:
    """``(starts, units)``: for each unit, its starts from the highest final score (summed over
    its facets) down, so the picture shown is the best of the independent starts."""
    per_unit = scores.view(starts, units, facets).nan_to_num(nan=-math.inf).sum(dim=2)
    return torch.argsort(per_unit, dim=0, descending=True, stable=True)


def _reordered(images: torch.Tensor, order: torch.Tensor, starts: int) -> torch.Tensor:
    """``images`` (starts · U · F, …) as (starts, U · F, …) with each unit's starts in ``order``."""
    grid = images.view(starts, order.shape[1], -1, *images.shape[1:])  # (starts, U, F, …)
    picked = grid[order, torch.arange(order.shape[1]).expand(starts, -1)]
    return picked.reshape(starts, -1, *images.shape[1:])


# -- the checks --------------------------------------------------------------------------------


def _checks(
    module: nn.Module,
    prep: Preprocessing,
    plan: Plan,
    images: torch.Tensor,
    facets: int,
    seed: int,
    exemplars: Any,
) -> list[check.UnitChecks]:
    """Checks (a)–(d) for each unit's first facet; ``images`` is ``(starts, U × F, C, H, W)``."""
    device = model_device(module)
    normalise = normaliser(prep, device)
    kind = plan.units[0].kind
    firsts = images[:, ::facets]  # (starts, U, C, H, W)
    starts, count = firsts.shape[:2]
    flat = firsts.reshape(starts * count, *firsts.shape[2:]).to(device)
    matrix = _unit_matrix(module, plan, normalise(flat))  # (starts·U, units of the layer)
    if matrix is None:
        values = _objective_values(module, plan.unit_objective, normalise(flat), flat)
        own = values.view(starts, count)
    else:
        index = torch.tensor([u.index for u in plan.units] * starts)
        own = matrix[torch.arange(len(index)), index].view(starts, count)
    best = _exemplar_best(module, plan, prep, exemplars)
    robust = (
        check.class_robustness(
            module, firsts[0].to(device), [u.index or 0 for u in plan.units], normalise, seed=seed
        )
        if kind is UnitKind.CLASS
        else None
    )
    selective = (
        check.selectivity(matrix[:count], [u.index or 0 for u in plan.units])
        if matrix is not None
        else [None] * count
    )
    result = []
    for u in range(count):
        activation = float(own[0, u])
        exemplar = None if best is None else best[u]
        ratio = None
        if exemplar is not None:
            ratio = activation / exemplar if exemplar > 0 else math.inf
        spread = similarity = None
        if starts > 1:
            spread, similarity = check.stability(own[:, u], firsts[:, u])
        p = moved = top1 = None
        if robust is not None:
            p, moved, top1 = robust[u]
        result.append(
            check.UnitChecks(
                activation=activation,
                exemplar_activation=exemplar,
                activation_ratio=ratio,
                selectivity=selective[u],
                stability_activation=spread,
                stability_similarity=similarity,
                class_probability=p,
                copies_probability=moved,
                copies_top1=top1,
            )
        )
    return result


def _unit_matrix(module: nn.Module, plan: Plan, x: torch.Tensor) -> torch.Tensor | None:
    """``(B, K)``: every unit of the plan's kind (all channels, all centre neurons, all classes)
    on each image, or ``None`` for kinds without sibling units."""
    kind = plan.units[0].kind
    if kind is UnitKind.CLASS:
        return check.model_logits(module, x).float().cpu()
    if kind not in (UnitKind.CHANNEL, UnitKind.NEURON) or plan.layer is None:
        return None
    acts = check.layer_outputs(module, plan.layer, x)
    if kind is UnitKind.NEURON:
        term = plan.unit_objective
        assert isinstance(term, obj.Neuron)  # the plan made it
        y = acts.shape[2] // 2 if term.y is None else term.y
        x_ = acts.shape[3] // 2 if term.x is None else term.x
        return acts[:, :, y, x_].float().cpu()
    return check.unit_scores(acts).float().cpu()


def _objective_values(
    module: nn.Module, term: obj.Objective, x: torch.Tensor, image: torch.Tensor | None = None
) -> torch.Tensor:
    """``term`` on each image of the model input ``x`` (no moves), model left as found;
    ``image`` is the picture in [0, 1] that regularisers read (default: ``x``)."""
    names = {ref: resolve_layer(module, ref) for ref in term.layers}
    layers = list(dict.fromkeys(names.values()))
    with LayerCapture(
        module, layers, grad=GradFrom.NONE, stop_after_layers=not term.needs_logits
    ) as cap:
        logits = cap.forward(x)
        probe = obj.Probe(x if image is None else image, cap.activations, logits, names)
        return term.value(probe).detach().float().cpu()


def _collected(
    model: nn.Module | LoadedModel,
    module: nn.Module,
    prep: Preprocessing,
    plan: Plan,
    exemplars: Any,
) -> Exemplars | None:
    """The dataset exemplars of a layer's channels among natural images (streamed in batches,
    preprocessed at the visualisation's size), to show beside the pictures and for check (a);
    ``None`` for other units or when none were given."""
    if isinstance(exemplars, Exemplars):
        return exemplars
    if exemplars is None or plan.units[0].kind is not UnitKind.CHANNEL or plan.layer is None:
        return None
    sized = (
        replace(model, preprocessing=prep)
        if isinstance(model, LoadedModel)
        else from_module(module, preprocessing=prep)
    )
    channels = [int(u.index or 0) for u in plan.units]
    return collect_exemplars(sized, exemplars, plan.layer, k=EXEMPLARS_SHOWN, channels=channels)


def _exemplar_best(
    module: nn.Module, plan: Plan, prep: Preprocessing, exemplars: Any
) -> list[float] | None:
    """Per unit, its largest score over the natural images ``exemplars`` (check (a))."""
    if exemplars is None:
        return None
    best = getattr(exemplars, "best", None)
    if callable(best) and plan.units[0].kind is UnitKind.CHANNEL:
        if getattr(exemplars, "layer", plan.layer) != plan.layer:
            raise ArgumentError(
                f"the exemplars are of layer {exemplars.layer!r}, not {plan.layer!r}"
            )
        return [float(best(u.index)) for u in plan.units]
    items = image_items(exemplars)
    device = model_device(module)
    scores = []
    for start in range(0, len(items), EXEMPLAR_BATCH):
        part = items[start : start + EXEMPLAR_BATCH]  # decoded a batch at a time
        chunk = (part if isinstance(part, torch.Tensor) else as_batch(part, prep).x).to(device)
        matrix = _unit_matrix(module, plan, chunk)
        if matrix is None:
            values = _objective_values(module, plan.unit_objective, chunk)
            scores.append(values.unsqueeze(1).expand(-1, len(plan.units)))
        else:
            scores.append(matrix[:, [u.index for u in plan.units]])
    return [float(v) for v in torch.cat(scores).max(dim=0).values]
