"""The result of a feature visualisation: the optimised images, their units and their checks.

A :class:`FeatureVisualization` shows itself in Jupyter (``_repr_png_``), ``plot()`` returns the
figure, ``show()`` shows it, ``save(folder)`` writes one PNG per image, the grid, the images at
each kept step and ``checks.json``; ``to_pil(i)`` gives one image.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnviz.featurevis.checks import UnitChecks
from cnnviz.outputs.files import atomic_write_bytes, encode_png, to_json_text

if TYPE_CHECKING:
    from PIL import Image

    from cnnviz.featurevis.exemplars import Exemplars
    from cnnviz.render.canvas import InlineFigure


class UnitKind(enum.Enum):
    """What one unit of a visualisation is."""

    CHANNEL = "channel"
    NEURON = "neuron"
    LAYER = "layer"
    CLASS = "class"
    DIRECTION = "direction"
    OBJECTIVE = "objective"


@dataclass(frozen=True)
class Unit:
    """One thing visualised: its kind, layer (``None`` for a class), index and label."""

    kind: UnitKind
    layer: str | None
    index: int | None
    label: str


def pictures_of(images: torch.Tensor) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 of ``(N, C, H, W)`` images in [0, 1]: grey for one channel, RGB
    for three, the first three channels otherwise (an alpha channel is not drawn)."""
    x = images.detach().float().clamp(0, 1).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 2:
        x = x[:, :1].expand(-1, 3, -1, -1)
    else:
        x = x[:, :3]
    return (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.0f}"


