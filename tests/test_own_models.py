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


def _torchvision_cases(folder: Path) -> list[OwnCase]:
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(num_classes=10).eval()
    mobile = torchvision.models.mobilenet_v3_small(num_classes=5).eval()
    ddp = torchvision.models.resnet18(num_classes=3).eval()
    return [
        OwnCase(
            "torchvision-resnet18-10-classes",
            ["--model", "torchvision:resnet18", "--weights", _saved(r18, folder / "r18.pth")],
            {"name": "torchvision:resnet18", "weights": folder / "r18.pth"},
            r18,
            "layer4",
        ),
        OwnCase(
            "torchvision-mobilenet-v3-small-5-classes",
            [
                "--model",
                "torchvision:mobilenet_v3_small",
                "--input-size",
                "96",
                "--weights",
                _saved(mobile, folder / "mobile.pth"),
            ],
            {
                "name": "torchvision:mobilenet_v3_small",
                "weights": folder / "mobile.pth",
                "preprocessing": {"input_size": (96, 96)},
            },
            mobile,
            "features",
        ),
        OwnCase(
            "ddp-prefixed-checkpoint",
            [
                "--model",
                "torchvision:resnet18",
                "--input-size",
                "64",
                "--weights",
                _saved(ddp, folder / "ddp.pth", prefix="module."),
            ],
            {
                "name": "torchvision:resnet18",
                "weights": folder / "ddp.pth",
                "preprocessing": {"input_size": (64, 64)},
            },
            ddp,
            "layer4",
        ),
    ]


def _seed_and_timm_cases(folder: Path) -> list[OwnCase]:
    torch.manual_seed(1)
    vgg = VGG11(num_classes=10).eval()  # the seed's VGG-11, 10-class head (129M parameters)
    grey = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=6).eval()
    return [
        OwnCase(
            "seed-vgg11-10-classes",
            [
                "--model",
                "vgg11",
                "--input-size",
                "64",
                "--weights",
                _saved(vgg, folder / "vgg.pth"),
            ],
            {
                "name": "vgg11",
                "weights": folder / "vgg.pth",
                "preprocessing": {"input_size": (64, 64)},
            },
            vgg,
            "backbone.conv5_2",
        ),
        OwnCase(
            "timm-resnet18-grey",
            [
                "--model",
                "timm:resnet18",
                "--input-size",
                "64",
                "--weights",
                _saved(grey, folder / "grey.pth"),
            ],
            {
                "name": "timm:resnet18",
                "weights": folder / "grey.pth",
                "preprocessing": {"input_size": (64, 64)},
            },
            grey,
            "layer4",
        ),
    ]


def _user_cases(folder: Path) -> list[OwnCase]:
    (folder / "net.py").write_text(NET_PY)
    net_py = str(folder / "net.py")
    four = _user_net(folder, in_ch=4, classes=3)
    args = _user_net(folder, classes=7, width=12)
    as_dict = _user_net(folder, classes=4, as_dict=True)
    names = _user_net(folder, classes=3)
    (folder / "classes.csv").write_text("index,name\n0,ant\n1,bee\n2,wasp\n")
    small = _user_net(folder, classes=2)
    size = ["--input-size", "48"]
    return [
        OwnCase(
            "four-channel-cnn",
            [
                "--model",
                f"{net_py}:Net",
                "--model-arg",
                "in_ch=4",
                "--model-arg",
                "classes=3",
                *size,
                "--weights",
                _saved(four, folder / "four.pth"),
            ],
            {
                "name": f"{net_py}:Net",
                "model_args": {"in_ch": 4, "classes": 3},
                "weights": folder / "four.pth",
                "preprocessing": {"input_size": (48, 48)},
            },
            four,
            "features",
        ),
        OwnCase(
            "user-class-with-arguments",
            [
                "--model",
                f"{net_py}:Net",
                "--model-arg",
                "classes=7",
                "--model-arg",
                "width=12",
                *size,
                "--weights",
                _saved(args, folder / "args.pth"),
            ],
            {
                "name": f"{net_py}:Net",
                "model_args": {"classes": 7, "width": 12},
                "weights": folder / "args.pth",
                "preprocessing": {"input_size": (48, 48)},
            },
            args,
            "features",
        ),
        OwnCase(
            "dict-output-model",
            [
                "--model",
                f"{net_py}:Net",
                "--model-arg",
                "as_dict=true",
                *size,
                "--weights",
                _saved(as_dict, folder / "dict.pth"),
            ],
            {
                "name": f"{net_py}:Net",
                "model_args": {"as_dict": True},
                "weights": folder / "dict.pth",
                "preprocessing": {"input_size": (48, 48)},
            },
            as_dict,
            "features",
            logits=lambda out: out["logits"],
        ),
        OwnCase(
            "class-names-file",
            [
                "--model",
                f"{net_py}:Net",
                "--model-arg",
                "classes=3",
                *size,
                "--class-names",
                str(folder / "classes.csv"),
                "--weights",
                _saved(names, folder / "names.pth"),
            ],
            {
                "name": f"{net_py}:Net",
                "model_args": {"classes": 3},
                "weights": folder / "names.pth",
                "class_names": folder / "classes.csv",
                "preprocessing": {"input_size": (48, 48)},
            },
            names,
            "features",
        ),
        OwnCase(
            "input-96-with-own-mean-std",
            [
                "--model",
                f"{net_py}:Net",
                "--model-arg",
                "classes=2",
                "--input-size",
                "96",
                "--resize",
                "110",
                "--mean",
                "0.5,0.4,0.3",
                "--std",
                "0.2,0.25,0.3",
                "--weights",
                _saved(small, folder / "small.pth"),
            ],
            {
                "name": f"{net_py}:Net",
                "model_args": {"classes": 2},
                "weights": folder / "small.pth",
                "preprocessing": {
                    "input_size": (96, 96),
                    "resize": 110,
                    "mean": (0.5, 0.4, 0.3),
                    "std": (0.2, 0.25, 0.3),
                },
            },
            small,
            "features",
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
    cases = (
        _torchvision_cases(folder)
        + _seed_and_timm_cases(folder)
        + _user_cases(folder)
        + _program_cases(folder)
    )
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

    methods = "gradcam,saliency" if case.cam else "saliency"
    # the report always draws Grad-CAM (where it applies) and saliency: compare no more methods
    report = ["report", image, *case.options, "--methods", "none", "--out", str(tmp_path / "r")]
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
