"""The exercise notebooks (``examples/seed_walkthrough.ipynb`` and its Korean twin) run in a fresh
Jupyter kernel without error, draw a picture in every cell tagged ``picture`` (and nowhere else),
and print the numbers the exercise is about; they are what ``examples/make_notebooks.py`` writes.

The kernel (ipykernel, ``python3``) inherits this process's environment as ``tests/conftest.py``
set it up (offline, the session's cnnviz cache, an empty ``TORCH_HOME``), so the notebooks run on
``shapes_vgg11``; ``PYTHONPATH`` starts with the ``src`` folder of the cnnviz under test, so the
kernel imports the same cnnviz as the tests, installed or not.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import sys
import tokenize
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

import cnnviz
from cnnviz.data.shapes import SHAPE_CLASSES
from cnnviz.models.shapes_vgg11 import build_shapes_vgg11
from cnnviz.render.canvas import InlineFigure

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GENERATOR = EXAMPLES / "make_notebooks.py"
NOTEBOOKS = {
    "en": EXAMPLES / "seed_walkthrough.ipynb",
    "ko": EXAMPLES / "seed_walkthrough.ko.ipynb",
}
PICTURE = "picture"
MIN_PICTURES = 6
"""The input image, conv1's filters, the activations, saliency, Grad-CAM, bn5_2 beside bn4_2."""
CELL_TIMEOUT_S = 300
SRC = Path(cnnviz.__file__).resolve().parents[1]
WHICH_CNNVIZ = "import cnnviz; print('cnnviz imported from', cnnviz.__file__)"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_notebooks", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def execute(path: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``path`` executed in a fresh ``python3`` kernel in ``cwd``, with a last cell that prints
    where the kernel's cnnviz comes from."""
    cnnviz.load_model("shapes_vgg11")  # trained here if the cache lacks it, not in a timed cell
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("IPYTHONDIR", str(cwd / ".ipython"))  # not the user's ~/.ipython
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(WHICH_CNNVIZ))
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    return notebook


