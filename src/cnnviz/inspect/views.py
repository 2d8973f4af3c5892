"""The notebook's inspection verbs and their results, which show themselves: a layer's filters
(:func:`filters`), activations (:func:`activations`) and the top-k predictions (:func:`predict`).

Each takes a :class:`~cnnviz.models.LoadedModel` or an ``nn.Module`` alike, and images as
:func:`cnnviz.explain` does (a path, a list of paths, a PIL image, a NumPy array or a
preprocessed tensor). Each result holds its tensors, ``plot()`` returns a figure, ``show()``
shows it, and Jupyter displays it with no magic (``_repr_png_`` / ``_repr_html_``).
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnviz.capture.forward import as_model_input, model_state_guard
from cnnviz.capture.layers import LayerRef, resolve_layer
from cnnviz.capture.targets import logits_of
from cnnviz.inputs.given import ImagesLike, as_batch
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.inspect.activations import ChannelOrder, capture_activations, select_channels
from cnnviz.inspect.filters import (
    DeepFilterView,
    FilterScale,
    conv_weight,
    filter_tiles,
    first_conv_layer,
)
from cnnviz.inspect.tables import html_table
from cnnviz.models.loaded import LoadedModel, classes_for, module_of
from cnnviz.models.own import imagenet_preprocessing_for
from cnnviz.render.canvas import InlineFigure, figure_to_png_bytes
from cnnviz.render.figures import activations_figure, filters_figure
from cnnviz.render.html import png_bytes_data_uri


def preprocessing_of(model: nn.Module | LoadedModel) -> Preprocessing:
    """A LoadedModel's preprocessing, else ImageNet's fitted to the module's first conv."""
    if isinstance(model, LoadedModel):
        return model.preprocessing
    return imagenet_preprocessing_for(module_of(model))


def name_of(model: nn.Module | LoadedModel) -> str:
    """The registry name of a LoadedModel, the class name of a module."""
    return model.name if isinstance(model, LoadedModel) else type(model).__name__


# -- filters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """A conv layer's filters: ``weight`` ``(C_out, C_in, kh, kw)`` and the ``tiles`` drawn."""

    layer: str
    weight: torch.Tensor = field(repr=False)
    tiles: np.ndarray = field(repr=False)
    model_name: str
    scale: FilterScale
    view: DeepFilterView

    def title(self) -> str:
        """``Filters of conv1 (64, 3, 3, 3) — model``, saying when only the first are drawn."""
        total, shown = int(self.weight.shape[0]), int(self.tiles.shape[0])
        drawn = f"first {shown} of {total} filters" if shown < total else f"{total} filters"
        return f"{self.layer} {tuple(self.weight.shape)}: {drawn} — {self.model_name}"

    def plot(self) -> InlineFigure:
        """The filters as one titled grid (RGB for three input channels, grey otherwise)."""
        fig = filters_figure(
            self.tiles,
            title=self.title(),
            caption=f"{self.scale.value} scale, {self.view.value} view",
        )
        assert isinstance(fig, InlineFigure)  # every figure of render.figures is one
        return fig

    def show(self) -> None:
        """Show :meth:`plot` inline in a notebook, in a window in a script."""
        self.plot().show()

    def _repr_png_(self) -> bytes:
        return figure_to_png_bytes(self.plot())


def filters(
    model: nn.Module | LoadedModel,
    layer: LayerRef | None = None,
    *,
    scale: FilterScale | str = FilterScale.PER_FILTER,
    view: DeepFilterView | str = DeepFilterView.CHANNEL_MEAN,
    max_filters: int = 64,
) -> Filters:
    """The filters of a ``Conv2d`` (default: the first one), ready to look at.

    Example::

        >>> cnnviz.filters(cnnviz.load_model("shapes_vgg11"), "conv1")  # shows 8 RGB filters
    """
    module = module_of(model)
    name = resolve_layer(module, layer) if layer is not None else first_conv_layer(module)
    weight = conv_weight(module, name)
    scale, view = FilterScale(scale), DeepFilterView(view)
    tiles = filter_tiles(weight, scale=scale, view=view, max_filters=max_filters)
    return Filters(name, weight, tiles, name_of(model), scale, view)


