"""What loading a model gives: the module with its name, weights' origin, classes and
preprocessing (:class:`LoadedModel`), and the class-name and weights vocabulary of the loaders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeAlias

import torch
from torch import nn

from cnnviz.inputs.preprocess import Preprocessing

WeightsChoice: TypeAlias = Path | Literal["pretrained", "random"]
"""A resolved ``weights`` argument: the pretrained weights, random init, or a checkpoint file."""

RANDOM_INIT = "random init"


@dataclass(frozen=True, repr=False)
class LoadedModel:
    """A model ready to explain: the module and what it needs around it (built-in models come
    in eval mode; a module from :func:`from_module` is left as found)."""

    name: str
    """Registry name as asked, e.g. ``"efficientnet_lite0"``, ``"torchvision:resnet18"``."""
    module: nn.Module
    architecture: str
    """e.g. ``"timm tf_efficientnet_lite0"``, ``"VGG-11 (seed layout)"``."""
    weights: str
    """Where the weights came from, for people: ``"random init"``, ``"file <path>"``, …"""
    class_names: tuple[str, ...]
    preprocessing: Preprocessing

    def __repr__(self) -> str:
        shown = ", ".join(self.class_names[:3]) + (", …" if len(self.class_names) > 3 else "")
        return (
            f"LoadedModel({self.name!r}: {self.architecture}; weights: {self.weights}; "
            f"{len(self.class_names)} classes [{shown}]; input {self.preprocessing.input_shape})"
        )


def module_of(model: nn.Module | LoadedModel) -> nn.Module:
    """The ``nn.Module`` of a module or a :class:`LoadedModel` (anything with a ``.module``).

    Raises:
        TypeError: neither.
    """
    if isinstance(model, nn.Module):
        return model
    module = getattr(model, "module", None)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module or a cnnviz LoadedModel, got {type(model).__name__}"
        )
    return module


def input_shape_of(model: nn.Module | LoadedModel) -> tuple[int, int, int]:
    """One input's ``(C, H, W)``: a LoadedModel's preprocessing's, else ``(C, 224, 224)`` with
    ``C`` the first Conv2d's input channels (3 when there is none)."""
    if isinstance(model, LoadedModel):
        return model.preprocessing.input_shape
    module = module_of(model)
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return (conv.in_channels if conv is not None else 3, 224, 224)


@dataclass(frozen=True)
class ModelInfo:
    """One registered model, described without building it."""

    name: str
    architecture: str
    weights_source: str
    num_classes: int
    input_size: tuple[int, int]
    offline: bool
    """Whether the default weights are usable right now without network access."""


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k category names, in index order, from torchvision's weights metadata."""
    from torchvision.models import VGG11_Weights  # lazy: torchvision takes seconds to import

    return tuple(VGG11_Weights.IMAGENET1K_V1.meta["categories"])


def numbered_classes(n: int) -> tuple[str, ...]:
    """Placeholder names ``("0", "1", …)`` for a model whose classes are unknown."""
    return tuple(str(i) for i in range(n))


def classes_for(n: int) -> tuple[str, ...]:
    """ImageNet names for a 1000-way head, numbers otherwise."""
    return imagenet_classes() if n == 1000 else numbered_classes(n)


def head_classes(state_dict: Mapping[str, torch.Tensor], key: str) -> int | None:
    """Number of classes of the head whose weight is ``state_dict[key]`` (``None`` if absent)."""
    weight = state_dict.get(key)
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else None


def describe_file(path: Path) -> str:
    """The ``weights`` text for a user checkpoint."""
    return f"file {path}"
