"""Model summary (parameters, output shapes, mult-adds per module) and the layer table (their
row types and how they print: :mod:`cnnviz.inspect.tables`).

Ideas from torchinfo, our own code. Everything here leaves the model exactly as found: one forward
pass on a zero input under ``torch.no_grad()`` in eval mode (each module's ``training`` flag is
restored by :func:`cnnviz.capture.forward.model_state_guard`), hooks removed in ``finally``,
nothing moved to another device, ``requires_grad`` and ``.grad`` untouched. A model on the
``meta`` device works too, so a large architecture can be summarised without allocating its weights.

**Parameters are counted by tensor identity.** A parameter tensor shared by several modules (tied
weights) is counted once, and attributed to the *first* module in ``named_modules()`` order that
registers it directly; a module instance used at two places in the tree appears once, at its first
name. Trainable means ``requires_grad``; frozen is the rest.

**Mult-adds** (multiply-accumulate operations) are counted per image, i.e. for a batch of one, and
per call (a module run twice counts twice):

* ``Conv1d/2d/3d``: ``numel(output) · (C_in / groups) · prod(kernel_size)``, i.e. for a 2-D
  convolution ``H_out · W_out · C_out · (C_in / groups) · k_h · k_w``;
* ``ConvTranspose1d/2d/3d``: ``numel(input) · (C_out / groups) · prod(kernel_size)``;
* ``Linear``: ``numel(output) · in_features`` (``in · out`` for one feature vector);
* everything else — biases, normalisation, activations, pooling, element-wise operations and
  matrix products done with functional calls inside ``forward`` — counts 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnviz.capture.forward import (
    add_forward_hook,
    model_device,
    model_dtype,
    model_state_guard,
)
from cnnviz.capture.hooks import ForwardError
from cnnviz.capture.layers import alias_of, trace_layers
from cnnviz.errors import CnnvizError
from cnnviz.inspect.tables import OWN, LayerRow, LayerTable, ModelSummary, SummaryRow
from cnnviz.models.loaded import LoadedModel, input_shape_of, module_of

__all__ = [
    "OWN",
    "LayerRow",
    "LayerTable",
    "ModelSummary",
    "SummaryRow",
    "count_parameters",
    "count_params",
    "layer_table",
    "summarize",
]


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_params(model: nn.Module | LoadedModel) -> int:
    """All parameters of ``model`` (a module, a submodule or a LoadedModel), shared tensors
    counted once: the exercise's ``get_module_params_num``, done right
    (:func:`count_parameters` splits trainable and frozen).

    Example:
        >>> count_params(torch.nn.Conv2d(3, 64, 3))  # 64·3·3·3 weights + 64 biases
        1792
    """
    return sum(count_parameters(module_of(model)))


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, frozen)`` parameter counts of ``module``, shared tensors counted once.

    Example:
        >>> from torch import nn
        >>> a, b = nn.Linear(4, 4), nn.Linear(4, 4)
        >>> b.weight = a.weight  # tied
        >>> count_parameters(nn.Sequential(a, b))
        (24, 0)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"Expected a torch.nn.Module, got {type(module).__name__}")
    trainable = frozen = 0
    for parameter in module.parameters():  # deduplicated by identity
        if parameter.requires_grad:
            trainable += _numel(parameter)
        else:
            frozen += _numel(parameter)
    return trainable, frozen


def summarize(
    model: nn.Module | LoadedModel,
    input_size: Sequence[int] | None = None,
    *,
    depth: int | None = None,
    device: torch.device | str | None = None,
) -> ModelSummary:
    """Parameters, output shapes and mult-adds of ``model``'s modules, down to ``depth``.

    Rows, in ``named_modules()`` order: the model itself (depth 0, name ``""``), then every module
    of depth ≤ ``depth`` (1 = direct children; ``None`` = all). Each row counts its whole subtree.
    A module whose children are shown and that registers parameters of its own (or has
    mult-adds of its own) gets an extra row right after it, named ``"<name>.<own>"`` (``"<own>"``
    for the model), one level deeper, holding exactly those.

    The rows add up: for every level L, the rows of depth ≤ L that have no child row of depth
    ≤ L (the rows of depth L plus the shallower leaves) partition the parameters, so their
    ``params``, ``trainable``, ``frozen`` and ``mult_adds`` sum exactly to the totals.

    Args:
        model: the model or a LoadedModel; left exactly as found (see the module docstring).
        input_size: the shape of one input without the batch dimension, e.g. ``(3, 224, 224)``;
            default: a LoadedModel's input, else ``(C, 224, 224)`` with ``C`` the first conv's
            input channels (:func:`~cnnviz.models.loaded.input_shape_of`).
        depth: deepest level shown, ``None`` for all.
        device: where to run; must be the model's device (default), which is never changed.

    Example:
        >>> from cnnviz.models.vgg import VGG11
        >>> with torch.device("meta"):
        ...     model = VGG11()
        >>> summarize(model, depth=1).total_params
        132863336

    Raises:
        ForwardError: the forward pass fails on a zero input of this size.
        ValueError: bad ``input_size``/``depth``, or ``device`` differs from the model's.
    """
    size = _checked_size(input_shape_of(model) if input_size is None else input_size)
    model = module_of(model)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ValueError(f"depth must be None or an integer ≥ 0, got {depth!r}")
    run_on = _checked_device(model, device)
    modules = list(model.named_modules())
    own = _own_parameters(modules)
    example = torch.zeros((1, *size), dtype=model_dtype(model), device=run_on)
    shapes, own_mult_adds = _trace_shapes_and_mult_adds(model, modules, example)
    names = [name for name, _ in modules]
    types = {name: type(module).__name__ for name, module in modules}
    trainable = _subtree_sums(names, {n: t for n, (t, _) in own.items()})
    frozen = _subtree_sums(names, {n: f for n, (_, f) in own.items()})
    mult_adds = _subtree_sums(names, own_mult_adds)
    parents = {name.rpartition(".")[0] for name in names if name}
    rows: list[SummaryRow] = []
    for name in names:
        level = _depth(name)
        if depth is not None and level > depth:
            continue
        rows.append(
            SummaryRow(
                name=name,
                type=types[name],
                depth=level,
                output_shape=shapes.get(name),
                params=trainable[name] + frozen[name],
                trainable=trainable[name],
                frozen=frozen[name],
                mult_adds=mult_adds[name],
            )
        )
        own_row = _own_row(name, name in parents, depth, own[name], own_mult_adds[name])
        if own_row is not None:
            rows.append(own_row)
    return ModelSummary(
        rows=tuple(rows),
        total_params=trainable[""] + frozen[""],
        trainable_params=trainable[""],
        frozen_params=frozen[""],
        total_mult_adds=mult_adds[""],
        input_size=size,
    )


def _own_row(
    name: str, has_children: bool, depth: int | None, own: tuple[int, int], own_mult_adds: int
) -> SummaryRow | None:
    """The ``<name>.<own>`` row of a module whose children are shown and that has parameters
    (or mult-adds) of its own, else ``None``."""
    level = _depth(name)
    expanded = has_children and (depth is None or level < depth)
    own_t, own_f = own
    if not expanded or not (own_t + own_f or own_mult_adds):
        return None
    return SummaryRow(
        name=f"{name}.{OWN}" if name else OWN,
        type="(own parameters)",
        depth=level + 1,
        output_shape=None,
        params=own_t + own_f,
        trainable=own_t,
        frozen=own_f,
        mult_adds=own_mult_adds,
    )


def _trace_shapes_and_mult_adds(
    model: nn.Module, modules: list[tuple[str, nn.Module]], example: torch.Tensor
) -> tuple[dict[str, tuple[int, ...] | None], dict[str, int]]:
    """One forward pass with a hook on every module: each module's first output shape and its
    own mult-adds (summed over calls). Every hook is removed, also when the forward fails."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    own_mult_adds = dict.fromkeys((name for name, _ in modules), 0)

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if name not in shapes:
                shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            own_mult_adds[name] += _mult_adds(module, inputs, output)

        return hook

    handles: list[RemovableHandle] = []
    try:
        for name, module in modules:
            handles.append(add_forward_hook(module, make_hook(name)))
        _forward(model, example)
    finally:
        for handle in handles:
            handle.remove()
    return shapes, own_mult_adds


