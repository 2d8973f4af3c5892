"""Fitting an architecture to a checkpoint: the classifier's classes and the first conv's channels.

The most common real checkpoint is a pretrained architecture fine-tuned with a new head (10
classes instead of ImageNet's 1000) or a new stem (one grey input channel instead of three). Such
a file does not fit the architecture as built by default, but it fits the same architecture built
with the checkpoint's numbers. :func:`checkpoint_shape` reads those two numbers from the file by
the shapes of the model's own head and stem:

* the **classifier** is the last ``nn.Linear`` or ``nn.Conv2d`` (SqueezeNet's head is a 1×1 conv)
  whose output size is the built model's number of classes; its checkpoint weight's first
  dimension is the number of classes;
* the **first conv** is the first ``nn.Conv2d`` in definition order; its checkpoint weight's
  second dimension times its groups is the number of input channels.

A number is read only when the rest of that tensor's shape agrees with the model (same feature
width, same kernel), so another architecture is not disguised as a head change: it still fails in
:func:`~cnnviz.models.checkpoint.apply_checkpoint` with its mis-shaped keys listed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.errors import remedy
from cnnviz.inputs.preprocess import Preprocessing

logger = logging.getLogger(__name__)


KeyMap = Callable[[str], str]
"""Module path → the prefix its keys have in the checkpoint (torchvision VGG's ``features.0``)."""


@dataclass(frozen=True)
class CheckpointShape:
    """What a checkpoint says about the head and stem it was trained with (``None``: as built)."""

    num_classes: int | None = None
    in_channels: int | None = None

    @property
    def changes_anything(self) -> bool:
        return self.num_classes is not None or self.in_channels is not None


def first_conv(module: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first ``nn.Conv2d`` of ``module`` in definition order, with its dotted name."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            return name, child
    return None


def classifier_layer(module: nn.Module, num_classes: int) -> tuple[str, nn.Module] | None:
    """The last ``nn.Linear`` / ``nn.Conv2d`` whose output size is ``num_classes``."""
    found: tuple[str, nn.Module] | None = None
    for name, child in module.named_modules():
        linear = isinstance(child, nn.Linear) and child.out_features == num_classes
        if linear or (isinstance(child, nn.Conv2d) and child.out_channels == num_classes):
            found = (name, child)
    return found


def _weight_key(name: str, state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    return state_dict.get(f"{name}.weight" if name else "weight")


def _classes_in(
    module: nn.Module, num_classes: int, state_dict: Mapping[str, torch.Tensor], key_map: KeyMap
) -> int | None:
    head = classifier_layer(module, num_classes)
    if head is None:
        return None
    name, layer = head
    saved = _weight_key(key_map(name), state_dict)
    own = getattr(layer, "weight", None)
    if saved is None or not isinstance(own, torch.Tensor) or saved.dim() != own.dim():
        return None
    if saved.shape[1:] != own.shape[1:] or saved.shape[0] == own.shape[0]:
        return None
    return int(saved.shape[0])


def _channels_in(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], key_map: KeyMap
) -> int | None:
    stem = first_conv(module)
    if stem is None:
        return None
    name, conv = stem
    saved = _weight_key(key_map(name), state_dict)
    own = conv.weight
    if saved is None or saved.dim() != 4:
        return None
    same_kernel = saved.shape[0] == own.shape[0] and saved.shape[2:] == own.shape[2:]
    if not same_kernel or saved.shape[1] == own.shape[1]:
        return None
    return int(saved.shape[1]) * conv.groups


def checkpoint_shape(
    module: nn.Module,
    num_classes: int,
    state_dict: Mapping[str, torch.Tensor],
    *,
    key_map: KeyMap | None = None,
) -> CheckpointShape:
    """The number of classes and input channels ``state_dict`` was trained with, where they
    differ from ``module`` built for ``num_classes`` classes (see the module docstring).

    ``module`` may live on the ``meta`` device: only shapes are read.

    Example::

        shape = checkpoint_shape(resnet18(), 1000, torch.load("fine_tuned.pth"))
        shape.num_classes  # 10
    """
    keys = key_map or (lambda name: name)
    return CheckpointShape(
        num_classes=_classes_in(module, num_classes, state_dict, keys),
        in_channels=_channels_in(module, state_dict, keys),
    )


def replace_first_conv(module: nn.Module, in_channels: int) -> None:
    """Swap ``module``'s first conv for one taking ``in_channels`` (same kernel, stride, …).

    The new conv is created on the old one's device and dtype, freshly initialised; a checkpoint
    loaded afterwards overwrites it.
    """
    stem = first_conv(module)
    if stem is None:
        raise ValueError(f"{type(module).__name__} has no nn.Conv2d to give {in_channels} inputs")
    name, old = stem
    if in_channels % old.groups:
        raise ValueError(f"{in_channels} input channels cannot be split into {old.groups} groups")
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]  # torch stores a tuple
        stride=old.stride,  # type: ignore[arg-type]  # torch stores a tuple
        padding=old.padding,  # type: ignore[arg-type]  # a tuple or a string
        dilation=old.dilation,  # type: ignore[arg-type]  # torch stores a tuple
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)


def describe_fit(shape: CheckpointShape) -> str:
    """The one line that says what was read: ``classifier: 10 classes, from the checkpoint``."""
    parts = []
    if shape.num_classes is not None:
        parts.append(f"classifier: {shape.num_classes} classes")
    if shape.in_channels is not None:
        s = "" if shape.in_channels == 1 else "s"
        parts.append(f"first conv: {shape.in_channels} input channel{s}")
    return f"{'; '.join(parts)}, from the checkpoint"


def log_fit(shape: CheckpointShape, source: str) -> None:
    """Say :func:`describe_fit` once, at INFO, when the checkpoint changed the architecture."""
    if shape.changes_anything:
        logger.info("%s (%s)", describe_fit(shape), source)


def module_to_file(key_map: Mapping[str, str] | None) -> KeyMap | None:
    """The :data:`KeyMap` of a checkpoint-key → module-key mapping (its inverse, by prefix)."""
    if not key_map:
        return None
    inverse = {module_key: file_key for file_key, module_key in key_map.items()}

    def to_file(name: str) -> str:
        return inverse.get(f"{name}.weight", f"{name}.weight").removesuffix(".weight")

    return to_file


def fitted_preprocessing(prep: Preprocessing, shape: CheckpointShape) -> Preprocessing:
    """``prep`` for the checkpoint's number of input channels (unchanged when it has 3)."""
    if shape.in_channels is None or shape.in_channels == prep.channels:
        return prep
    fitted = prep.with_channels(shape.in_channels)
    logger.info(
        "preprocessing: mean %s and std %s for %d input channel(s), from the RGB ones; "
        "set them with %s",
        fitted.mean,
        fitted.std,
        fitted.channels,
        remedy("--mean and --std", "preprocessing={'mean': …, 'std': …}"),
    )
    return fitted
