"""Loading what users bring: checkpoints that changed the head or stem, their own classes,
programs, class names, preprocessing flags, and structure without weights — and every refusal
is one message that names the remedy in the caller's language (flags in the CLI, arguments in
Python)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cnnviz.cli.main import main
from cnnviz.data.samples import bundled_samples
from cnnviz.errors import CnnvizError, remedy, speaking_cli
from cnnviz.models import load_model
from cnnviz.models.adapt import checkpoint_shape, describe_fit
from cnnviz.models.class_names import read_class_names
from cnnviz.models.vgg import VGG11


def _coffee() -> str:
    return str(next(p for p in bundled_samples() if p.name == "coffee.jpg"))


def _error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of a CLI call that must exit 2."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("cnnviz: error:")]
    assert len(lines) == 1, err
    return lines[0]


# -- checkpoints whose head or stem differ ----------------------------------------------------


def test_checkpoint_shape_reads_the_head_and_the_stem() -> None:
    built = torchvision.models.resnet18()
    trained = torchvision.models.resnet18(num_classes=10)
    trained.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    shape = checkpoint_shape(built, 1000, trained.state_dict())
    assert (shape.num_classes, shape.in_channels) == (10, 1)
    assert describe_fit(shape) == (
        "classifier: 10 classes; first conv: 1 input channel, from the checkpoint"
    )
    assert not checkpoint_shape(built, 1000, built.state_dict()).changes_anything


def test_a_grey_torchvision_checkpoint_builds_a_grey_stem(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = torchvision.models.resnet18(num_classes=4).eval()
    trained.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save(trained.state_dict(), tmp_path / "grey.pth")
    loaded = load_model("torchvision:resnet18", weights=tmp_path / "grey.pth")
    assert loaded.preprocessing.channels == 1 and len(loaded.class_names) == 4
    assert loaded.preprocessing.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), trained(x))


def test_a_grey_seed_vgg_checkpoint_in_torchvision_format(tmp_path: Path) -> None:
    trained = torchvision.models.vgg11(num_classes=3).eval()
    trained.features[0] = nn.Conv2d(1, 64, 3, padding=1)
    torch.save(trained.state_dict(), tmp_path / "vgg.pth")
    loaded = load_model("vgg11", weights=tmp_path / "vgg.pth")
    assert isinstance(loaded.module, VGG11) and len(loaded.class_names) == 3
    assert loaded.module.backbone.conv1.in_channels == 1
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), trained(x))


def test_another_architecture_is_still_refused(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CnnvizError, match=r"does not fit ResNet: \d+ missing key"):
        load_model("torchvision:resnet34", weights=tmp_path / "r18.pth")
    with pytest.raises(CnnvizError, match="does not fit VGG11"):
        load_model("vgg11", weights=tmp_path / "r18.pth")


def test_a_program_given_as_weights_names_the_right_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2))
    module(torch.zeros(1, 3, 8, 8))
    with pytest.warns(FutureWarning):
        torch.jit.script(module).save(str(tmp_path / "net.pt"))
    line = _error(
        ["summary", "torchvision:resnet18", "--weights", str(tmp_path / "net.pt")], capsys
    )
    assert "is a TorchScript program, not a state dict" in line
    assert f"--model torchscript:{tmp_path / 'net.pt'} (without --weights)" in line
    with pytest.raises(CnnvizError, match=r'load_model\("torchscript:'):
        load_model("torchvision:resnet18", weights=tmp_path / "net.pt")


# -- your own class ---------------------------------------------------------------------------

NET = """
from torch import nn
class Net(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, classes)
    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))
def make(classes=2):
    return Net(classes)
