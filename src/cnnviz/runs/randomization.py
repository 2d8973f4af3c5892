"""Randomisation tests of explanation maps (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018): does a map change when the model's weights, or its training labels, are destroyed?

* **Model-parameter randomisation** works on a deep *copy* of the model (the user's model is
  never modified: no weight, buffer, flag or hook). The layers with parameters are grouped in
  execution order — a normalisation layer joins the layer before it (``conv5_2`` + ``bn5_2``) — and
  each group is re-initialised with its modules' own initialiser, ``reset_parameters()`` (a
  BatchNorm also resets its running statistics). *Cascading* randomises from the logits down,
  cumulatively (step 1: the last group; step k: the last k groups); *independent* randomises one
  group at a time on an otherwise trained model. Modules without ``reset_parameters`` are left
  trained (logged). Initialisation draws from ``torch.random.fork_rng`` seeded per group, so runs
  are reproducible and the caller's random state is untouched.
* Each randomised map is compared with the original map of the same image, class (the original
  model's prediction unless given) and layer by :func:`cnnviz.metrics.sanity.similarity`.
* **Data randomisation**: :func:`train_random_labels` trains ``shapes_vgg11`` on a fixed set of
  synthetic shapes whose labels are randomly permuted across images (class balance kept, every
  link between image and label destroyed); :func:`compare_models` compares its maps with the
  real model's.

Example::

    from cnnviz.render.figures import similarity_figure
    from cnnviz.runs.randomization import parameter_randomization

    results = parameter_randomization(model, x, ["saliency", "gradcam"])
    results["gradcam"].full_depth("spearman_abs")   # one value per image
    similarity_figure(results)                       # a matplotlib Figure
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnviz.api import default_layer, explain
from cnnviz.capture.forward import as_model_input, model_device
from cnnviz.capture.layers import resolve_layer, trace_layers
from cnnviz.data.shapes import make_shapes
from cnnviz.methods.base import Explanation
from cnnviz.methods.registry import get_method
from cnnviz.metrics.faithfulness import ClassTarget, class_targets
from cnnviz.metrics.sanity import MODES, SIMILARITIES, SanityResult, batch_similarity, displayed
from cnnviz.models.shapes_vgg11 import build_shapes_vgg11, fit, heldout_accuracy, normalize_shapes
from cnnviz.progress import Bar, progress

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass(frozen=True)
class LayerGroup:
    """Modules re-initialised together; ``label`` is the first one's dotted name."""

    label: str
    modules: tuple[str, ...]


def randomization_groups(model: nn.Module, example: torch.Tensor) -> list[LayerGroup]:
    """Groups of layers with parameters, in execution order (input first).

    A normalisation layer joins the group before it. Modules without ``reset_parameters`` are
    skipped and logged; each module appears once, at its first call.
    """

    groups: list[list[str]] = []
    seen: set[str] = set()
    for call in trace_layers(model, as_model_input(model, example[:1])):
        if call.num_params == 0 or call.name in seen:
            continue
        seen.add(call.name)
        module = model.get_submodule(call.name)
        if not callable(getattr(module, "reset_parameters", None)):
            logger.warning(
                "%s (%s) has no reset_parameters(); it stays trained", call.name, call.module_type
            )
            continue
        if isinstance(module, _NORM_TYPES) and groups:
            groups[-1].append(call.name)
        else:
            groups.append([call.name])
    return [LayerGroup(names[0], tuple(names)) for names in groups]


