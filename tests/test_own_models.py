"""Your own model, first time: twelve ways an engineer brings a model, each run end to end.

Each case is written here as the user has it (a fine-tuned checkpoint, a class in a file, a
TorchScript or exported program, …), then run through ``cnnviz gradcam``, ``saliency``,
``report`` and ``evaluate`` from the command line and ``cnnviz.explain`` from Python. Two numbers
are asserted every time: the predicted logits equal the user's plain module's forward on the same
input, and Grad-CAM equals captum's ``LayerGradCam`` (ReLU) on that module to 1e-5.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from cnnviz import explain
from cnnviz.cli.main import main
from cnnviz.data.samples import bundled_samples
from cnnviz.inputs.decode import decode_input
from cnnviz.models import load_model
from cnnviz.models.vgg import VGG11

NET_PY = '''
import torch
from torch import nn


class Net(nn.Module):
    """A small CNN whose inputs, width, classes and output type are constructor arguments."""

    def __init__(self, in_ch=3, classes=4, width=8, as_dict=False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)
        self.as_dict = as_dict

    def forward(self, x):
        logits = self.fc(self.pool(self.features(x)).flatten(1))
        return {"logits": logits, "features": x.mean()} if self.as_dict else logits
'''


@dataclass
class OwnCase:
    """One way to bring a model: its options, and the plain module it must equal."""

    id: str
    options: list[str]
    python: dict[str, Any]
    plain: nn.Module
    layer: str  # the automatic CAM layer, a dotted name in ``plain``
    cam: bool = True  # False: the program takes no hooks, CAMs refuse it
    logits: Callable[[Any], torch.Tensor] = field(default=lambda out: out)


def _user_net(folder: Path, **kwargs: Any) -> nn.Module:
    """The class in net.py, built as the user's own code builds it."""
    namespace: dict[str, Any] = {}
    exec(compile(NET_PY, str(folder / "net.py"), "exec"), namespace)
    torch.manual_seed(3)
    return namespace["Net"](**kwargs).eval()  # type: ignore[no-any-return]  # built by exec


def _saved(module: nn.Module, path: Path, *, prefix: str = "") -> str:
    torch.save({f"{prefix}{k}": v for k, v in module.state_dict().items()}, path)
    return str(path)


def _checkpoint_case(
    case_id: str,
    folder: Path,
    name: str,
    module: nn.Module,
    size: int | None,
    layer: str,
    prefix: str = "",
) -> OwnCase:
    """A zoo architecture with the user's checkpoint (keys under ``prefix``), at ``size``."""
    weights = folder / f"{case_id}.pth"
    options = ["--model", name, "--weights", _saved(module, weights, prefix=prefix)]
    python: dict[str, Any] = {"name": name, "weights": weights}
    if size is not None:
        options += ["--input-size", str(size)]
        python["preprocessing"] = {"input_size": (size, size)}
    return OwnCase(case_id, options, python, module, layer)


def _checkpoint_cases(folder: Path) -> list[OwnCase]:
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(num_classes=10).eval()
    mobile = torchvision.models.mobilenet_v3_small(num_classes=5).eval()
    ddp = torchvision.models.resnet18(num_classes=3).eval()
    vgg = VGG11(num_classes=10).eval()  # the seed's VGG-11, 10-class head (129M parameters)
    grey = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=6).eval()
    resnet18, mobilenet = "torchvision:resnet18", "torchvision:mobilenet_v3_small"
    return [
        _checkpoint_case("torchvision-resnet18-10-classes", folder, resnet18, r18, None, "layer4"),
        _checkpoint_case(
            "torchvision-mobilenet-v3-small-5-classes", folder, mobilenet, mobile, 96, "features"
        ),
        _checkpoint_case(
            "ddp-prefixed-checkpoint", folder, resnet18, ddp, 64, "layer4", prefix="module."
        ),
        _checkpoint_case("seed-vgg11-10-classes", folder, "vgg11", vgg, 64, "backbone.conv5_2"),
        _checkpoint_case("timm-resnet18-grey", folder, "timm:resnet18", grey, 64, "layer4"),
    ]


