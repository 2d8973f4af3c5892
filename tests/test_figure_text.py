"""Every text of every figure cnnviz draws lies inside its figure, and tick labels never overlap.

Each public function of :mod:`cnnviz.render.figures` that returns a Figure has sample calls here
with realistic long text (DenseNet layer names, the longest ImageNet class names, long file
names); a new figure function without a sample fails :func:`test_every_figure_has_a_sample`.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from cnnviz.methods.postprocess import Display
from cnnviz.metrics.sanity import SanityResult
from cnnviz.models.loaded import imagenet_classes
from cnnviz.render import figures

LAYER = "features.denseblock4.denselayer16.conv2"
FILE = "a_photo_from_the_holidays_with_a_rather_long_name_2024-08-17.jpg"
TOLERANCE = 1.0  # pixels


def _longest_class() -> str:
    return max(imagenet_classes(), key=len)


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _tiles(k: int, rgb: bool = True) -> np.ndarray:
    shape = (k, 3, 3, 3) if rgb else (k, 3, 3)
    return _rng().integers(0, 256, size=shape, dtype=np.uint8)


def _sanity(steps: int, displays: tuple[Display, ...]) -> dict[str, SanityResult]:
    names = ("integrated-gradients", "guided-backprop", "gradcam++")
    labels = tuple(
        f"features.denseblock{1 + k // 16}.denselayer{1 + k % 16}.conv2" for k in range(steps)
    )
    rng = _rng()
    return {
        name: SanityResult(
            method=name,
            mode="cascading",
            layer=LAYER,
            steps=labels,
            similarity={
                m: rng.uniform(-1, 1, (2, steps)) for m in ("spearman", "spearman_abs", "ssim")
            },
            pictures=rng.random((steps + 1, 2, 16, 16)),
            display=display,
            outlier_percent=2.0,
        )
        for name, display in zip(names, displays, strict=False)
    }


def _curves(methods: int) -> dict[str, dict[str, list[np.ndarray]]]:
    rng = _rng()
    names = ["integrated-gradients", "guided-gradcam", "smoothgrad-sq", "gradcam++", "rise"]
    return {
        f"{names[k % len(names)]}-{k}": {
            kind: [np.sort(rng.random(21))[::-1] for _ in range(3)]
            for kind in ("deletion", "insertion")
        }
        for k in range(methods)
    }


def _maps(count: int) -> list[np.ndarray]:
    return [_rng().random((7, 7)) for _ in range(count)]


def _image() -> np.ndarray:
    return _rng().integers(0, 256, size=(224, 224, 3), dtype=np.uint8)


Sample = Callable[[], Figure]

SAMPLES: dict[str, list[Sample]] = {
    "filters_figure": [
        lambda: figures.filters_figure(
            _tiles(64),
            title=f"Filters of {LAYER} (96, 3, 3, 3) — densenet121",
            caption="per-filter scale, mean view",
            total=96,
        ),
        lambda: figures.filters_figure(
            _tiles(4, rgb=False), title=f"Filters of {LAYER} (4, 128, 3, 3) — densenet121"
        ),
    ],
    "activations_figure": [
        lambda shared=shared: figures.activations_figure(
            _rng().normal(size=(16, 7, 7)),
            title=f"Activations of {LAYER} (1, 32, 7, 7) — {FILE}",
            channel_ids=list(range(100, 116)),
            shared_scale=shared,
        )
        for shared in (False, True)
    ]
    + [
        lambda: figures.activations_figure(
            _rng().normal(size=(2, 7, 7)),
            title=f"Activations of {LAYER} (1, 32, 7, 7) — {FILE}",
            channel_ids=[0, 1],
            shared_scale=False,
        )
    ],
    "maps_figure": [
        lambda display=display: figures.maps_figure(
            _image(),
            _maps(3),
            [f"Grad-CAM++ @ {LAYER}", "Integrated Gradients", "Guided Grad-CAM"],
            display=display,
            label=_longest_class(),
            title=f"{FILE}: {_longest_class()} (87.1 %)",
        )
        for display in (Display.POSITIVE, Display.SIGNED)
    ]
    + [
        lambda: figures.maps_figure(
            _image(), _maps(1), [f"Grad-CAM @ {LAYER}"], label=_longest_class(), title=FILE
        )
    ],
    "curves_figure": [lambda: figures.curves_figure(_curves(6))],
    "road_figure": [
        lambda: figures.road_figure(
            {
                name: [(np.sort(r)[::-1], np.sort(r)) for r in _rng().random((3, 5))]
                for name in _curves(6)
            },
            [10.0, 30.0, 50.0, 70.0, 90.0],
        )
    ],
    "similarity_figure": [
        lambda steps=steps, title=title: figures.similarity_figure(
            _sanity(steps, (Display.POSITIVE,) * 3), title=title
        )
        for steps in (11, 64)
        for title in (None, f"cascading randomisation — {FILE}")
    ],
    "sanity_maps_figure": [
        lambda: figures.sanity_maps_figure(_sanity(64, (Display.SIGNED, Display.ABSOLUTE))),
        lambda: figures.sanity_maps_figure(_sanity(3, (Display.POSITIVE,))),
    ],
}


def _figure_functions() -> list[str]:
    """The public functions of render.figures that draw a Figure (not the blank new_figure)."""
    return sorted(
        name
        for name, function in inspect.getmembers(figures, inspect.isfunction)
        if function.__module__ == figures.__name__
        and not name.startswith("_")
        and inspect.signature(function).return_annotation in ("Figure", Figure)
        and name != "new_figure"
    )


def test_every_figure_has_a_sample() -> None:
    assert _figure_functions() == sorted(SAMPLES)
    assert len(_figure_functions()) == 7


def drawn_texts(fig: Figure) -> list[Text]:
    """Draw ``fig``; the texts that drew something (visible, not empty), in drawing order."""
    drawn: list[Text] = []
    original = Text.draw

    def record(self: Text, renderer: Any) -> None:
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        original(self, renderer)

    with mock.patch.object(Text, "draw", record):
        fig.canvas.draw()
    return drawn


def assert_text_inside(fig: Figure) -> int:
    """Draw ``fig``; every text drawn lies inside the figure (1-pixel tolerance). Returns how
    many texts were checked."""
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg has one
    width, height = fig.bbox.width, fig.bbox.height
    for text in texts:
        box = text.get_window_extent(renderer)
        inside = (
            box.x0 >= -TOLERANCE
            and box.y0 >= -TOLERANCE
            and box.x1 <= width + TOLERANCE
            and box.y1 <= height + TOLERANCE
        )
        assert inside, (
            f"{text.get_text()!r} at x {box.x0:.1f}…{box.x1:.1f}, y {box.y0:.1f}…{box.y1:.1f} "
            f"is outside the {width:.0f}×{height:.0f} figure"
        )
    return len(texts)


CASES = [(name, k) for name, samples in SAMPLES.items() for k in range(len(samples))]


@pytest.mark.parametrize(("name", "k"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_every_text_lies_inside_its_figure(name: str, k: int) -> None:
    fig = SAMPLES[name][k]()
    assert assert_text_inside(fig) >= 1  # at least the title


def test_similarity_tick_labels_do_not_overlap() -> None:
    for steps in (11, 30, 64, 200):
        fig = figures.similarity_figure(_sanity(steps, (Display.POSITIVE,)))
        drawn = drawn_texts(fig)
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg has one
        for ax in fig.axes:
            labels = [t for t in ax.get_xticklabels() if t in drawn]
            assert len(labels) >= min(steps, 10)  # still labelled along the whole axis
            boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
            for left, right in itertools.pairwise(boxes):
                assert left.x1 <= right.x0 + TOLERANCE, (steps, left, right)
        assert fig.get_size_inches()[0] <= 9.0 * 3 + 1e-9


def test_map_figures_carry_a_colour_bar_saying_what_the_colours_mean() -> None:
    label = _longest_class()
    fig = figures.maps_figure(_image(), _maps(2), ["a", "b"], label=label)
    (bar,) = [ax for ax in fig.axes if not ax.images]
    text = bar.get_xlabel().replace("\n", " ")
    assert text == f"red: more evidence for {label} · blue: none"
    signed = figures.maps_figure(_image(), _maps(1), ["a"], display=Display.SIGNED, label="cat")
    (bar,) = [ax for ax in signed.axes if not ax.images]
    assert bar.get_xlabel() == "red: for cat · blue: against · white: neither"
    assert [t.get_text() for t in bar.get_xticklabels()] == ["−", "0", "+"]
    one = figures.sanity_maps_figure(_sanity(3, (Display.POSITIVE,) * 2))
    assert sum(not ax.images for ax in one.axes) == 1  # one bar for rows drawn alike
    two = figures.sanity_maps_figure(_sanity(3, (Display.SIGNED, Display.ABSOLUTE)))
    bars = [ax for ax in two.axes if not ax.images]
    assert len(bars) == 2
    assert bars[0].get_ylabel().replace("\n", " ") == "red: for · blue: against · white: neither"


def _title(fig: Figure) -> str:
    return fig.get_suptitle().replace("\n", " ")


def test_filters_title_says_how_many_filters_it_shows() -> None:
    capped = figures.filters_figure(_tiles(64), title="Filters of conv1", total=96)
    assert _title(capped) == "Filters of conv1: first 64 of 96 filters"
    every = figures.filters_figure(_tiles(32), title="Filters of conv1", total=32)
    assert _title(every) == "Filters of conv1: all 32 filters"
    per_input = figures.filters_figure(
        _tiles(64, rgb=False), title="Filters of conv2", total=128, tiles_per_filter=16
    )
    assert _title(per_input) == "Filters of conv2: first 4 of 128 filters"
    assert _title(figures.filters_figure(_tiles(8), title="x")) == "x"


def test_wrap_text_breaks_at_spaces_then_after_dots() -> None:
    assert figures.wrap_text("a bb ccc dddd", 6) == "a bb\nccc\ndddd"
    assert figures.wrap_text(f"Filters of {LAYER}", 24) == (
        "Filters of features.\ndenseblock4.\ndenselayer16.conv2"
    )
    assert figures.wrap_text("x" * 10, 4) == "xxxx\nxxxx\nxx"
    assert figures.wrap_text("one\ntwo three", 20) == "one\ntwo three"
    assert figures.wrap_text("Filters of conv1 (64, 3, 3, 3): all", 20) == (
        "Filters of conv1\n(64, 3, 3, 3): all"
    )
    # At 12 pt and 0.64 em per glyph, 4 inches hold 37 characters.
    assert max(len(line) for line in figures.fit_text("word " * 40, 4.0).split("\n")) <= 37


def _drawing(images: int, targets: int, display: Display, label: str) -> Any:
    from cnnviz.render.explanation import Drawing

    rng = _rng()
    return Drawing(
        shown=rng.random((images, targets, 32, 32)),
        pictures=rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
        labels=[[label] * targets for _ in range(images)],
        probabilities=rng.random((images, targets)),
        method_title="Integrated Gradients",
        layer="features.denseblock4.denselayer16.conv2",
        display=display,
        outlier_percent=2.0,
    )


@pytest.mark.parametrize(
    ("images", "targets", "display"),
    [
        (1, 1, Display.POSITIVE),
        (1, 1, Display.SIGNED),
        (3, 4, Display.ABSOLUTE),
        (9, 7, Display.NEGATIVE),
    ],
)
def test_explanation_figures_keep_their_text_inside(
    images: int, targets: int, display: Display
) -> None:
    """The figure an Explanation shows itself as (render.explanation), with the longest class."""
    from cnnviz.render.explanation import explanation_figure

    fig = explanation_figure(_drawing(images, targets, display, _longest_class()))
    assert assert_text_inside(fig) >= 3  # title, a panel title, the colour bar's label