def short_label(name: str) -> str:
    """A layer's name for plots: its last part, or its last two when that is a number
    (``backbone.conv5_2`` → ``conv5_2``, ``classifier.6`` → ``classifier.6``)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def reset_group(model: nn.Module, group: LayerGroup, seed: int) -> None:
    """Re-initialise every module of ``group`` in ``model`` with ``reset_parameters()``, seeded."""

    device = model_device(model)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for name in group.modules:
            reset = getattr(model.get_submodule(name), "reset_parameters", None)
            if callable(reset):
                reset()


def _group_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63)


def randomized_copy(
    model: nn.Module,
    groups: Sequence[LayerGroup],
    *,
    seed: int = 0,
    all_groups: Sequence[LayerGroup] | None = None,
) -> nn.Module:
    """A deep copy of ``model`` with ``groups`` re-initialised (the model itself is untouched).

    Each group's seed depends on its position in ``all_groups`` (default ``groups``), so the same
    layer gets the same random weights in cascading and independent runs.
    """
    order = list(all_groups) if all_groups is not None else list(groups)
    clone = copy.deepcopy(model)
    for group in groups:
        reset_group(clone, group, _group_seed(seed, order.index(group)))
    return clone


def _explain_all(
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str],
    layers: Mapping[str, str | None],
    target: list[int],
    class_names: Sequence[str] | None,
    bar: Bar | None = None,
    step: str = "",
) -> dict[str, Explanation]:
    """Each method's explanation; a step of ``bar`` each, noted ``step · method``."""
    bar = bar or Bar()
    explanations = {}
    for name in methods:
        bar.note(f"{step} · {get_method(name).title}")
        explanations[name] = explain(
            model, x, name, layer=layers[name], target=target, class_names=class_names
        )
        bar.update()
    return explanations


def method_layers(
    model: nn.Module, x: torch.Tensor, methods: Sequence[str], layer: Any = None
) -> dict[str, str | None]:
    """The layer each method explains: ``layer`` (or the automatic CAM layer) for CAM methods."""

    resolved: str | None = None
    result: dict[str, str | None] = {}
    for name in methods:
        if get_method(name).needs_layer:
            if resolved is None:
                resolved = (
                    resolve_layer(model, layer) if layer is not None else default_layer(model, x)
                )
            result[name] = resolved
        else:
            result[name] = None
    return result


def _target_indices(
    model: nn.Module, x: torch.Tensor, target: ClassTarget, class_names: Sequence[str] | None
) -> list[int]:

    return [int(v) for v in class_targets(model, x, target, class_names).tolist()]


def parameter_randomization(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str],
    *,
    mode: str = "cascading",
    layer: Any = None,
    target: ClassTarget = None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    groups: Sequence[LayerGroup] | None = None,
    metrics: Sequence[str] = SIMILARITIES,
) -> dict[str, SanityResult]:
    """Model-parameter randomisation test for each method (see the module docstring).

    Args:
        model: the trained model (never modified; the work happens on one deep copy).
        images: ``(N, C, H, W)`` prepared inputs.
        methods: registry names.
        mode: ``"cascading"`` (from the logits down, cumulative) or ``"independent"``.
        layer: CAM layer (default: the automatic one), used for every randomised copy.
        target: class per image (default: the original model's prediction), kept fixed.
        seed: initialisation seed.
        groups: the layer groups (default :func:`randomization_groups`).
        metrics: the similarities computed (default all four).
    """

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    names = [get_method(m).name for m in methods]
    x = as_model_input(model, images)
    # One step per map: the original, then each randomised layer group, for every method.
    with progress(None, f"sanity {mode}", "map") as bar:
        bar.note("finding the layers to randomise")
        all_groups = list(groups) if groups is not None else randomization_groups(model, x)
        if not all_groups:
            raise ValueError(
                "The model has no layers with reset_parameters(); nothing to randomise."
            )
        bar.set_total((len(all_groups) + 1) * len(names))
        layers = method_layers(model, x, names, layer)
        target_list = _target_indices(model, x, target, class_names)
        order = list(reversed(all_groups)) if mode == "cascading" else list(all_groups)
        originals = _explain_all(model, x, names, layers, target_list, class_names, bar, "trained")
        clone = copy.deepcopy(model)
        trained = {k: v.detach().clone() for k, v in clone.state_dict().items()}
        sims: dict[str, list[dict[str, np.ndarray]]] = {n: [] for n in names}
        pictures = {
            n: [displayed(originals[n].upsampled()[:, 0], originals[n].display)] for n in names
        }
        for group in order:
            if mode == "independent":
                clone.load_state_dict(trained)
            reset_group(clone, group, _group_seed(seed, all_groups.index(group)))
            label = f"{short_label(group.label)} random"
            randomized = _explain_all(clone, x, names, layers, target_list, class_names, bar, label)
            for n in names:
                sims[n].append(batch_similarity(originals[n], randomized[n], metrics))
                pictures[n].append(
                    displayed(randomized[n].upsampled()[:, 0], randomized[n].display)
                )
    steps = tuple(g.label for g in order)
    return {
        n: SanityResult(
            method=n,
            mode=mode,
            layer=layers[n],
            steps=steps,
            similarity={m: np.stack([s[m] for s in sims[n]], axis=1) for m in metrics},
            pictures=np.stack(pictures[n]),
            display=originals[n].display,
            outlier_percent=originals[n].outlier_percent,
        )
        for n in names
    }