def layer_table(model: nn.Module, input_size: Sequence[int] | None = (3, 224, 224)) -> LayerTable:
    """Every named module of ``model`` (the root excluded) in definition order.

    Output shapes come from one forward pass on a zero input of ``input_size`` (one image,
    without the batch dimension; for a module that runs more than once, its first call);
    ``input_size=None`` skips the forward pass and leaves every shape ``None``; ``"auto"`` takes
    the input of :func:`summarize`'s default. The model is left as found, as in
    :func:`summarize`.
    """
    if isinstance(input_size, str):
        if input_size != "auto":
            raise ValueError(f"input_size must be a shape, None or 'auto', got {input_size!r}")
        input_size = input_shape_of(model)
    model = module_of(model)
    shapes: dict[str, tuple[int, ...] | None] = {}
    if input_size is not None:
        size = _checked_size(input_size)
        example = torch.zeros((1, *size), dtype=model_dtype(model), device=model_device(model))
        try:
            calls = trace_layers(model, example)
        except CnnvizError:
            raise
        except Exception as e:
            raise _forward_error(model, example, e) from e
        for call in calls:
            shapes.setdefault(call.name, call.output_shape)
    modules = list(model.named_modules())
    names = [name for name, _ in modules]
    own = _own_parameters(modules)
    params = _subtree_sums(names, {name: t + f for name, (t, f) in own.items()})
    return LayerTable(
        LayerRow(name, alias_of(model, name), type(module).__name__, shapes.get(name), params[name])
        for name, module in modules
        if name
    )


