"""The command line: outputs, manifest, JSON, exit codes and one-line errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnviz.cli import main
from cnnviz.data.samples import bundled_samples


def _coffee() -> str:
    return str(next(p for p in bundled_samples() if p.name == "coffee.jpg"))


def test_help_is_instant_because_nothing_heavy_is_imported() -> None:
    code = (
        "import sys, cnnviz, cnnviz.cli; cnnviz.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert main(["--help"]) == 0


def test_gradcam_writes_overlays_raw_maps_and_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["-q", "gradcam", _coffee(), "--target", "espresso", "--out", str(tmp_path), "--json"]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert printed == manifest
    assert manifest["schema_version"] == 1
    assert manifest["method"] == "gradcam"
    assert manifest["layer"] == "bn2"
    assert manifest["model"]["name"] == "efficientnet_lite0"
    assert manifest["model"]["preprocessing"]["interpolation"] == "bicubic"
    assert set(manifest["environment"]) >= {"cnnviz", "torch", "python"}
    (item,) = manifest["items"]
    assert item["target_index"] == 967
    assert item["target_name"] == "espresso"
    assert 0.5 < item["probability"] <= 1.0
    layer_map = np.load(tmp_path / item["files"]["raw_layer"])
    input_map = np.load(tmp_path / item["files"]["raw_input"])
    assert layer_map.dtype == np.float32
    assert layer_map.shape == (7, 7)
    assert input_map.dtype == np.float32
    assert input_map.shape == (224, 224)
    assert (layer_map < 0).any() or (layer_map > 0).any()
    assert (tmp_path / item["files"]["overlay"]).stat().st_size > 1000


def test_top_k_and_saliency(tmp_path: Path) -> None:
    assert main(["-q", "gradcam", _coffee(), "--top-k", "3", "--out", str(tmp_path / "g")]) == 0
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert [i["target_rank"] for i in manifest["items"]] == [0, 1, 2]
    assert manifest["items"][0]["target_name"] == "espresso"
    scores = [i["score"] for i in manifest["items"]]
    assert scores == sorted(scores, reverse=True)
    assert main(["-q", "saliency", _coffee(), "--out", str(tmp_path / "s")]) == 0
    (item,) = json.loads((tmp_path / "s" / "manifest.json").read_text())["items"]
    saliency = np.load(tmp_path / "s" / item["files"]["raw_layer"])
    assert saliency.shape == (224, 224)
    assert saliency.min() >= 0
    assert saliency.max() > 0


def test_filters_and_activations(tmp_path: Path) -> None:
    assert main(["-q", "filters", "--out", str(tmp_path / "f")]) == 0
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["layer"] == "conv_stem"
    (item,) = manifest["items"]
    assert item["weight_shape"] == [32, 3, 3, 3]
    assert (item["filters_shown"], item["filters_total"]) == (32, 32)
    from PIL import Image

    # 32 tiles of 3×3 in 6 columns, magnified ⌈256 / 18⌉ = 15× with 2-pixel gaps (was 25×25).
    sheet = Image.open(tmp_path / "f" / item["files"]["tiles"])
    assert sheet.size == (2 + 6 * 47, 2 + 6 * 47)
    argv = ["-q", "filters", "--layer", "blocks.1.0.conv_dw", "--out", str(tmp_path / "d")]
    assert main(argv) == 0
    (item,) = json.loads((tmp_path / "d" / "manifest.json").read_text())["items"]
    assert (item["filters_shown"], item["filters_total"]) == (64, 96)  # "first 64 of 96"
    code = main(
        [
            "-q",
            "activations",
            _coffee(),
            "--layers",
            "conv_stem,bn2",
            "--channels",
            "8",
            "--order",
            "top",
            "--out",
            str(tmp_path / "a"),
        ]
    )
    assert code == 0
    items = json.loads((tmp_path / "a" / "manifest.json").read_text())["items"]
    assert [i["layer"] for i in items] == ["conv_stem", "bn2"]
    assert items[0]["shape"] == [1, 32, 112, 112]
    assert items[1]["shape"] == [1, 1280, 7, 7]
    raw = np.load(tmp_path / "a" / items[1]["files"]["raw"])
    top = np.argsort(-raw.mean(axis=(1, 2)))[:8]
    assert items[1]["channels"] == top.tolist()


def test_summary_json_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "vgg11", "--weights", "random", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total_params"] == 132_863_336


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["summary", "efficientnet_lite"], 2, "efficientnet_lite0"),
        (["gradcam", "{coffee}", "--layer", "bn_2", "--out", "{out}"], 2, "bn2"),
        (["gradcam", "{coffee}", "--target", "espreso", "--out", "{out}"], 2, "espresso"),
        (["gradcam", "{coffee}", "--target", "1000", "--out", "{out}"], 2, "out of range"),
        (["gradcam", "/no/such/file.jpg", "--out", "{out}"], 2, "file.jpg"),
        (["gradcam", "{coffee}", "--alpha", "3", "--out", "{out}"], 2, "alpha"),
        (["gradcam", "{coffee}", "--option", "stepz=3", "--out", "{out}"], 2, "It takes: "),
        (["saliency", "{coffee}", "--option", "signed", "--out", "{out}"], 2, "KEY=VALUE"),
        (
            [
                "explain",
                "{coffee}",
                "--method",
                "integrated-gradients",
                "--option",
                "steps=0",
                "--out",
                "{out}",
            ],
            2,
            "steps must be",
        ),
        (
            ["explain", "{coffee}", "--method", "all", "--option", "steps=8", "--out", "{out}"],
            2,
            "one method",
        ),
    ],
)
def test_bad_input_gives_one_line_and_an_exit_code(
    argv: list[str], code: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(coffee=_coffee(), out=tmp_path) for a in argv]
    assert main(["-q", *argv]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("cnnviz: error:")
    assert message in err[0]
    assert "Traceback" not in err[0]


def test_folder_with_a_bad_file_finishes_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(Path(_coffee()).read_bytes())
    (folder / "b.jpg").write_text("text, not a JPEG")
    assert main(["-q", "gradcam", str(folder), "--out", str(tmp_path / "o")]) == 1
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert len(manifest["items"]) == 1
    assert [Path(f["input"]).name for f in manifest["failures"]] == ["b.jpg"]
    assert "b.jpg" in capsys.readouterr().err


# -- the folder pipeline: --method all, workers, file-name escaping -----------------------------


class _TwoLayerHead(torch.nn.Module):
    """conv → GAP → linear → ReLU → linear: CAM cannot explain it (no single linear head)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc1 = torch.nn.Linear(4, 5)
        self.fc2 = torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc2(self.fc1(self.conv(x).relu().mean(dim=(2, 3))).relu())
        return logits


