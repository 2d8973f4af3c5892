"""Any torchvision or timm classifier, by name: ``torchvision:resnet18``, ``timm:convnext_tiny``.

torchvision models are built with ``weights=None`` and given the ``DEFAULT`` weights' file from the
torch hub cache, read safely by :func:`~cnnviz.models.checkpoint.load_checkpoint` (torchvision's
own loader unpickles the cache without ``weights_only``). The few builder arguments that
torchvision derives from its weights (class count, ViT image size, Inception's input transform)
are set here the same way. Preprocessing and class names come from the weights' metadata.

timm models are built with ``timm.create_model(name, pretrained=False)``; their pretrained
weights come from the Hugging Face hub through timm, so they need a network unless a file is
passed. Preprocessing comes from timm's ``pretrained_cfg``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnviz.errors import (
    ModelNotFoundError,
    WeightsUnavailableError,
    close_matches,
    error_text,
    remedy,
    weights_remedy,
)
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.models.adapt import (
    CheckpointShape,
    checkpoint_shape,
    fitted_preprocessing,
    log_fit,
    replace_first_conv,
)
from cnnviz.models.checkpoint import (
    apply_checkpoint,
    check_finite_weights,
    fetch_hub_checkpoint,
    hub_checkpoint_path,
    load_checkpoint,
    offline_mode,
)
from cnnviz.models.loaded import (
    RANDOM_INIT,
    LoadedModel,
    ModelInfo,
    WeightsChoice,
    classes_for,
    describe_file,
    numbered_classes,
)
from cnnviz.models.network import HUB_HOST, hub_reachable

logger = logging.getLogger(__name__)

# Auxiliary training heads that torchvision's checkpoints carry and its builders then drop.
_AUX_HEADS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
# DenseNet checkpoints predate the ban on '.' in module names: 'norm.1' is now 'norm1'.
_OLD_DENSENET_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def load_external(
    name: str, weights: WeightsChoice, builder_args: Mapping[str, Any] | None = None
) -> LoadedModel:
    """Load ``torchvision:ARCH`` or ``timm:ARCH`` (``name`` keeps the prefix); ``builder_args``
    are keyword arguments of torchvision's ``get_model`` / timm's ``create_model``."""
    prefix, _, arch = name.partition(":")
    if prefix == "torchvision":
        return load_torchvision(name, arch, weights, builder_args)
    return load_timm(name, arch, weights, builder_args)


# ----------------------------------------------------------------------------- torchvision


@lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    from torchvision import models  # lazy: torchvision takes seconds to import

    return tuple(models.list_models(module=models))


def torchvision_names() -> list[str]:
    """torchvision's classification model names (detection, segmentation, video excluded)."""
    return list(_torchvision_names())


def _default_weights(arch: str) -> Any:
    """torchvision's ``DEFAULT`` weights enum member for ``arch`` (untyped: torchvision's enum)."""
    from torchvision.models import get_model_weights  # lazy: torchvision takes seconds to import

    return get_model_weights(arch).DEFAULT


def torchvision_preprocessing(weights: Any) -> Preprocessing:
    """Preprocessing from a weights enum's ``transforms()`` (``ImageClassification``)."""
    transform = weights.transforms()
    crop = int(transform.crop_size[0])
    resize = int(transform.resize_size[0])
    return Preprocessing(
        input_size=(crop, crop),
        crop_pct=crop / resize,
        interpolation=str(transform.interpolation.value),
        mean=tuple(float(m) for m in transform.mean),
        std=tuple(float(s) for s in transform.std),
    )


