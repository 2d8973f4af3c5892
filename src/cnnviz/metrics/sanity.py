"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS'18).

A map that explains the model must change when the model's weights are destroyed.

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
  model's prediction unless given) and layer by :func:`similarity`:

  - ``spearman_abs``: Spearman rank correlation of ``|map|`` (``scipy.stats.spearmanr``);
  - ``spearman``: Spearman rank correlation of the raw signed maps;
  - ``ssim``: ``skimage.metrics.structural_similarity`` of the displayed pictures (rectified as
    the method draws them, min-max normalised to [0, 1], ``data_range=1``);
  - ``hog``: **Pearson** correlation of the ``skimage.feature.hog`` vectors of the displayed
    pictures (9 orientations, 8×8-pixel cells, 2×2-cell blocks).

  Maps are compared at the input resolution. An undefined similarity (a constant map, a map too
  small for SSIM's 7×7 window or HOG's 16×16 block) is NaN.
* **Data randomisation**: :func:`train_random_labels` trains ``shapes_vgg11`` on a fixed set of
  synthetic shapes whose labels are randomly permuted across images (class balance kept, every
  link between image and label destroyed); :func:`compare_models` compares its maps with the
  real model's.

Example::

    from cnnviz.metrics.sanity import parameter_randomization, similarity_figure

    results = parameter_randomization(model, x, ["saliency", "gradcam"])
    results["gradcam"].full_depth("spearman_abs")   # one value per image
    similarity_figure(results)                       # a matplotlib Figure
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cnnviz.methods.postprocess import Display
from cnnviz.options import SANITY_MODES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnviz.methods.base import Explanation
    from cnnviz.metrics.faithfulness import ClassTarget

logger = logging.getLogger(__name__)

SIMILARITIES: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")
MODES: tuple[str, ...] = SANITY_MODES
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
    from cnnviz.capture.hooks import as_model_input
    from cnnviz.capture.layers import trace_layers

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
    from cnnviz.capture.hooks import model_device

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


# -- similarity --------------------------------------------------------------------------------


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def _hog(picture: np.ndarray) -> np.ndarray | None:
    from skimage.feature import hog

    if min(picture.shape) < 16:
        return None
    vector: np.ndarray = hog(
        picture, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=True
    )
    return vector


def display_picture(raw: torch.Tensor, display: Display) -> np.ndarray:
    """``(…, H, W)`` raw maps as the method draws them, in [0, 1] (signed: ``(s + 1) / 2``)."""
    from cnnviz.methods.postprocess import for_display

    shown = for_display(raw.detach().float().cpu(), display)
    if display is Display.SIGNED:
        shown = (shown + 1) / 2
    return shown.numpy().astype(np.float64)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    if min(a.shape) < 7 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    value = structural_similarity(a, b, data_range=1.0)  # type: ignore[no-untyped-call]  # untyped
    return float(value)


def similarity(
    original: torch.Tensor,
    other: torch.Tensor,
    display: Display,
    metrics: Sequence[str] = SIMILARITIES,
) -> dict[str, float]:
    """The similarities ``metrics`` (see the module docstring) of two raw ``(H, W)`` maps."""
    unknown = set(metrics) - set(SIMILARITIES)
    if unknown:
        raise ValueError(f"Unknown similarity {sorted(unknown)}; choose from {SIMILARITIES}")
    a = original.detach().double().cpu().numpy()
    b = other.detach().double().cpu().numpy()
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"Expected two (H, W) maps of one shape, got {a.shape} and {b.shape}")
    result: dict[str, float] = {}
    if "spearman_abs" in metrics:
        result["spearman_abs"] = _spearman(np.abs(a), np.abs(b))
    if "spearman" in metrics:
        result["spearman"] = _spearman(a, b)
    if "ssim" in metrics or "hog" in metrics:
        pa, pb = display_picture(original, display), display_picture(other, display)
        if "ssim" in metrics:
            result["ssim"] = _ssim(pa, pb)
        if "hog" in metrics:
            ha, hb = _hog(pa), _hog(pb)
            result["hog"] = math.nan if ha is None or hb is None else _pearson(ha, hb)
    return result