def _net_case(
    case_id: str,
    folder: Path,
    model_args: dict[str, Any],
    options: list[str] | None = None,
    python: dict[str, Any] | None = None,
) -> OwnCase:
    """A case of the class in net.py, built with ``model_args``, its weights saved by the
    user; ``options`` / ``python`` add to the 48×48 input every such case is given."""
    module = _user_net(folder, **model_args)
    weights = folder / f"{case_id}.pth"
    arg_options = [
        part
        for key, value in model_args.items()
        for part in ("--model-arg", f"{key}={str(value).lower()}")
    ]
    spec = f"{folder / 'net.py'}:Net"
    return OwnCase(
        case_id,
        ["--model", spec, *arg_options, "--weights", _saved(module, weights)]
        + (options or ["--input-size", "48"]),
        {
            "name": spec,
            "model_args": model_args,
            "weights": weights,
            "preprocessing": {"input_size": (48, 48)},
        }
        | (python or {}),
        module,
        "features",
        logits=(lambda out: out["logits"]) if model_args.get("as_dict") else (lambda out: out),
    )


def _user_cases(folder: Path) -> list[OwnCase]:
    (folder / "net.py").write_text(NET_PY)
    (folder / "classes.csv").write_text("index,name\n0,ant\n1,bee\n2,wasp\n")
    own_preprocessing = ["--input-size", "96", "--resize", "110"]
    own_preprocessing += ["--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3"]
    return [
        _net_case("four-channel-cnn", folder, {"in_ch": 4, "classes": 3}),
        _net_case("user-class-with-arguments", folder, {"classes": 7, "width": 12}),
        _net_case("dict-output-model", folder, {"classes": 4, "as_dict": True}),
        _net_case(
            "class-names-file",
            folder,
            {"classes": 3},
            ["--input-size", "48", "--class-names", str(folder / "classes.csv")],
            {"class_names": folder / "classes.csv"},
        ),
        _net_case(
            "input-96-with-own-mean-std",
            folder,
            {"classes": 2},
            own_preprocessing,
            {
                "preprocessing": {
                    "input_size": (96, 96),
                    "resize": 110,
                    "mean": (0.5, 0.4, 0.3),
                    "std": (0.2, 0.25, 0.3),
                }
            },
        ),
    ]