# -- counting ------------------------------------------------------------------------------------


def _numel(parameter: torch.Tensor) -> int:
    if nn.parameter.is_lazy(parameter):
        raise ValueError(
            "The model has uninitialised (lazy) parameters; run one forward pass before "
            "counting its parameters."
        )
    return parameter.numel()


def _own_parameters(modules: list[tuple[str, nn.Module]]) -> dict[str, tuple[int, int]]:
    """(trainable, frozen) registered directly on each module; shared tensors go to the first."""
    seen: set[int] = set()
    own: dict[str, tuple[int, int]] = {}
    for name, module in modules:
        trainable = frozen = 0
        for parameter in module.parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if parameter.requires_grad:
                trainable += _numel(parameter)
            else:
                frozen += _numel(parameter)
        own[name] = (trainable, frozen)
    return own


def _self_and_ancestors(name: str) -> Iterator[str]:
    yield name
    while name:
        name = name.rpartition(".")[0]
        yield name


def _subtree_sums(names: list[str], own: dict[str, int]) -> dict[str, int]:
    totals = dict.fromkeys(names, 0)
    for name in names:
        for ancestor in _self_and_ancestors(name):
            totals[ancestor] += own[name]
    return totals


def _depth(name: str) -> int:
    return 0 if not name else name.count(".") + 1


def _mult_adds(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """Multiply-accumulates of one call (formulas in the module docstring)."""
    if not isinstance(output, torch.Tensor):
        return 0
    if isinstance(module, _CONV):
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return output.numel() * per_output
    if isinstance(module, _CONV_TRANSPOSE) and inputs and isinstance(inputs[0], torch.Tensor):
        per_input = (module.out_channels // module.groups) * math.prod(module.kernel_size)
        return inputs[0].numel() * per_input
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


# -- running -------------------------------------------------------------------------------------


def _checked_size(input_size: Sequence[int]) -> tuple[int, ...]:
    if isinstance(input_size, str | bytes) or not isinstance(input_size, Sequence):
        raise TypeError(
            f"input_size must be a sequence of ints such as (3, 224, 224), got {input_size!r}"
        )
    size = tuple(input_size)
    if not size or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(
            f"input_size must be positive ints for one input without the batch dimension, "
            f"e.g. (3, 224, 224); got {input_size!r}"
        )
    return size


def _checked_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    actual = model_device(model)
    if device is None:
        return actual
    wanted = torch.device(device)
    if wanted.type != actual.type or (wanted.index is not None and wanted.index != actual.index):
        raise ValueError(
            f"The model is on {actual}, not {wanted}; cnnviz never moves a model. Move it first "
            f"(model.to({str(wanted)!r})) or leave device=None."
        )
    return actual


def _forward(model: nn.Module, example: torch.Tensor) -> None:
    with model_state_guard(model), torch.no_grad():
        try:
            model(example)
        except CnnvizError:
            raise
        except Exception as e:
            raise _forward_error(model, example, e) from e


def _forward_error(model: nn.Module, example: torch.Tensor, error: Exception) -> ForwardError:
    detail = " ".join(str(error).split())
    return ForwardError(
        f"The forward pass of {type(model).__name__} failed on a zero input of shape "
        f"{tuple(example.shape)} ({type(error).__name__}: {detail}); input_size is one input "
        "without the batch dimension, e.g. (3, 224, 224): check it fits the model."
    )


# -- text ----------------------------------------------------------------------------------------