instance = Net(5)
"""


def test_user_classes_factories_and_instances(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NET)
    net = str(tmp_path / "net.py")
    assert len(load_model(f"{net}:Net").class_names) == 3
    assert len(load_model(f"{net}:Net", model_args={"classes": 7}).class_names) == 7
    assert len(load_model(f"{net}:make").class_names) == 2
    assert len(load_model(f"{net}:instance").class_names) == 5
    torch.manual_seed(0)
    mine = load_model(f"{net}:Net").module
    torch.save(mine.state_dict(), tmp_path / "w.pth")
    again = load_model(f"{net}:Net", weights=tmp_path / "w.pth")
    assert again.weights == f"file {tmp_path / 'w.pth'}"
    torch.testing.assert_close(again.module.fc.weight, mine.fc.weight)


def test_a_class_in_an_importable_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("mynets.models:Net", model_args={"classes": 4})
    assert loaded.architecture == "Net" and len(loaded.class_names) == 4
    args = ["layers", "mynets.models:make", "--model-arg", "classes=6", "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[-1]["name"] == "fc" and rows[-1]["output_shape"] == [1, 6]


def test_user_model_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    (tmp_path / "picky.py").write_text(
        NET.replace("self.conv = nn.Conv2d(3, 4, 3)", "self.conv = nn.Conv2d(3, 4, 300)")
    )
    net, image = str(tmp_path / "net.py"), _coffee()
    out = ["--out", str(tmp_path / "o")]
    line = _error(["gradcam", image, "--model", f"{net}:Nett", *out], capsys)
    assert "has no 'Nett'. Did you mean: 'Net'?" in line
    line = _error(["gradcam", image, "--model", f"{tmp_path / 'nope.py'}:Net", *out], capsys)
    assert "does not exist" in line
    line = _error(["gradcam", image, "--model", "no_such_package.models:Net", *out], capsys)
    assert "cannot import 'no_such_package.models'" in line
    line = _error(["gradcam", image, "--model", f"{tmp_path / 'broken.py'}:Net", *out], capsys)
    assert "failed (ZeroDivisionError: division by zero)" in line
    args = ["--model", f"{net}:Net", "--model-arg", "bogus=1"]
    line = _error(["gradcam", image, *args, *out], capsys)
    assert "Net(bogus=1) failed (TypeError:" in line and "--model-arg KEY=VALUE" in line
    line = _error(["gradcam", image, "--model", "vgg11", "--model-arg", "x=1", *out], capsys)
    assert "is built in and takes no --model-arg" in line
    line = _error(["gradcam", image, "--model", f"{tmp_path / 'picky.py'}:Net", *out], capsys)
    assert "the model fails on a (1, 3, 224, 224) input" in line and "--input-size" in line
    with pytest.raises(CnnvizError, match=r"model_args=\{…\}"):
        load_model(f"{net}:Net", model_args={"bogus": 1})


# -- programs ---------------------------------------------------------------------------------


def test_programs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = torchvision.models.resnet18(num_classes=3).eval()
    fixed = torch.export.export(module, (torch.zeros(1, 3, 32, 32),))
    torch.export.save(fixed, str(tmp_path / "fixed.pt2"))
    with pytest.raises(CnnvizError, match=r"exported for batches of exactly 1 image\(s\)"):
        load_model(f"export:{tmp_path / 'fixed.pt2'}")
    line = _error(["summary", f"export:{tmp_path / 'fixed.pt2'}", "--weights", "random"], capsys)
    assert "carries its own weights and arguments; drop --weights and --model-arg" in line
    torch.save(module.state_dict(), tmp_path / "weights.pt2")
    with pytest.raises(CnnvizError, match=r"cannot load .* as an exported program"):
        load_model(f"export:{tmp_path / 'weights.pt2'}")
    with pytest.raises(CnnvizError, match="does not exist"):
        load_model(f"export:{tmp_path / 'nothing.pt2'}")


# -- class names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.txt", "ant\nbee\nwasp\n\n"),
        ("c.json", '["ant", "bee", "wasp"]'),
        ("c.json", '{"1": "bee", "0": "ant", "2": "wasp"}'),
        ("c.csv", "index,name\n0,ant\n2,wasp\n1,bee\n"),
        ("c.tsv", "0\tant\n1\tbee\n2\twasp\n"),
    ],
)
def test_class_names_file_formats(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    assert read_class_names(tmp_path / name) == ("ant", "bee", "wasp")


def test_class_names_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gap.txt").write_text("ant\n\nwasp\n")
    (tmp_path / "skip.csv").write_text("0,ant\n2,wasp\n")
    (tmp_path / "two.txt").write_text("ant\nbee\n")
    for file, message in [
        ("gap.txt", "has a blank line 2"),
        ("skip.csv", "skips index 1"),
        ("missing.txt", "does not exist"),
    ]:
        with pytest.raises(CnnvizError, match=message):
            read_class_names(tmp_path / file)
    line = _error(["layers", "shapes_vgg11", "--class-names", str(tmp_path / "two.txt")], capsys)
    assert "has 2 names but the model has 6 classes" in line
    loaded = load_model("shapes_vgg11", weights="random", class_names=[str(i) for i in "abcdef"])
    assert loaded.class_names == tuple("abcdef")


# -- preprocessing flags ----------------------------------------------------------------------


def test_preprocessing_flags(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["layers", "shapes_vgg11", "--json"]
    assert main([*base, "--input-size", "32x48", "--resize", "64", "--mean", "0.5"]) == 0
    capsys.readouterr()
    prep = load_model(
        "shapes_vgg11",
        weights="random",
        preprocessing={"input_size": (32, 48), "resize": 64, "mean": (0.5,)},
    ).preprocessing
    assert prep.input_size == (32, 48) and prep.crop_pct == 0.5 and prep.mean == (0.5,) * 3
    line = _error([*base, "--mean", "0.5,0.5"], capsys)
    assert "have 2 value(s) but the model takes 3 input channel(s)" in line
    line = _error([*base, "--resize", "10"], capsys)
    assert "resize 10 is smaller than the input size (64, 64)" in line
    line = _error([*base, "--resize", "80", "--crop", "0.9"], capsys)
    assert "give --resize or --crop, not both" in line
    line = _error([*base, "--input-size", "3x4x5"], capsys)
    assert "argument --input-size: expected N or HxW pixels" in line


# -- messages in the caller's language --------------------------------------------------------


def test_remedies_speak_flags_in_the_cli_and_arguments_in_python() -> None:
    assert remedy("--class-names FILE", "class_names=") == "class_names="
    with speaking_cli():
        assert remedy("--class-names FILE", "class_names=") == "--class-names FILE"
    assert remedy("--class-names FILE", "class_names=") == "class_names="


# -- structure without weights, offline, fast -------------------------------------------------


STRUCTURE_COMMANDS = (
    ["summary", "vgg11"],
    ["layers", "timm:resnet18"],
    ["layers", "torchvision:densenet121"],
)


_AFTER_IMPORTS = """
import sys, time
import torch, torchvision.models, timm  # what any program using these libraries pays first
start = time.perf_counter()
from cnnviz.cli.main import main
code = main(sys.argv[1:])
print(f"cnnviz-seconds={time.perf_counter() - start:.3f}", file=sys.stderr)
sys.exit(code)
"""


def _timed_run(
    command: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``cnnviz COMMAND`` in a fresh interpreter; the seconds it took after torch,
    torchvision and timm were imported (the part that is cnnviz's: build, one meta forward,
    and whatever the hub clients do)."""
    run = subprocess.run(
        [sys.executable, "-c", _AFTER_IMPORTS, *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    found = re.search(r"cnnviz-seconds=([0-9.]+)", run.stderr)
    return run, float(found.group(1)) if found else float("inf")


@pytest.mark.parametrize(
    ("offline_variable", "commands"),
    [(True, STRUCTURE_COMMANDS), (False, STRUCTURE_COMMANDS[1:2])],
    ids=["CNNVIZ_OFFLINE", "unset-no-network"],
)
def test_structure_commands_need_no_weights(
    offline_variable: bool, commands: tuple[list[str], ...], tmp_path: Path
) -> None:
    """Offline, with nothing cached, the structure is there in seconds and without retries.

    Without ``CNNVIZ_OFFLINE`` this machine has no route to the hubs (tests never reach them):
    ``timm:resnet18`` is the model whose hub client used to retry for a minute. What is timed is
    cnnviz's part, after torch, torchvision and timm are imported (those imports alone take
    7–10 s on 2 cores and are any program's cost): about 1–3 s on an idle machine; the bound of
    15 s leaves room for a loaded one and still fails on a minute of retries.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("CNNVIZ_OFFLINE", "HF_HUB_OFFLINE")}
    env["TORCH_HOME"] = env["HF_HOME"] = str(tmp_path)  # nothing cached
    if offline_variable:
        env["CNNVIZ_OFFLINE"] = "1"
    for command in commands:
        run, elapsed = _timed_run(command, env)
        assert run.returncode == 0, run.stderr
        assert elapsed < 15.0, f"{command} took {elapsed:.1f} s after the imports"
        assert "architecture only: pretrained weights not loaded" in run.stderr
        assert "retry" not in run.stderr.lower() and "Traceback" not in run.stderr
        assert "conv" in run.stdout.lower()


def test_summary_json_of_a_grey_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trained = torchvision.models.resnet18(num_classes=2)
    trained.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save(trained.state_dict(), tmp_path / "grey.pth")
    args = ["summary", "torchvision:resnet18", "--weights", str(tmp_path / "grey.pth"), "--json"]
    assert main([*args, "--input-size", "64"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["input_size"][0] == 1