def check_caption(checks: UnitChecks) -> str:
    """The checks of one unit, one per line (what was not computed is left out)."""
    first = f"activation {_number(checks.activation)}"
    if checks.activation_ratio is not None:
        first += f" = {_number(checks.activation_ratio)}× best exemplar"
    lines = [first]
    if checks.selectivity is not None:
        lines.append(f"selectivity {_number(checks.selectivity, 1)}")
    if checks.stability_activation is not None:
        lines.append(
            f"3 starts: activation {_number(checks.stability_activation)}, "
            f"SSIM {_number(checks.stability_similarity)}"
        )
    if checks.class_probability is not None:
        mark = "top-1" if checks.copies_top1 else "not top-1"
        lines.append(
            f"p {_number(checks.class_probability)}; moved {_number(checks.copies_probability)}, "
            f"{mark}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class FeatureVisualization:
    """What ``cnnviz.featurevis`` returns.

    Attributes:
        model_name: the model's name.
        objective: what was maximised, in words.
        units: the units, one per column.
        images: ``(U × F, C, H, W)`` in [0, 1]: each unit's ``F`` facets, unit after unit.
        facets: images per unit.
        checks: per unit, the checks of its first facet (:mod:`cnnviz.featurevis.checks`).
        snapshots: the images at each kept step, by step.
        starts: ``(R − 1, U × F, C, H, W)``: the same units from the other starts of the
            stability check, which scored lower than the one shown (``None`` without it).
        steps: steps run.
        stopped: why the run ended early, or ``None``.
        settings: the parameters of the run (steps, lr, parameterisation, seed, …).
        exemplars: for a layer's channels with natural images given, their dataset exemplars
            (drawn under each picture: the receptive-field crops where the channel peaks).
    """

    model_name: str
    objective: str
    units: tuple[Unit, ...]
    images: torch.Tensor = field(repr=False)
    facets: int
    checks: tuple[UnitChecks, ...]
    snapshots: Mapping[int, torch.Tensor] = field(repr=False)
    starts: torch.Tensor | None = field(repr=False)
    steps: int
    stopped: str | None
    settings: Mapping[str, Any] = field(repr=False)
    exemplars: Exemplars | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        shape = "×".join(str(s) for s in self.images.shape[-2:])
        end = f", stopped: {self.stopped}" if self.stopped else ""
        return (
            f"<FeatureVisualization of {len(self.units)} unit(s) of {self.model_name}: "
            f"{self.objective}; {self.images.shape[0]} image(s) {shape}, {self.steps} steps{end}>"
        )

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C stopped the optimisation (the images are those of :attr:`steps`)."""
        return self.stopped is not None and self.stopped.startswith("interrupted")

    def labels(self) -> list[str]:
        return [
            unit.label + (f" · facet {f + 1}" if self.facets > 1 else "")
            for unit in self.units
            for f in range(self.facets)
        ]

    def title(self) -> str:
        layer = next((u.layer for u in self.units if u.layer), None)
        where = f" of {layer}" if layer else ""
        stop = f" (stopped: {self.stopped})" if self.stopped else ""
        below = "; under each, the exemplar crops where it fires most" if self._crops() else ""
        return (
            f"What the units want to see{where} — {self.model_name}, {self.steps} steps"
            f"{stop}{below}"
        )

    def plot(self, step: int | None = None) -> InlineFigure:
        """The images at ``step`` (one of :attr:`snapshots`; default: the last), with checks."""
        from cnnviz.render.features import feature_figure  # lazy: matplotlib is heavy

        images = self.images if step is None else self._snapshot(step)
        captions = [check_caption(c) for c in self.checks for _ in range(self.facets)]
        title = self.title() if step is None else f"{self.title()} — step {step}"
        return feature_figure(
            pictures_of(images), self.labels(), captions, title=title, beside=self._crops()
        )

    def _crops(self) -> list[np.ndarray] | None:
        """Per image, the exemplar crops of its unit (``None`` without exemplars)."""
        ex = self.exemplars
        if ex is None or ex.crops is None:
            return None
        crops = []
        empty = np.zeros((0, 1, 1, 3), np.uint8)
        for unit in self.units:
            if unit.index in ex.channels:
                row = ex.channels.index(unit.index)
                kept = ex.crops[row][~np.isnan(ex.peaks[row])]
            else:
                kept = empty
            crops += [kept] * self.facets
        return crops

    def _snapshot(self, step: int) -> torch.Tensor:
        if step not in self.snapshots:
            raise ValueError(f"no images kept at step {step}; kept: {sorted(self.snapshots)}")
        return self.snapshots[step]

    def show(self) -> None:
        """Show :meth:`plot` inline in a notebook, in a window in a script."""
        self.plot().show()

    def _repr_png_(self) -> bytes:
        from cnnviz.render.canvas import figure_to_png_bytes  # lazy: matplotlib is heavy

        return figure_to_png_bytes(self.plot())

    def to_pil(self, index: int = 0) -> Image.Image:
        """Image ``index`` (unit-major, facets together) as a PIL image."""
        from PIL import Image  # lazy: only for this conversion

        return Image.fromarray(pictures_of(self.images[index : index + 1])[0])

    def to_numpy(self) -> np.ndarray:
        """The images as ``(N, H, W, 3)`` uint8."""
        return pictures_of(self.images)

    def checks_table(self) -> list[dict[str, Any]]:
        """One row per unit: its kind, layer, index, label and every check."""
        return [
            {"kind": u.kind.value, "layer": u.layer, "index": u.index, "label": u.label}
            | c.as_dict()
            for u, c in zip(self.units, self.checks, strict=True)
        ]

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``unit-XX.png`` per image, ``features.png``, ``steps/NNNN/…``, ``checks.json``."""
        from cnnviz.render.canvas import figure_to_png_bytes  # lazy: matplotlib is heavy

        out = Path(folder)
        written = []
        for step, images in sorted(self.snapshots.items()):
            if step == self.steps and len(self.snapshots) == 1:
                continue
            written += _write_images(out / "steps" / f"{step:04d}", pictures_of(images), self)
        written += _write_images(out, self.to_numpy(), self)
        grid = out / "features.png"
        atomic_write_bytes(grid, figure_to_png_bytes(self.plot()))
        if self.exemplars is not None:
            written.append(self.exemplars.save(out / "exemplars"))
        checks = out / "checks.json"
        record = {
            "model": self.model_name,
            "objective": self.objective,
            "steps": self.steps,
            "stopped": self.stopped,
            "settings": dict(self.settings),
            "units": self.checks_table(),
        }
        atomic_write_bytes(checks, to_json_text(record).encode("utf-8"))
        return [*written, grid, checks]


def image_names(result: FeatureVisualization) -> list[str]:
    """``unit-00.png``, … (``unit-00-facet-1.png`` with facets), in image order."""
    names = []
    for u in range(len(result.units)):
        for f in range(result.facets):
            suffix = f"-facet-{f + 1}" if result.facets > 1 else ""
            names.append(f"unit-{u:02d}{suffix}.png")
    return names


def _write_images(folder: Path, pictures: np.ndarray, result: FeatureVisualization) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, picture in zip(image_names(result), pictures, strict=True):
        path = folder / name
        atomic_write_bytes(path, encode_png(picture))
        paths.append(path)
    return paths
