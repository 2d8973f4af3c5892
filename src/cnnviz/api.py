"""The one public verb: ``explain(model, images, method, layer=…, target=…)``."""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cnnviz.capture.forward import as_model_input
from cnnviz.capture.layers import LayerRef, auto_cam_layer, resolve_layer
from cnnviz.capture.targets import TargetSpec
from cnnviz.capture.token_models import token_layer_problem
from cnnviz.errors import LayerError, NotApplicableError
from cnnviz.inputs.given import ImagesLike, as_batch
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.methods.base import Explanation, Method, check_finite
from cnnviz.methods.registry import get_method, make_method, method_options
from cnnviz.models.own import imagenet_preprocessing_for
from cnnviz.outputs.results import open_results as open_results  # public: cnnviz.open_results

if TYPE_CHECKING:
    from cnnviz.models.loaded import LoadedModel

logger = logging.getLogger(__name__)

# What to use on a token model (ViT, Swin) instead of a CAM: methods that explain the input.
TOKEN_MODEL_METHODS = ("saliency", "integrated-gradients", "smoothgrad", "occlusion", "rise")

_AUTO_LAYER: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str]] = (
    weakref.WeakKeyDictionary()
)


def default_layer(model: nn.Module, x: torch.Tensor) -> str:
    """:func:`cnnviz.capture.layers.auto_cam_layer`, remembered per model and input shape."""
    per_model = _AUTO_LAYER.setdefault(model, {})
    key = tuple(x.shape[1:])
    if key not in per_model:
        per_model[key] = auto_cam_layer(model, x[:1])
    return per_model[key]


def cam_layer(
    model: nn.Module, x: torch.Tensor, layer: LayerRef | None, *, model_name: str, title: str
) -> str:
    """The layer a CAM method explains: ``layer`` resolved, or the automatic choice
    (:func:`default_layer`), refused when it is not a CNN feature map.

    Every CAM method's layer is resolved here, so every CAM method refuses the layers of a
    token model (:func:`cnnviz.capture.token_models.token_layer_problem`: a ViT's patch
    embedding, any layer after a self-attention, a channels-last Swin map); an ordinary CNN
    costs no forward pass for that check, a token model one per input shape.

    Raises:
        LayerError: an unknown or ambiguous layer, or no spatial layer to choose.
        NotApplicableError: the layer is part of a token model; the message names the reason
            and the input-space methods to use instead (:data:`TOKEN_MODEL_METHODS`).
    """
    resolved = resolve_layer(model, layer) if layer is not None else default_layer(model, x)
    problem = token_layer_problem(model, resolved, x)
    if problem is not None:
        raise NotApplicableError(
            problem.message(model_name, title, TOKEN_MODEL_METHODS, automatic=layer is None)
        )
    return resolved


def announce_default_layer(loaded: LoadedModel) -> str | None:
    """Choose (and log) :func:`default_layer` for ``loaded``'s input size now; ``None`` when the
    model has no spatial layer (the CAM method that needs one then says so itself).

    A run calls this before its progress bar starts, so the "Automatic CAM layer" line comes
    first; :func:`explain` then finds the choice remembered.
    """
    module = loaded.module
    example = torch.zeros(1, *loaded.preprocessing.input_shape)
    try:
        return default_layer(module, as_model_input(module, example))
    except LayerError:
        return None


def unpack_model(model: nn.Module | LoadedModel) -> tuple[nn.Module, Sequence[str] | None]:
    """The ``nn.Module`` and class names of a module or a :class:`cnnviz.models.LoadedModel`."""
    if isinstance(model, nn.Module):
        return model, None
    module = getattr(model, "module", None)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module or a cnnviz LoadedModel, got {type(model).__name__}"
        )
    return module, getattr(model, "class_names", None)


def model_preprocessing(model: nn.Module | LoadedModel, module: nn.Module) -> Preprocessing:
    """The preprocessing images get for ``model``: a LoadedModel's own, else ImageNet's with one
    mean and std per input channel of the module's first conv (as :func:`cnnviz.from_module`)."""
    prep = getattr(model, "preprocessing", None)
    if isinstance(prep, Preprocessing):
        return prep
    return imagenet_preprocessing_for(module)


def method_for_model(
    name: str, preprocessing: Preprocessing | None, options: dict[str, Any]
) -> Method:
    """The method registered as ``name`` with ``options``; a method that takes ``preprocessing``
    (Integrated Gradients' black baseline) gets the model's unless the options give one."""
    if preprocessing is not None and "preprocessing" in method_options(get_method(name)):
        options = {"preprocessing": preprocessing, **options}
    return make_method(name, **options)


def explain(
    model: nn.Module | LoadedModel,
    images: ImagesLike,
    method: str | Method = "gradcam",
    *,
    layer: LayerRef | None = None,
    target: TargetSpec = None,
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> Explanation:
    """Explain ``model``'s decision on a batch of preprocessed ``images``.

    Args:
        model: an ``nn.Module`` or a :class:`~cnnviz.models.LoadedModel` (which brings class names).
        images: an image file path, a list of paths, a PIL image or a NumPy array ``(H, W[, C])``
            (each read in the model's channel mode and preprocessed with the model's own
            preprocessing: a LoadedModel's, else ImageNet's), or a tensor ``(N, C, H, W)`` /
            ``(C, H, W)`` already preprocessed; moved to the model's device and dtype.
        method: a registry name (``cnnviz methods``) or a :class:`~cnnviz.methods.base.Method`.
        layer: for CAM methods, a dotted name, unique suffix or module; default: the last
            spatial layer (:func:`~cnnviz.capture.layers.auto_cam_layer`, logged).
        target: see :mod:`cnnviz.capture.targets` (default: each image's predicted class).
        class_names: names for class targets, one per class of the model (taken from a
            LoadedModel when not given); names of another count raise a ``TargetError``.
        **options: method options, e.g. ``signed=True`` for saliency. A method that takes
            ``preprocessing`` (Integrated Gradients' black baseline) gets the LoadedModel's
            unless one is given.

    Returns:
        An :class:`~cnnviz.methods.base.Explanation` with raw signed maps ``(N, T, h, w)``; it
        shows itself in a notebook, and ``.plot()``, ``.show()``, ``.to_pil()``, ``.save()``
        draw it over the images as the model saw them.

    Example::

        >>> e = cnnviz.explain(cnnviz.load_model("efficientnet_lite0"), "coffee.jpg", "gradcam")
        >>> e.targets.labels, e.probabilities

    The model is left as found: its training flags, parameters' ``requires_grad`` and ``.grad``,
    device and hooks.
    """
    module, names = unpack_model(model)
    if class_names is None:
        class_names = names
    if isinstance(method, Method):
        if options:
            raise TypeError("Options go to the Method constructor when passing a Method object")
        algorithm = method
    else:
        prep = None if isinstance(model, nn.Module) else getattr(model, "preprocessing", None)
        algorithm = method_for_model(method, prep, options)
    given = as_batch(images, model_preprocessing(model, module))
    x = as_model_input(module, given.x)
    check_finite(x, "The input image batch")
    resolved: str | None = None
    if algorithm.needs_layer:
        model_name = type(module).__name__ if isinstance(model, nn.Module) else str(model.name)
        resolved = cam_layer(module, x, layer, model_name=model_name, title=algorithm.title)
    elif layer is not None:
        logger.info("%s works on the input; layer %r ignored", algorithm.title, layer)
    result = algorithm.explain(module, x, layer=resolved, target=target, class_names=class_names)
    return dataclasses.replace(
        result, outlier_percent=algorithm.outlier_percent, pictures=given.pictures
    )