def test_method_all_draws_one_grid_and_skips_what_cannot_run(tmp_path: Path) -> None:
    from PIL import Image

    from cnnviz.capture.targets import TopK
    from cnnviz.inputs.preprocess import Preprocessing
    from cnnviz.methods.registry import method_names
    from cnnviz.models import from_module
    from cnnviz.render.grids import grid_shape
    from cnnviz.runs.explain import ExplainSettings, explain_files

    prep = Preprocessing(input_size=(32, 32), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    loaded = from_module(_TwoLayerHead().eval(), preprocessing=prep)
    settings = ExplainSettings(method="all", target=TopK(2), num_workers=0)
    manifest = explain_files(loaded, [tmp_path / "a.png"], tmp_path / "o", settings, command="e")
    assert list(manifest["extra"]["skipped_methods"]) == ["cam"]
    assert "takes 5 features" in manifest["extra"]["skipped_methods"]["cam"]
    methods = [m for m in method_names() if m != "cam"]
    # two targets each (TopK(2)), but a neuron's attribution explains its one unit
    targets = {m: 1 if m == "neuron-integrated-gradients" else 2 for m in methods}
    assert [i["method"] for i in manifest["items"]] == [
        m for m in methods for _ in range(targets[m])
    ]
    assert manifest["failures"] == []
    assert manifest["method"] == "all"
    grid_name = {i["files"]["grid"] for i in manifest["items"]}
    assert grid_name == {"a.grid.png"}
    grid = np.asarray(Image.open(tmp_path / "o" / "a.grid.png"))
    # M methods × 2 targets, near square: each method's two tiles side by side, ⌈√(M/2)⌉
    # methods per row (21 methods: 4 per row, so 6 rows × 8 columns of 32×32 tiles in 36-pixel
    # cells), not M rows × 2.
    per_row = math.ceil(math.sqrt(len(methods) / 2))
    rows = math.ceil(len(methods) / per_row)
    assert grid_shape(len(methods), 2) == (rows, 2 * per_row)
    assert grid.shape[1] == 4 + 2 * per_row * 36
    tops: dict[int, set[int]] = {}
    for item in manifest["items"]:
        m, t = methods.index(item["method"]), item["target_rank"]
        left = 4 + ((m % per_row) * 2 + t) * 36
        overlay = np.asarray(Image.open(tmp_path / "o" / item["files"]["overlay"]))
        column = grid[:, left : left + 32]
        found = [y for y in range(len(column) - 31) if np.array_equal(column[y : y + 32], overlay)]
        assert len(found) == 1, item["method"]
        tops.setdefault(m // per_row, set()).add(found[0])
    assert sorted(tops) == list(range(rows)) and all(len(y) == 1 for y in tops.values())
    assert sorted(min(y) for y in tops.values()) == [min(tops[r]) for r in range(rows)]


def test_unknown_method_fails_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["-q", "explain", _coffee(), "--method", "gradcamm", "--out", str(tmp_path)]
    assert main([*argv, "--model", "no_such_model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "Unknown method 'gradcamm'" in err[0]
    assert "'gradcam'" in err[0]


def test_method_options_from_the_command_line(tmp_path: Path) -> None:
    """--option KEY=VALUE reaches the method (values parsed as numbers, booleans or text) and is
    recorded in the manifest; the maps equal the Python API's with the same options."""
    from cnnviz import explain, load_model
    from cnnviz.cli.commands import parse_method_options
    from cnnviz.inputs.decode import decode_input

    assert parse_method_options(
        ["steps=8", "sigma=0.25", "signed=true", "quadrature=gausslegendre"]
    ) == {
        "steps": 8,
        "sigma": 0.25,
        "signed": True,
        "quadrature": "gausslegendre",
    }
    argv = ["-q", "explain", _coffee(), "--method", "integrated-gradients", "--out", str(tmp_path)]
    assert main([*argv, "--option", "steps=8", "--option", "quadrature=riemann_trapezoid"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["extra"]["options"] == {"steps": 8, "quadrature": "riemann_trapezoid"}
    (item,) = manifest["items"]
    written = np.load(tmp_path / item["files"]["raw_layer"])
    loaded = load_model("efficientnet_lite0")
    x = decode_input(Path(_coffee()), loaded.preprocessing)[1].unsqueeze(0)  # as the CLI does
    e = explain(loaded, x, "integrated-gradients", steps=8, quadrature="riemann_trapezoid")
    np.testing.assert_allclose(written, e.maps[0, 0].numpy(), rtol=1e-4, atol=1e-6)


def test_a_forward_that_fails_while_choosing_the_cam_layer_is_named(tmp_path: Path) -> None:
    """Found by the fuzz test: a 1×1 input breaks VGG's pooling inside the automatic choice of
    the CAM layer; that is the user's input size, said in one line, not an internal error."""
    from PIL import Image

    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tiny)
    argv = ["-q", "gradcam", str(tiny), "--input-size", "1", "--weights", "random"]
    argv += ["--model", "shapes_vgg11", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