# -- activations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activations(Mapping[str, torch.Tensor]):
    """The outputs of some layers for a batch: ``{dotted name: (N, C, h, w) tensor}``, in the
    order asked, with a picture per layer."""

    tensors: Mapping[str, torch.Tensor] = field(repr=False)
    model_name: str

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.tensors.items())
        return f"Activations({shapes})"

    def plot(
        self,
        layer: str | None = None,
        *,
        image: int = 0,
        channels: int = 16,
        order: ChannelOrder | str = ChannelOrder.FIRST,
        shared_scale: bool = False,
    ) -> InlineFigure:
        """One panel per channel of ``layer`` (default: the first) for image ``image``: the first
        ``channels`` channels, or the strongest with ``order="top"``."""
        name = layer if layer is not None else next(iter(self.tensors))
        if name not in self.tensors:
            raise KeyError(f"{name!r} was not captured; captured: {', '.join(self.tensors)}")
        act = self.tensors[name]
        if act.dim() != 4:
            raise ValueError(
                f"layer {name} outputs {tuple(act.shape)}: no spatial channels to draw; capture "
                "a convolutional layer"
            )
        ids, chosen = select_channels(act[image], channels, ChannelOrder(order))
        fig = activations_figure(
            chosen.float().cpu().numpy(),
            title=f"Activations of {name} {tuple(act.shape[1:])} — {self.model_name}",
            channel_ids=ids,
            shared_scale=shared_scale,
        )
        assert isinstance(fig, InlineFigure)  # every figure of render.figures is one
        return fig

    def show(self, layer: str | None = None, **options: Any) -> None:
        """Show :meth:`plot` inline in a notebook, in a window in a script."""
        self.plot(layer, **options).show()

    def drawable(self) -> list[str]:
        """The captured layers that have spatial channels to draw."""
        return [name for name, act in self.tensors.items() if act.dim() == 4]

    def _repr_png_(self) -> bytes | None:
        names = self.drawable()
        return figure_to_png_bytes(self.plot(names[0])) if names else None

    def _repr_html_(self) -> str:
        parts = [
            f'<img src="{png_bytes_data_uri(figure_to_png_bytes(self.plot(n)))}" alt="{n}"/>'
            for n in self.drawable()
        ]
        return "".join(parts) or html.escape(repr(self))


def activations(
    model: nn.Module | LoadedModel, images: ImagesLike, layers: LayerRef | Sequence[LayerRef]
) -> Activations:
    """Capture the outputs of ``layers`` (dotted names, unique suffixes or modules) for
    ``images``, in one forward pass with forward hooks that are removed afterwards.

    Example::

        >>> acts = cnnviz.activations(model, "coffee.jpg", ["conv1", "bn4_1"])
        >>> acts["backbone.conv1"].shape
    """
    module = module_of(model)
    x = as_batch(images, preprocessing_of(model)).x
    names = [layers] if isinstance(layers, (str, nn.Module)) else list(layers)
    return Activations(capture_activations(module, x, names), name_of(model))


# -- predictions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictions:
    """The top-k classes of each image: ``indices`` and ``probabilities`` ``(N, k)``, ``labels``."""

    indices: torch.Tensor
    probabilities: torch.Tensor
    labels: tuple[tuple[str, ...], ...]

    def rows(self) -> list[tuple[str, str, str, str]]:
        """``(image, rank, class, probability)`` rows for the tables."""
        return [
            (str(n), str(r + 1), label, f"{100 * float(self.probabilities[n, r]):.2f} %")
            for n, labels in enumerate(self.labels)
            for r, label in enumerate(labels)
        ]

    def __str__(self) -> str:
        rows = [("image", "rank", "class", "probability"), *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        return (
            "\n".join(
                "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                for row in rows
            )
            + "\n"
        )

    def __repr__(self) -> str:
        top = "; ".join(
            f"{labels[0]} {100 * float(p[0]):.1f} %"
            for labels, p in zip(self.labels, self.probabilities, strict=True)
        )
        return f"Predictions(top-1: {top})"

    def _repr_html_(self) -> str:
        return html_table(("image", "rank", "class", "probability"), self.rows(), right={0, 1, 3})


def predict(model: nn.Module | LoadedModel, images: ImagesLike, k: int = 5) -> Predictions:
    """The ``k`` most probable classes of each image (softmax of the logits), with names from a
    LoadedModel (ImageNet's for a 1000-way module, numbers otherwise)."""
    module = module_of(model)
    x = as_model_input(module, as_batch(images, preprocessing_of(model)).x)
    with model_state_guard(module), torch.no_grad():
        logits = logits_of(module(x)).float()
    probabilities = logits.softmax(dim=1)
    k = min(int(k), probabilities.shape[1])
    top = probabilities.topk(k, dim=1)
    names = model.class_names if isinstance(model, LoadedModel) else classes_for(logits.shape[1])
    labels = tuple(tuple(names[i] for i in row) for row in top.indices.tolist())
    return Predictions(top.indices.cpu(), top.values.cpu(), labels)
