"""The method registry: every built-in method by name (``cnnviz methods``), and how one is made.

Importing this module imports every built-in method module; each registers its classes with
:func:`cnnviz.methods.base.register` as it is imported, so ``cnnviz methods`` lists them in this
import order.
"""

from __future__ import annotations

import inspect
from typing import Any

import cnnviz.methods.cam  # registers the CAM family (first in the listing)
import cnnviz.methods.cam_perturbation  # registers Score-CAM, Ablation-CAM
import cnnviz.methods.cam_random  # registers RandomCAM
import cnnviz.methods.gradient_shap  # registers GradientShap
import cnnviz.methods.gradients  # registers saliency, Gradient × Input, SmoothGrad
import cnnviz.methods.guided  # registers Guided Backprop, DeconvNet, Guided Grad-CAM
import cnnviz.methods.integrated  # registers Integrated Gradients
import cnnviz.methods.layer_attribution  # registers Conductance, Internal Influence, Neuron IG
import cnnviz.methods.noise_tunnel  # registers the noise tunnel
import cnnviz.methods.perturbation  # registers Occlusion, RISE
import cnnviz.methods.region_ablation  # registers Feature Ablation
import cnnviz.methods.shapley  # registers Shapley Value Sampling
import cnnviz.methods.surrogate  # noqa: F401  # registers LIME, KernelSHAP
from cnnviz.errors import CnnvizError, close_matches
from cnnviz.methods.base import Method, registered_methods


class MethodNotFoundError(CnnvizError, ValueError):
    """An unknown method name."""


class MethodOptionError(CnnvizError, TypeError, ValueError):
    """An option a method does not take, or a value it refuses."""


def method_names() -> list[str]:
    """Registered method names, in registration order."""
    return list(registered_methods())


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``."""
    methods = registered_methods()
    key = name.strip().lower().replace("_", "-")
    if key in methods:
        return methods[key]
    raise MethodNotFoundError(
        f"Unknown method {name!r}.{close_matches(key, methods)} "
        "List the methods with `cnnviz methods`."
    )


def method_options(cls: type[Method]) -> list[str]:
    """The keyword options of a method's constructor, in order."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def make_method(name: str, **options: Any) -> Method:
    """The method registered as ``name``, constructed with ``options``.

    Raises:
        MethodNotFoundError: no such method (close matches named).
        MethodOptionError: an option it does not take or a value it refuses; the message lists
            the options it takes.
    """
    cls = get_method(name)
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        accepted = ", ".join(method_options(cls)) or "none"
        raise MethodOptionError(
            f"Bad option for method {cls.name!r}: {e}. It takes: {accepted} "
            f"(documented in `help(cnnviz.methods.registry.get_method({cls.name!r}))`)."
        ) from e
