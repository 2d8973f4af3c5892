"""The notebook API: what ``import cnnviz`` gives, what it takes, and how its results show
themselves (PNG sizes, tables, short reprs, logging in a kernel)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnviz
from cnnviz.inputs.decode import decode_input
from cnnviz.inspect.tables import format_layer_table, format_summary
from cnnviz.models.vgg import VGG11
from cnnviz.notebook import NOTEBOOK_HANDLER_NAME, in_notebook, notebook_logging
from cnnviz.render import explanation as drawing
from cnnviz.render.canvas import InlineFigure


@pytest.fixture(scope="module")
def lite0() -> cnnviz.models.LoadedModel:
    return cnnviz.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def shapes() -> cnnviz.models.LoadedModel:
    return cnnviz.load_model("shapes_vgg11")


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def expected_size(rows: int, cols: int, colorbar: bool = True) -> tuple[int, int]:
    width = cols * drawing.PANEL_INCHES + (drawing.COLOUR_BAR_INCHES if colorbar else 0.0)
    height = rows * drawing.PANEL_INCHES + drawing.TITLE_INCHES
    return round(width * drawing.DPI), round(height * drawing.DPI)


# -- explain takes what people have ---------------------------------------------------------


def test_explain_a_file_name_shows_a_labelled_png_of_the_expected_size(
    lite0: cnnviz.models.LoadedModel, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(samples_dir)
    e = cnnviz.explain(lite0, "coffee.jpg", "gradcam")
    assert e.targets.labels == (("espresso",),)
    assert png_size(e._repr_png_()) == expected_size(1, 1) == (350, 295)
    page = e._repr_html_()
    assert page.startswith('<img src="data:image/png;base64,') and "espresso" in page
    assert "Grad-CAM @ bn2" in page and f"{100 * float(e.probabilities[0, 0]):.1f} %" in page


def test_paths_pil_numpy_and_tensor_give_the_same_maps_and_pictures(
    shapes: cnnviz.models.LoadedModel, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(80, 96, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(pixels).save(path)
    picture, tensor, _ = decode_input(path, shapes.preprocessing)
    forms = {
        "str": str(path),
        "path": path,
        "list": [path],
        "pil": Image.fromarray(pixels),
        "uint8": pixels,
        "float": pixels.astype(np.float64) / 255.0,
        "tensor": tensor,
    }
    results = {name: cnnviz.explain(shapes, given, "saliency") for name, given in forms.items()}
    reference = results["tensor"]
    for name, e in results.items():
        torch.testing.assert_close(e.maps, reference.maps, rtol=0, atol=1e-6, msg=name)
        assert e.pictures is not None and e.pictures.shape == (1, 64, 64, 3), name
        if name != "tensor":  # the tensor's picture is un-normalised: equal up to rounding
            assert torch.equal(e.pictures[0], torch.from_numpy(picture)), name
    diff = (reference.pictures[0].int() - torch.from_numpy(picture).int()).abs().max()  # type: ignore[union-attr]
    assert int(diff) <= 1


def test_a_list_of_paths_is_one_batch(lite0: cnnviz.models.LoadedModel, samples_dir: Path) -> None:
    paths = [samples_dir / "coffee.jpg", samples_dir / "chelsea.jpg"]
    e = cnnviz.explain(lite0, paths, "gradcam", target=cnnviz.TopK(2))
    assert e.maps.shape == (2, 2, 7, 7)
    assert e.targets.labels[0][0] == "espresso" and e.targets.labels[1][0] == "tiger cat"
    assert png_size(e._repr_png_()) == expected_size(2, 2) == (590, 535)
    shown = e.to_numpy()
    assert shown.shape == (2, 2, 224, 224) and shown.min() >= 0 and shown.max() == 1.0
    np.testing.assert_array_equal(e.to_numpy(raw=True), e.maps.numpy())


def test_a_plain_module_gets_imagenet_preprocessing_for_an_image(samples_dir: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    e = cnnviz.explain(net, samples_dir / "coffee.jpg", "gradcam", layer="0")
    assert e.input_size == (224, 224) and e.maps.shape == (1, 1, 224, 224)
    assert e.pictures is not None and e.pictures.shape == (1, 224, 224, 3)
    # grey model: the picture is the grey image, replicated
    assert torch.equal(e.pictures[0, ..., 0], e.pictures[0, ..., 2])


@pytest.mark.parametrize(
    ("given", "error", "words"),
    [
        (42, TypeError, "file path, a PIL image, a NumPy array"),
        (np.full((8, 8, 3), 2.0), ValueError, "must lie in [0, 1]"),
        (np.zeros((2, 8, 8, 3), np.uint8), ValueError, "pass a list of arrays"),
        ([], ValueError, "empty list"),
    ],
)
def test_explain_says_what_it_takes(
    shapes: cnnviz.models.LoadedModel, given: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=None) as caught:
        cnnviz.explain(shapes, given, "saliency")  # type: ignore[arg-type]
    assert words in str(caught.value)


# -- results that show themselves -----------------------------------------------------------


def test_plot_show_save_and_to_pil(
    shapes: cnnviz.models.LoadedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    x = torch.zeros(1, 3, 64, 64)
    e = cnnviz.explain(shapes, x, "gradcam", layer="bn4_1", target=cnnviz.TopK(3))
    fig = e.plot()
    assert isinstance(fig, InlineFigure)
    assert png_size(fig._repr_png_()) == expected_size(1, 3)
    assert png_size(e.plot(colorbar=False)._repr_png_()) == expected_size(1, 3, colorbar=False)
    # into the caller's axes: one panel, titled with its class
    outer = InlineFigure()
    ax = outer.add_subplot()
    assert e.plot(ax, target=1) is outer
    assert ax.get_title().startswith(e.targets.labels[0][1])
    heat = e.to_pil(target=2, style="heatmap")
    assert heat.size == (64, 64)
    expected = cnnviz.render.colours.colorize(e.to_numpy()[0, 2], "jet")
    np.testing.assert_array_equal(np.asarray(heat), expected)
    written = e.save(tmp_path / "out")
    assert [p.name for p in written] == [
        "gradcam.png",
        *[f"gradcam_0_{label}.png" for label in e.targets.labels[0]],
        "gradcam.npy",
    ]
    np.testing.assert_array_equal(np.load(written[-1]), e.maps.numpy())
    with caplog.at_level(logging.WARNING, logger="cnnviz"):
        e.show()  # no notebook, Agg backend: says how to save instead of raising
    assert "save it with .save('figure.png')" in caplog.text


def test_the_grid_caps_its_panels_and_says_so(lite0: cnnviz.models.LoadedModel) -> None:
    x = torch.zeros(10, 3, 224, 224)
    e = cnnviz.explain(lite0, x, "gradcam", target=cnnviz.TopK(7))
    fig = e.plot()
    assert png_size(fig._repr_png_()) == expected_size(drawing.MAX_ROWS, drawing.MAX_COLUMNS)
    title = fig.get_suptitle()
    assert "first 8 of 10 images" in title and "first 6 of 7 targets" in title


def test_the_colour_bar_says_what_the_colours_mean(shapes: cnnviz.models.LoadedModel) -> None:
    e = cnnviz.explain(shapes, torch.zeros(1, 3, 64, 64), "saliency")
    label = " ".join(e.plot().axes[-1].get_ylabel().split())
    assert label == (
        f"red: more influence on {e.targets.labels[0][0]}, for or against · blue: none "
        "scaled per map; brightest 2 % clipped"
    )
    assert drawing.scale_note(None) == "scaled per map to its min…max"


def test_explanation_repr_is_short(shapes: cnnviz.models.LoadedModel) -> None:
    e = cnnviz.explain(shapes, torch.zeros(2, 3, 64, 64), "saliency")
    text = repr(e)
    assert text.startswith("Explanation(method='saliency', layer=None, maps=(2, 1, 64, 64)")
    assert len(text) < 200


# -- structure: counts, summaries, tables ---------------------------------------------------


def test_count_params_is_the_exercise_number() -> None:
    assert cnnviz.count_params(nn.Conv2d(3, 64, 3)) == 64 * 3 * 3 * 3 + 64
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight  # tied: counted once
    assert cnnviz.count_params(nn.Sequential(a, b)) == 16 + 4 + 4
    with torch.device("meta"):
        vgg = VGG11()
    assert cnnviz.count_params(vgg) == 132_863_336
    assert cnnviz.count_params(vgg.get_submodule("classifier")) == (
        512 * 7 * 7 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    )


def test_summary_and_layer_table_take_a_loaded_model_and_print_as_tables(
    shapes: cnnviz.models.LoadedModel,
) -> None:
    summary = cnnviz.summarize(shapes, depth=1)
    assert summary.input_size == (3, 64, 64)
    assert summary.total_params == cnnviz.count_params(shapes)
    assert str(summary) == format_summary(summary)
    assert repr(summary).startswith(f"<ModelSummary: {len(summary.rows)} rows, ")
    page = summary._repr_html_()
    assert page.startswith("<table>") and f"{summary.total_params:,}" in page
    table = cnnviz.layer_table(shapes)
    assert str(table) == format_layer_table(table)
    assert table[0].output_shape is not None
    assert "<td" in table._repr_html_() and "backbone.conv1" in table._repr_html_()
    assert repr(table).startswith(f"<LayerTable: {len(table)} layers")


def test_loaded_model_repr_is_one_short_line(lite0: cnnviz.models.LoadedModel) -> None:
    text = repr(lite0)
    assert len(text) < 250 and "\n" not in text
    assert "1000 classes [tench, goldfish, great white shark, …]" in text


def test_filters_say_when_only_the_first_are_drawn() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 96, 3), nn.ReLU())
    view = cnnviz.filters(net)
    assert view.layer == "0" and view.weight.shape == (96, 3, 3, 3)
    assert view.tiles.shape == (64, 3, 3, 3)
    assert "first 64 of 96 filters" in view.title()
    assert png_size(view._repr_png_())[0] > 100
    assert "96 filters" in cnnviz.filters(net, max_filters=96).title()


def test_activations_and_predictions(shapes: cnnviz.models.LoadedModel) -> None:
    x = torch.zeros(2, 3, 64, 64)
    acts = cnnviz.activations(shapes, x, ["conv1", "bn4_1"])
    assert list(acts) == ["backbone.conv1", "backbone.bn4_1"]
    assert acts["backbone.conv1"].shape == (2, 8, 64, 64)
    assert png_size(acts._repr_png_() or b"")[0] > 100
    assert acts._repr_html_().count("<img") == 2
    predictions = cnnviz.predict(shapes, x, k=3)
    logits = shapes.module(x)
    top = logits.softmax(1).topk(3, dim=1)
    torch.testing.assert_close(predictions.probabilities, top.values)
    assert predictions.labels[0][0] == shapes.class_names[int(top.indices[0, 0])]
    assert str(predictions).splitlines()[0].split() == ["image", "rank", "class", "probability"]
    assert len(str(predictions).splitlines()) == 1 + 2 * 3
    assert "<table>" in predictions._repr_html_()


def test_every_public_name_of_the_notebook_api_is_there() -> None:
    for name in (
        "count_params",
        "summarize",
        "layer_table",
        "filters",
        "activations",
        "predict",
        "explain",
        "build_report",
        "Preprocessing",
    ):
        assert callable(getattr(cnnviz, name)), name


# -- notebooks: logging ----------------------------------------------------------------------


def test_notebook_logging_shows_cnnviz_notices_once_and_only_in_a_kernel(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not in_notebook()
    logger = logging.getLogger("cnnviz.test-notebook")
    assert notebook_logging(logger) is None  # not a kernel
    monkeypatch.setattr("cnnviz.notebook.in_notebook", lambda: True)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    handler = notebook_logging(logger)
    try:
        assert handler is not None and handler.get_name() == NOTEBOOK_HANDLER_NAME
        assert notebook_logging(logger) is None  # once
        logger.info("Automatic CAM layer: bn2")
        assert "Automatic CAM layer: bn2" in capsys.readouterr().err
        monkeypatch.setattr(root, "handlers", [logging.NullHandler()])
        other = logging.getLogger("cnnviz.test-notebook-configured")
        assert notebook_logging(other) is None  # the user's logging set-up stands
    finally:
        if handler is not None:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