def _torchvision_kwargs(arch: str, meta: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Builder arguments torchvision sets itself when it builds with these weights."""
    kwargs: dict[str, Any] = {"num_classes": len(meta["categories"])}
    if arch.startswith("vit_"):
        kwargs["image_size"] = int(meta["min_size"][0])
    elif arch == "maxvit_t":
        kwargs["input_size"] = tuple(meta["min_size"])
    elif arch in _AUX_HEADS:
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = source == "random"
        # torchvision's ImageNet weights expect the input re-normalised inside the model.
        kwargs["transform_input"] = source == "pretrained"
    return kwargs


def _fit_torchvision_keys(arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Drop auxiliary heads and rename old DenseNet keys, as torchvision's builders do."""
    aux = _AUX_HEADS.get(arch, ())
    kept = {k: v for k, v in state_dict.items() if not k.startswith(aux)} if aux else state_dict
    if arch.startswith("densenet"):
        kept = {_OLD_DENSENET_KEY.sub(r"\1\2.", k): v for k, v in kept.items()}
    return kept


def _fit_torchvision(
    arch: str, kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> CheckpointShape:
    """The checkpoint's classes and input channels, put into the builder's ``kwargs``."""
    from torchvision.models import get_model  # lazy: torchvision takes seconds to import

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        probe = get_model(arch, weights=None, **kwargs)
    shape = checkpoint_shape(probe, int(kwargs["num_classes"]), state_dict)
    if shape.num_classes is not None:
        kwargs["num_classes"] = shape.num_classes
    if shape.in_channels is not None and "transform_input" in kwargs:
        kwargs["transform_input"] = False  # Inception's re-normalisation is for RGB
    return shape


def load_torchvision(
    name: str, arch: str, weights: WeightsChoice, builder_args: Mapping[str, Any] | None = None
) -> LoadedModel:
    """Build torchvision's ``arch`` with the ``DEFAULT`` weights, random init, or a file.

    A file trained with another number of classes or input channels builds the architecture
    with the file's numbers (see :mod:`cnnviz.models.adapt`). ``builder_args`` go to
    ``torchvision.models.get_model`` as keyword arguments.
    """
    from torchvision.models import get_model  # lazy: torchvision takes seconds to import

    if arch not in _torchvision_names():
        raise ModelNotFoundError(
            f"torchvision has no classification model {arch!r}."
            f"{close_matches(arch, _torchvision_names())} See torchvision.models.list_models()"
        )
    default = _default_weights(arch)
    kind = weights if isinstance(weights, str) else "file"
    kwargs = _torchvision_kwargs(arch, default.meta, source=kind) | dict(builder_args or {})
    shape, state_dict, description = CheckpointShape(), None, RANDOM_INIT
    if weights != "random":
        if weights == "pretrained":
            path = fetch_hub_checkpoint(default.url, model_name=name)
            description = f"torchvision {default.name} ({path})"
        else:
            path, description = weights, describe_file(weights)
        state_dict = _fit_torchvision_keys(arch, load_checkpoint(path))
        shape = _fit_torchvision(arch, kwargs, state_dict)
    module: nn.Module = _built(lambda: get_model(arch, weights=None, **kwargs), name)
    if shape.in_channels is not None:
        replace_first_conv(module, shape.in_channels)
    if state_dict is not None:
        apply_checkpoint(module, state_dict, source=str(path))
        log_fit(shape, str(path))
    categories = tuple(default.meta["categories"])
    num_classes = int(kwargs["num_classes"])
    return LoadedModel(
        name=name,
        module=module,
        architecture=f"torchvision {arch}",
        weights=description,
        class_names=categories if num_classes == len(categories) else classes_for(num_classes),
        preprocessing=fitted_preprocessing(torchvision_preprocessing(default), shape),
    )


def _built(build: Callable[[], nn.Module], name: str) -> nn.Module:
    """``build()``, with a builder's rejection of its arguments as one message."""
    try:
        return build()
    except (TypeError, ValueError) as e:
        raise ModelNotFoundError(
            f"cannot build {name!r} with these arguments ({error_text(e)}); check "
            f"{remedy('--model-arg', 'model_args')}"
        ) from e


def torchvision_info(arch: str) -> ModelInfo:
    """Describe ``torchvision:arch`` from its weights metadata, without building it."""
    default = _default_weights(arch)
    path = hub_checkpoint_path(default.url)
    return ModelInfo(
        name=f"torchvision:{arch}",
        architecture=f"torchvision {arch}",
        weights_source=f"torchvision {default.name} ({path})",
        num_classes=len(default.meta["categories"]),
        input_size=torchvision_preprocessing(default).input_size,
        offline=path.is_file(),
    )


# ----------------------------------------------------------------------------- timm


@lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    import timm  # lazy: timm takes seconds to import

    return frozenset(timm.list_models())


def is_timm_model(arch: str) -> bool:
    """Whether timm has the architecture ``arch`` (an optional ``.tag`` is ignored)."""
    return arch.partition(".")[0] in _timm_names()


def timm_preprocessing(module: nn.Module) -> Preprocessing:
    """Preprocessing from a timm model's resolved data config (its ``pretrained_cfg``)."""
    from timm.data.config import resolve_model_data_config  # lazy: timm takes seconds to import

    cfg: dict[str, Any] = resolve_model_data_config(module)  # type: ignore[no-untyped-call]
    if cfg.get("crop_mode", "center") != "center":
        logger.warning(
            "timm's crop_mode %r is not supported; cnnviz centre-crops instead", cfg["crop_mode"]
        )
    _, height, width = cfg["input_size"]
    return Preprocessing(
        input_size=(int(height), int(width)),
        crop_pct=float(cfg["crop_pct"]),
        interpolation=str(cfg["interpolation"]),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
    )


def _timm_class_names(module: nn.Module, num_classes: int) -> tuple[str, ...]:
    """ImageNet names for 1000 classes, timm's ImageNet subset names, else numbers."""
    if num_classes == 1000:
        return classes_for(num_classes)
    # lazy: timm takes seconds to import
    from timm.data.imagenet_info import (
        ImageNetInfo,
        infer_imagenet_subset,
    )

    subset = infer_imagenet_subset(module)
    if subset:
        info = ImageNetInfo(subset)
        size = info.num_classes()  # type: ignore[no-untyped-call]  # timm leaves it unannotated
        if size == num_classes:
            return tuple(
                str(info.index_to_description(i)).split(",")[0] for i in range(num_classes)
            )
    return numbered_classes(num_classes)


def _create_timm(name: str, arch: str, *, pretrained: bool, **kwargs: Any) -> nn.Module:
    import timm  # lazy: timm takes seconds to import

    if not is_timm_model(arch):
        raise ModelNotFoundError(
            f"timm has no model {arch!r}.{close_matches(arch, _timm_names())} "
            "See timm.list_models()"
        )
    if not pretrained:
        try:
            created: nn.Module = timm.create_model(arch, pretrained=False, **kwargs)
        except (RuntimeError, TypeError, ValueError) as e:  # an invalid tag or argument
            raise ModelNotFoundError(f"timm cannot build {arch!r}: {e}") from e
        return created
    if offline_mode():
        raise WeightsUnavailableError(
            f"pretrained weights for {name!r} must be downloaded from the Hugging Face hub and "
            f"CNNVIZ_OFFLINE forbids it; pass {weights_remedy()}"
        )
    online = hub_reachable()  # if not, the hub client answers from its cache, without retries
    try:
        created = timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as e:  # any network/hub failure becomes one actionable message
        if not online:
            raise WeightsUnavailableError(
                f"no network: pretrained weights for {name!r} are not in the Hugging Face cache "
                f"and {HUB_HOST} cannot be reached; pass {weights_remedy()}"
            ) from e
        raise WeightsUnavailableError(
            f"pretrained weights for {name!r} could not be downloaded ({type(e).__name__}: "
            f"{e}); run with network access, or pass {weights_remedy()}"
        ) from e
    check_finite_weights(created.state_dict(), source=f"timm pretrained {arch}")
    return created


def _fit_timm(
    name: str, arch: str, kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> CheckpointShape:
    """The checkpoint's classes and input channels, put into ``create_model``'s ``kwargs``."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        probe = _create_timm(name, arch, pretrained=False, **kwargs)
    shape = checkpoint_shape(probe, int(getattr(probe, "num_classes", 0)), state_dict)
    if shape.num_classes is not None:
        kwargs["num_classes"] = shape.num_classes
    if shape.in_channels is not None:
        kwargs["in_chans"] = shape.in_channels
    return shape


def load_timm(
    name: str, arch: str, weights: WeightsChoice, builder_args: Mapping[str, Any] | None = None
) -> LoadedModel:
    """Build timm's ``arch`` with its pretrained weights, random init, or a file.

    A file trained with another number of classes or input channels builds the model with
    ``num_classes`` / ``in_chans`` from the file (see :mod:`cnnviz.models.adapt`); classes are
    then numbered unless timm knows the ImageNet subset. ``builder_args`` go to
    ``timm.create_model`` as keyword arguments.
    """
    kwargs = dict(builder_args or {})
    shape, state_dict = CheckpointShape(), None
    if isinstance(weights, Path):
        state_dict = load_checkpoint(weights)
        shape = _fit_timm(name, arch, kwargs, state_dict)
    module = _create_timm(name, arch, pretrained=weights == "pretrained", **kwargs)
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    if weights == "pretrained":
        description = f"timm pretrained {cfg.get('hf_hub_id') or cfg.get('url') or arch}"
    elif state_dict is None or not isinstance(weights, Path):
        description = RANDOM_INIT
    else:
        apply_checkpoint(module, state_dict, source=str(weights))
        log_fit(shape, str(weights))
        description = describe_file(weights)
    num_classes = int(getattr(module, "num_classes", 0))
    prep = timm_preprocessing(module)
    channels = int(getattr(module, "in_chans", kwargs.get("in_chans", 3)) or 3)
    return LoadedModel(
        name=name,
        module=module,
        architecture=f"timm {arch}",
        weights=description,
        class_names=_timm_class_names(module, num_classes),
        preprocessing=fitted_preprocessing(prep, CheckpointShape(in_channels=channels)),
    )