# -- data randomisation ------------------------------------------------------------------------


def train_random_labels(
    *, seed: int = 0, n_train: int = 2048, epochs: int = 10, batch_size: int = 64, lr: float = 3e-3
) -> tuple[nn.Module, dict[str, float]]:
    """``shapes_vgg11`` trained on ``make_shapes(n_train, seed)`` with permuted labels.

    The same images every epoch (so the network can memorise them), labels shuffled across
    images by a seeded permutation; AdamW with a one-cycle schedule, like the real model.
    Returns the model in eval mode and ``train_accuracy`` (on the permuted labels: memorisation)
    and ``heldout_accuracy`` (on true labels: should be near chance, 1/6).
    """
    if n_train < batch_size or epochs < 1 or batch_size < 2:
        raise ValueError(
            f"Need n_train >= batch_size >= 2 and epochs >= 1, got {n_train}, "
            f"{batch_size}, {epochs}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        data = make_shapes(n_train, seed=seed)
        inputs = normalize_shapes(data.images)
        labels = data.labels[torch.randperm(n_train)]
        model = build_shapes_vgg11()
        fit(
            model,
            lambda _epoch: (inputs, labels),
            n_per_epoch=n_train,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=0.0,
            shuffle=torch.Generator().manual_seed(seed),
            progress=True,
            desc="sanity data: training on random labels",
        )
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in torch.split(inputs, 256)])
    metrics = {
        "train_accuracy": float((predicted == labels).float().mean()),
        "heldout_accuracy": heldout_accuracy(model, 500),
        "n_train": float(n_train),
        "epochs": float(epochs),
    }
    return model, metrics


def compare_models(
    model: nn.Module,
    other: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str],
    *,
    layer: Any = None,
    target: ClassTarget = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, SanityResult]:
    """Maps of ``other`` compared with ``model``'s (same images, class, layer): one step, ``data``.

    The class defaults to ``model``'s prediction; the layer name must exist in both models.
    """

    names = [get_method(m).name for m in methods]
    x = as_model_input(model, images)
    layers = method_layers(model, x, names, layer)
    target_list = _target_indices(model, x, target, class_names)
    with progress(2 * len(names), "sanity data", "map") as bar:
        first = _explain_all(model, x, names, layers, target_list, class_names, bar, "trained")
        second = _explain_all(
            other, x, names, layers, target_list, class_names, bar, "random labels"
        )
    results = {}
    for n in names:
        sims = batch_similarity(first[n], second[n])
        pictures = np.stack(
            [displayed(e.upsampled()[:, 0], e.display) for e in (first[n], second[n])]
        )
        results[n] = SanityResult(
            n,
            "data",
            layers[n],
            ("random labels",),
            {m: v[:, None] for m, v in sims.items()},
            pictures,
            first[n].display,
            first[n].outlier_percent,
        )
    return results