def _program_cases(folder: Path) -> list[OwnCase]:
    torch.manual_seed(2)
    scripted = torchvision.models.resnet18(num_classes=4).eval()
    with pytest.warns(FutureWarning):  # torch deprecates TorchScript; users still have files
        torch.jit.script(scripted).save(str(folder / "scripted.pt"))
    exported = torchvision.models.resnet18(num_classes=5).eval()
    program = torch.export.export(
        exported,
        (torch.zeros(2, 3, 64, 64),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    torch.export.save(program, str(folder / "exported.pt2"))
    return [
        OwnCase(
            "torchscript-module",
            ["--model", f"torchscript:{folder / 'scripted.pt'}", "--input-size", "64"],
            {
                "name": f"torchscript:{folder / 'scripted.pt'}",
                "preprocessing": {"input_size": (64, 64)},
            },
            scripted,
            "layer4",
            cam=False,
        ),
        OwnCase(
            "torch-export-program",
            ["--model", f"export:{folder / 'exported.pt2'}"],
            {"name": f"export:{folder / 'exported.pt2'}"},
            exported,
            "layer4",
        ),
    ]


@pytest.fixture(scope="module")
def own_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, OwnCase]:
    folder = tmp_path_factory.mktemp("own_models")
    cases = _checkpoint_cases(folder) + _user_cases(folder) + _program_cases(folder)
    return {case.id: case for case in cases}


CASE_IDS = [
    "torchvision-resnet18-10-classes",
    "torchvision-mobilenet-v3-small-5-classes",
    "seed-vgg11-10-classes",
    "timm-resnet18-grey",
    "four-channel-cnn",
    "user-class-with-arguments",
    "torchscript-module",
    "torch-export-program",
    "ddp-prefixed-checkpoint",
    "dict-output-model",
    "class-names-file",
    "input-96-with-own-mean-std",
]


def _coffee() -> Path:
    return next(p for p in bundled_samples() if p.name == "coffee.jpg")


def _captum_gradcam(case: OwnCase, x: torch.Tensor, target: int) -> torch.Tensor:
    from captum.attr import LayerGradCam

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return case.logits(case.plain(inputs))

    layer = case.plain.get_submodule(case.layer)
    cam = LayerGradCam(forward, layer).attribute(x, target=target, relu_attributions=True)
    return cam.detach()


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["-q", *args])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_own_model_end_to_end(
    case_id: str,
    own_cases: dict[str, OwnCase],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = own_cases[case_id]
    loaded = load_model(**case.python)
    _, x, _ = decode_input(_coffee(), loaded.preprocessing)
    x = x[None]
    with torch.no_grad():
        plain_logits = case.logits(case.plain(x))
    target = int(plain_logits.argmax())

    # Python: the predictions and Grad-CAM of cnnviz.explain
    saliency = explain(loaded, x, "saliency")
    torch.testing.assert_close(saliency.scores[:, 0], plain_logits[:, target], rtol=1e-5, atol=1e-5)
    assert int(saliency.targets.indices[0, 0]) == target  # type: ignore[index]
    if case.cam:
        cam = explain(loaded, x, "gradcam")
        assert cam.layer == case.layer
        torch.testing.assert_close(
            cam.maps.clamp(min=0), _captum_gradcam(case, x, target), rtol=1e-5, atol=1e-7
        )

    # the command line: gradcam (or its refusal), saliency, report, evaluate
    image = str(_coffee())
    code, err = _cli(["gradcam", image, *case.options, "--out", str(tmp_path / "cam")], capsys)
    if case.cam:
        assert code == 0, err
        manifest = json.loads((tmp_path / "cam" / "manifest.json").read_text())
        item = manifest["items"][0]
        assert item["layer"] == case.layer and item["target_index"] == target
        assert item["target_name"] == loaded.class_names[target]
        assert item["score"] == pytest.approx(float(plain_logits[0, target]), rel=1e-5, abs=1e-5)
        raw = np.load(tmp_path / "cam" / item["files"]["raw_layer"])
        reference = _captum_gradcam(case, x, target)[0, 0].numpy()
        np.testing.assert_allclose(np.maximum(raw, 0), reference, rtol=1e-5, atol=1e-7)
    else:
        assert code == 2 and "TorchScript" in err and "saliency" in err, err
    code, err = _cli(["saliency", image, *case.options, "--out", str(tmp_path / "sal")], capsys)
    assert code == 0, err
    item = json.loads((tmp_path / "sal" / "manifest.json").read_text())["items"][0]
    assert item["score"] == pytest.approx(float(plain_logits[0, target]), rel=1e-5, abs=1e-5)

    methods = "gradcam" if case.cam else "saliency"  # saliency's numbers are checked above
    # the report always draws Grad-CAM (where it applies) and saliency: compare no more methods,
    # and draw the activations of one layer (each is a figure; their layers are not in question)
    report = ["report", image, *case.options, "--methods", "none", "--out", str(tmp_path / "r")]
    report += ["--layers", case.layer] if case.cam else []
    code, err = _cli(report, capsys)
    assert code == 0, err
    page = (tmp_path / "r" / "index.html").read_text()
    assert loaded.class_names[target] in page

    evaluate = ["evaluate", image, *case.options, "--methods", methods, "--out"]
    evaluate += [str(tmp_path / "e"), "--metrics", "deletion", "--steps", "4"]
    code, err = _cli([*evaluate, "--sanity-images", "0", "--bootstrap", "0"], capsys)
    assert code == 0, err
    assert (tmp_path / "e" / "manifest.json").is_file()


def test_class_names_file_names_the_classes(own_cases: dict[str, OwnCase]) -> None:
    loaded = load_model(**own_cases["class-names-file"].python)
    assert loaded.class_names == ("ant", "bee", "wasp")


def test_own_preprocessing_is_what_was_asked(own_cases: dict[str, OwnCase]) -> None:
    prep = load_model(**own_cases["input-96-with-own-mean-std"].python).preprocessing
    assert prep.input_size == (96, 96) and prep.resize_size == (110,)
    assert prep.mean == (0.5, 0.4, 0.3) and prep.std == (0.2, 0.25, 0.3)


def test_channels_come_from_the_checkpoint(own_cases: dict[str, OwnCase]) -> None:
    grey = load_model(**own_cases["timm-resnet18-grey"].python)
    assert grey.preprocessing.channels == 1 and len(grey.class_names) == 6
    four = load_model(**own_cases["four-channel-cnn"].python)
    assert four.preprocessing.channels == 4