def batch_similarity(
    original: Explanation, other: Explanation, metrics: Sequence[str] = SIMILARITIES
) -> dict[str, np.ndarray]:
    """``metric → (N,)`` similarities of the first target's maps, image by image."""
    a, b = original.upsampled()[:, 0], other.upsampled()[:, 0]
    rows = [similarity(a[i], b[i], original.display, metrics) for i in range(a.shape[0])]
    return {m: np.array([r[m] for r in rows], dtype=np.float64) for m in metrics}


# -- model-parameter randomisation -------------------------------------------------------------


@dataclass(frozen=True)
class SanityResult:
    """One method's maps compared across randomised models.

    Attributes:
        method: registry name.
        mode: ``"cascading"``, ``"independent"`` or ``"data"``.
        layer: the CAM layer explained (``None`` for input-space methods).
        steps: the group randomised at each step (cascading: the lowest one randomised so far).
        similarity: metric → ``(N, S)`` array, image × step.
        pictures: ``(S + 1, N, H, W)`` displayed maps in [0, 1], the original first.
    """

    method: str
    mode: str
    layer: str | None
    steps: tuple[str, ...]
    similarity: dict[str, np.ndarray]
    pictures: np.ndarray = field(repr=False)

    def full_depth(self, metric: str = "spearman_abs") -> np.ndarray:
        """``(N,)`` similarity at the last step (every group randomised, for cascading)."""
        return self.similarity[metric][:, -1]

    def mean(self, metric: str = "spearman_abs") -> np.ndarray:
        """``(S,)`` mean over images of ``metric`` at each step, NaN-aware (NaN if all are)."""
        values = self.similarity[metric]
        counts = np.isfinite(values).sum(axis=0)
        sums = np.where(np.isfinite(values), values, 0.0).sum(axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _explain_all(
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str],
    layers: Mapping[str, str | None],
    target: list[int],
    class_names: Sequence[str] | None,
) -> dict[str, Explanation]:
    from cnnviz.api import explain

    return {
        name: explain(model, x, name, layer=layers[name], target=target, class_names=class_names)
        for name in methods
    }


def method_layers(
    model: nn.Module, x: torch.Tensor, methods: Sequence[str], layer: Any = None
) -> dict[str, str | None]:
    """The layer each method explains: ``layer`` (or the automatic CAM layer) for CAM methods."""
    from cnnviz.api import default_layer
    from cnnviz.capture.layers import resolve_layer
    from cnnviz.methods.base import get_method

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
    from cnnviz.metrics.faithfulness import class_targets

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
    from cnnviz.capture.hooks import as_model_input
    from cnnviz.methods.base import get_method

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    names = [get_method(m).name for m in methods]
    x = as_model_input(model, images)
    all_groups = list(groups) if groups is not None else randomization_groups(model, x)
    if not all_groups:
        raise ValueError("The model has no layers with reset_parameters(); nothing to randomise.")
    layers = method_layers(model, x, names, layer)
    target_list = _target_indices(model, x, target, class_names)
    originals = _explain_all(model, x, names, layers, target_list, class_names)
    order = list(reversed(all_groups)) if mode == "cascading" else list(all_groups)
    clone = copy.deepcopy(model)
    trained = {k: v.detach().clone() for k, v in clone.state_dict().items()}
    sims: dict[str, list[dict[str, np.ndarray]]] = {n: [] for n in names}
    pictures = {
        n: [display_picture(originals[n].upsampled()[:, 0], originals[n].display)] for n in names
    }
    for group in order:
        if mode == "independent":
            clone.load_state_dict(trained)
        reset_group(clone, group, _group_seed(seed, all_groups.index(group)))
        randomized = _explain_all(clone, x, names, layers, target_list, class_names)
        for n in names:
            sims[n].append(batch_similarity(originals[n], randomized[n], metrics))
            pictures[n].append(
                display_picture(randomized[n].upsampled()[:, 0], randomized[n].display)
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
    import torch.nn.functional as F

    from cnnviz.data.shapes import make_shapes
    from cnnviz.models.shapes_vgg11 import build_shapes_vgg11, heldout_accuracy, normalize_shapes

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
        steps = n_train // batch_size
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.25
        )
        model.train()
        for _ in range(epochs):
            order = torch.randperm(n_train)
            for step in range(steps):
                index = order[step * batch_size : (step + 1) * batch_size]
                loss = F.cross_entropy(model(inputs[index]), labels[index])
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                schedule.step()
    model.eval()
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
    from cnnviz.capture.hooks import as_model_input
    from cnnviz.methods.base import get_method

    names = [get_method(m).name for m in methods]
    x = as_model_input(model, images)
    layers = method_layers(model, x, names, layer)
    target_list = _target_indices(model, x, target, class_names)
    first = _explain_all(model, x, names, layers, target_list, class_names)
    second = _explain_all(other, x, names, layers, target_list, class_names)
    results = {}
    for n in names:
        sims = batch_similarity(first[n], second[n])
        pictures = np.stack(
            [display_picture(e.upsampled()[:, 0], e.display) for e in (first[n], second[n])]
        )
        results[n] = SanityResult(
            n,
            "data",
            layers[n],
            ("random labels",),
            {m: v[:, None] for m, v in sims.items()},
            pictures,
        )
    return results


