"""Loading a model the user brings: their own class (:mod:`cnnviz.models.user`), or a program
(:mod:`cnnviz.models.programs`), into a :class:`~cnnviz.models.loaded.LoadedModel`.

Such a model names no classes and no preprocessing: the classes are numbered by the width of
its output (one forward pass of a zero image at the input size, which also shows early that the
model runs on the input it will be given), and the preprocessing is ImageNet's, with one mean and
std per input channel of its first conv (or of the program's input).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from cnnviz.capture.forward import model_state_guard
from cnnviz.capture.targets import logits_of
from cnnviz.errors import CnnvizError, error_text, remedy
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.models.adapt import CheckpointShape, first_conv, fitted_preprocessing
from cnnviz.models.checkpoint import apply_checkpoint, load_checkpoint
from cnnviz.models.loaded import LoadedModel, WeightsChoice, describe_file, numbered_classes
from cnnviz.models.programs import PROGRAM_PREFIXES, ProgramError, load_program
from cnnviz.models.user import build_user_module, is_user_spec

IMAGENET = Preprocessing()


class ModelRunError(CnnvizError, ValueError):
    """The user's model fails on an input of the size and channels it was said to take."""


def is_own_model(name: str) -> bool:
    """Whether ``name`` is a user class spec or a ``torchscript:`` / ``export:`` program."""
    return name.startswith(PROGRAM_PREFIXES) or is_user_spec(name)


def load_own(
    name: str, weights: WeightsChoice, model_args: Mapping[str, Any] | None
) -> LoadedModel:
    """Build or load the user's model named ``name``; classes are left empty (numbered later by
    :func:`count_outputs`, once the preprocessing is final)."""
    if name.startswith(PROGRAM_PREFIXES):
        if weights != "pretrained" or model_args:
            raise ProgramError(
                f"{name} is a program that carries its own weights and arguments; drop "
                f"{remedy('--weights and --model-arg', 'weights= and model_args=')}"
            )
        program = load_program(name)
        prep = fitted_preprocessing(IMAGENET, CheckpointShape(in_channels=program.in_channels))
        if program.input_size is not None:
            prep = replace(prep, input_size=program.input_size)
        return LoadedModel(
            name, program.module, name.partition(":")[0], program.description, (), prep
        )
    module = build_user_module(name, model_args)
    description = f"as built by {name}"
    if isinstance(weights, str):
        if weights == "random":
            description += " (its own initialisation)"
    else:
        apply_checkpoint(module, load_checkpoint(weights), source=str(weights))
        description = describe_file(weights)
    return LoadedModel(
        name, module, type(module).__name__, description, (), imagenet_preprocessing_for(module)
    )


def imagenet_preprocessing_for(module: nn.Module) -> Preprocessing:
    """ImageNet's preprocessing with one mean and std per input channel of ``module``'s first
    conv (ImageNet's own when it has none): the default for a model that names none."""
    stem = first_conv(module)
    channels = stem[1].in_channels if stem else None
    return fitted_preprocessing(IMAGENET, CheckpointShape(in_channels=channels))


def count_outputs(module: nn.Module, prep: Preprocessing, device: torch.device) -> int:
    """The number of classes: the width of ``module``'s logits for one zero image.

    Raises:
        ModelRunError: the forward pass fails; the message names the input it was given and
            the options that change it.
    """
    x = torch.zeros((1, prep.channels, *prep.input_size), device=device)
    try:
        with model_state_guard(module), torch.no_grad():
            logits = logits_of(module(x))
    except CnnvizError:
        raise
    except Exception as e:  # the user's forward: any failure becomes one message
        raise ModelRunError(
            f"the model fails on a {tuple(x.shape)} input ({type(e).__name__}: "
            f"{error_text(e)[:200]}); give the input it takes with "
            f"{remedy('--input-size and --mean/--std (one value per channel)', 'preprocessing=')}"
        ) from e
    if logits.dim() != 2:
        raise ModelRunError(
            f"the model's output has shape {tuple(logits.shape)}; cnnviz explains classifiers "
            "whose output is (N, classes), or give a target function in Python"
        )
    return int(logits.shape[1])


def numbered_for(module: nn.Module, prep: Preprocessing, device: torch.device) -> tuple[str, ...]:
    """Numbered class names, one per output of ``module``."""
    return numbered_classes(count_outputs(module, prep, device))