def code_tokens(source: str) -> list[tuple[int, str]]:
    """The tokens of ``source`` without comments and line breaks: what runs."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    tokens = tokenize.generate_tokens(io.StringIO(source + "\n").readline)
    return [(t.type, t.string) for t in tokens if t.type not in skip]


def pngs(cell: Any) -> list[bytes]:
    return [
        base64.b64decode(out["data"]["image/png"])
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]


def stdout(notebook: Any) -> str:
    return "".join(
        out.get("text", "")
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )


@pytest.mark.slow
@pytest.mark.parametrize("language", list(NOTEBOOKS))
def test_the_notebook_runs_and_draws_every_picture(
    language: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = execute(NOTEBOOKS[language], tmp_path, monkeypatch)
    cells = notebook.cells
    errors = [out for c in cells for out in c.get("outputs", []) if out["output_type"] == "error"]
    assert not errors
    counts = {i: len(pngs(c)) for i, c in enumerate(cells) if c.cell_type == "code"}
    tagged = {i for i, c in enumerate(cells) if PICTURE in c.metadata.get("tags", [])}
    print(f"{language}: image/png outputs per tagged cell: {[counts[i] for i in sorted(tagged)]}")
    assert len(tagged) >= MIN_PICTURES
    assert {i for i, n in counts.items() if n} == tagged, counts  # pictures there, and only there
    for i in tagged:
        for data in pngs(cells[i]):
            with Image.open(io.BytesIO(data)) as picture:
                assert picture.format == "PNG" and min(picture.size) >= 150, (i, picture.size)

    text = stdout(notebook)
    assert f"cnnviz imported from {SRC / 'cnnviz' / '__init__.py'}" in text
    # 1. autograd: dy/dw = v + 2w
    assert "tensor([ 6.,  9., 12.])\nTrue" in text
    # 4.1 the exercise's parameter count, and the tied weights counted once
    count = re.search(r"count_params\(net\) = ([\d,]+)", text)
    assert count is not None
    assert int(count[1].replace(",", "")) == cnnviz.count_params(build_shapes_vgg11())
    assert "count_params: 24\nper-layer sum: 40\nstate_dict: 40" in text
    # 4.3 activations: shapes, and the in-place ReLU that overwrote what the raw hook kept
    assert "{'backbone.conv1': (1, 8, 64, 64), 'backbone.bn4_1': (1, 64, 8, 8)}" in text
    assert re.search(r"backbone\.conv1: hook's min -[\d.]+, cnnviz's min -[\d.]+, same: True", text)
    assert re.search(r"backbone\.bn4_1: hook's min 0\.000, cnnviz's min -[\d.]+, same: False", text)
    # 5–6. saliency and Grad-CAM by hand equal cnnviz's
    predicted = re.search(r"predicted: (\w+) \(1, 3, 64, 64\) → \(64, 64\)", text)
    assert predicted is not None and predicted[1] in SHAPE_CLASSES
    assert "same as by hand: True" in text and "same as cnnviz: True" in text
    assert "backbone.bn5_2 map (4, 4)" in text
    # 7. bn5_2 is 4×4 at 64×64, bn4_2 8×8, and bn4_2 points at the object far more often
    assert "backbone.bn5_2: 4×4 map, one cell = 16×16 pixels" in text
    assert "backbone.bn4_2: 8×8 map, one cell = 8×8 pixels" in text
    hits = dict(re.findall(r"(bn\d_\d): the peak is on the object in (\d+)% of 100", text))
    assert int(hits["bn4_2"]) >= int(hits["bn5_2"]) + 30, hits


def test_the_notebooks_are_what_the_generator_writes() -> None:
    """Committed without outputs, tagged, the same code in both languages (comments aside)."""
    make = generator()
    for language, path in NOTEBOOKS.items():
        committed = json.loads(path.read_text(encoding="utf-8"))
        assert committed == json.loads(nbformat.writes(make.build(language))), (
            f"{path.name} differs from what examples/make_notebooks.py writes: edit the cells "
            "there and run `python examples/make_notebooks.py`"
        )
        code = [c for c in committed["cells"] if c["cell_type"] == "code"]
        assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    english, korean = (
        json.loads(p.read_text(encoding="utf-8"))["cells"] for p in NOTEBOOKS.values()
    )
    assert [c["cell_type"] for c in english] == [c["cell_type"] for c in korean]
    for en, ko in zip(english, korean, strict=True):
        if en["cell_type"] == "code":
            assert code_tokens("".join(en["source"])) == code_tokens("".join(ko["source"]))
            assert en["metadata"] == ko["metadata"]
    assert sum(PICTURE in c["metadata"].get("tags", []) for c in english) >= MIN_PICTURES
    assert make.code("x = 1  # one", {"one": "하나"}).ko == "x = 1  # 하나"
    with pytest.raises(ValueError, match="no comment"):
        make.code("x = 1  # one", {"two": "둘"})  # a translation gone stale


def test_subplots_puts_results_side_by_side_outside_pyplot() -> None:
    from matplotlib import _pylab_helpers

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    x = torch.rand(1, 3, 16, 16)
    fig, axes = cnnviz.subplots(1, 2, panel_inches=2.0, dpi=50)
    assert isinstance(fig, InlineFigure) and len(axes) == 2
    for ax, method in zip(axes, ["gradcam", "saliency"], strict=True):
        assert (
            cnnviz.explain(net, x, method, layer="0" if method == "gradcam" else None).plot(ax=ax)
            is fig
        )
    with Image.open(io.BytesIO(fig._repr_png_())) as picture:
        assert picture.size == (2 * 2 * 50, round((2 + 0.4) * 50))
    assert _pylab_helpers.Gcf.get_num_fig_managers() == 0  # pyplot never saw it
    for bad in ({"nrows": 0}, {"ncols": 1.5}, {"panel_inches": 0}):
        with pytest.raises(ValueError, match="must be"):
            cnnviz.subplots(**bad)
