"""The seed exercise's VGG-11 (Simonyan & Zisserman 2015, configuration "A"), with its layer names.

The backbone is built from the configuration ``[64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M',
512, 512, 'M']`` and names each layer as the exercise does: ``conv1``, ``conv2``, ``conv3_1``,
``conv3_2``, …, ``conv5_2`` (``bn…`` for BatchNorm, ``relu…``, ``pool1`` … ``pool5``). The
classifier is torchvision's: adaptive average pool to 7×7, then 25088 → 4096 → 4096 → classes.
:func:`torchvision_key_map` maps torchvision's ``features.N`` checkpoint keys onto these names.

A ``width`` multiplier narrows every layer (conv channels and the hidden units); ``shapes_vgg11``
uses it for 64×64 inputs.
"""

from __future__ import annotations

import torch
from torch import nn

VGG11_CONFIG: tuple[int | str, ...] = (
    64,
    "M",
    128,
    "M",
    256,
    256,
    "M",
    512,
    512,
    "M",
    512,
    512,
    "M",
)


def _block_names(config: tuple[int | str, ...]) -> list[tuple[str, int | str]]:
    """Seed-style suffixes for each config entry: ('1', 64), ('pool1', 'M'), ('3_1', 256), …"""
    blocks: list[list[int]] = [[]]
    for entry in config:
        if entry == "M":
            blocks.append([])
        else:
            blocks[-1].append(int(entry))
    named: list[tuple[str, int | str]] = []
    for b, widths in enumerate(blocks[:-1], start=1):
        for i, width in enumerate(widths, start=1):
            named.append((f"{b}" if len(widths) == 1 else f"{b}_{i}", width))
        named.append((f"pool{b}", "M"))
    return named


class VGG11Backbone(nn.Module):
    """Convolutional feature extractor with the seed's layer names (conv1 … conv5_2, pool5)."""

    def __init__(
        self,
        in_channels: int = 3,
        *,
        batch_norm: bool = False,
        width: float = 1.0,
        config: tuple[int | str, ...] = VGG11_CONFIG,
    ) -> None:
        super().__init__()
        channels = in_channels
        for suffix, entry in _block_names(config):
            if entry == "M":
                self.add_module(suffix, nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = max(1, round(int(entry) * width))
            self.add_module(f"conv{suffix}", nn.Conv2d(channels, out, kernel_size=3, padding=1))
            if batch_norm:
                self.add_module(f"bn{suffix}", nn.BatchNorm2d(out))
            self.add_module(f"relu{suffix}", nn.ReLU(inplace=True))
            channels = out
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


class VGG11(nn.Module):
    """VGG-11 classifier: :class:`VGG11Backbone` → adaptive avg-pool → 3 fully connected layers.

    With the defaults (``width=1``, ``hidden=4096``, 1000 classes) it has 132,863,336 parameters,
    132,868,840 with ``batch_norm=True`` — torchvision's ``vgg11`` / ``vgg11_bn``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        batch_norm: bool = False,
        width: float = 1.0,
        hidden: int | None = None,
        pool_size: int = 7,
        dropout: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.backbone = VGG11Backbone(in_channels, batch_norm=batch_norm, width=width)
        hidden = hidden if hidden is not None else max(1, round(4096 * width))
        features = self.backbone.out_channels * pool_size * pool_size
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        logits: torch.Tensor = self.classifier(x)
        return logits


def torchvision_key_map(*, batch_norm: bool) -> dict[str, str]:
    """torchvision ``vgg11``/``vgg11_bn`` state-dict key → this module's key.

    torchvision numbers ``features`` as conv, [bn], relu, …, pool in order; the classifier keys
    are identical.
    """
    mapping: dict[str, str] = {}
    index = 0
    for suffix, entry in _block_names(VGG11_CONFIG):
        if entry == "M":
            index += 1
            continue
        layers = [f"conv{suffix}"] + ([f"bn{suffix}"] if batch_norm else [])
        for layer in layers:
            params: tuple[str, ...] = ("weight", "bias")
            if layer.startswith("bn"):
                params += ("running_mean", "running_var", "num_batches_tracked")
            for p in params:
                mapping[f"features.{index}.{p}"] = f"backbone.{layer}.{p}"
            index += 1
        index += 1  # ReLU
    for i in (0, 3, 6):
        for p in ("weight", "bias"):
            mapping[f"classifier.{i}.{p}"] = f"classifier.{i}.{p}"
    return mapping