# -- figures -----------------------------------------------------------------------------------


def similarity_figure(
    results: Mapping[str, SanityResult],
    *,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Similarity against randomised depth: one panel per metric (default: all computed), one
    line per method (mean over images; the shaded band is the min–max over images)."""
    from cnnviz.render.figures import new_figure

    if not results:
        raise ValueError("No sanity results to plot")
    first = next(iter(results.values()))
    metrics = list(metrics) if metrics is not None else list(first.similarity)
    steps = first.steps
    fig = new_figure(3.6 * len(metrics), 3.8, 100)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    xs = np.arange(len(steps))
    for ax, metric in zip(axes, metrics, strict=True):
        for name, result in results.items():
            values = result.similarity[metric]
            mean = result.mean(metric)
            ax.plot(xs, mean, marker="o", markersize=3, label=name)
            finite = np.where(np.isfinite(values), values, np.nan)
            if values.shape[0] > 1 and np.isfinite(finite).any(axis=0).all():
                ax.fill_between(
                    xs, np.nanmin(finite, axis=0), np.nanmax(finite, axis=0), alpha=0.15
                )
        ax.set_title(metric, fontsize="medium")
        ax.set_ylim(-1.05 if metric.startswith(("spearman", "hog")) else -0.05, 1.05)
        ax.axhline(0.0, color="0.7", linewidth=0.8)
        ax.set_xticks(xs)
        ax.set_xticklabels([short_label(s) for s in steps], rotation=70, fontsize="x-small")
        ax.set_xlabel(
            "randomised " + ("down to" if first.mode == "cascading" else "layer"), fontsize="small"
        )
    axes[0].set_ylabel("similarity to the original map")
    axes[-1].legend(fontsize="x-small")
    fig.suptitle(title or f"{first.mode} parameter randomisation")
    return fig


def maps_figure(
    results: Mapping[str, SanityResult], *, image: int = 0, cmap: str = "jet", max_steps: int = 12
) -> Figure:
    """Displayed maps of one image: a row per method, the original then each randomised step."""
    from cnnviz.render.figures import new_figure

    first = next(iter(results.values()))
    labels = ["original", *first.steps]
    keep = np.unique(
        np.linspace(0, len(labels) - 1, min(len(labels), max_steps + 1)).round()
    ).astype(int)
    fig = new_figure(1.3 * len(keep) + 0.6, 1.4 * len(results) + 0.5, 100)
    axes = fig.subplots(len(results), len(keep), squeeze=False)
    for row, (name, result) in enumerate(results.items()):
        for col, k in enumerate(keep):
            ax = axes[row, col]
            ax.imshow(result.pictures[k, image], cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(short_label(labels[k]), fontsize="x-small")
            if col == 0:
                ax.set_ylabel(name, fontsize="small")
    fig.suptitle(f"{first.mode} randomisation: maps of image {image}")
    return fig
