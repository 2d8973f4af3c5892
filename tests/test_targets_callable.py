"""Callable targets through :func:`cnnviz.explain`: called once per forward, their shape
checked against the batch, outputs without a logits tensor, and finiteness of what is explained.
Also class names that do not fit the model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from cnnviz import explain
from cnnviz.capture.targets import resolve_targets
from cnnviz.errors import NonFiniteError, TargetError
from cnnviz.models import from_module

CLASSES = 5


class Net(nn.Module):
    """conv → ReLU → GAP → linear (5 classes), seeded; ``forward`` returns the logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, CLASSES)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.relu(self.conv(x))
        return features, self.fc(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> Any:
        return self.parts(x)[1]


class DictNet(Net):
    """The same network returning ``{"features": (N, 4, h, w), "out": logits}``."""

    def forward(self, x: torch.Tensor) -> Any:
        features, logits = self.parts(x)
        return {"features": features, "out": logits}


class ObjectNet(Net):
    """Returns an object whose class scores are in ``.score``: no logits tensor to find."""

    def forward(self, x: torch.Tensor) -> Any:
        return SimpleNamespace(score=self.parts(x)[1])


class InfAuxNet(Net):
    """Returns ``(aux, logits)`` with an infinite auxiliary output that nothing explains."""

    def forward(self, x: torch.Tensor) -> Any:
        logits = self.parts(x)[1]
        return torch.full_like(logits, float("inf")), logits


def _x(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@contextmanager
def counted(model: nn.Module) -> Iterator[list[int]]:
    """The batch size of every forward of ``model`` while the block runs (a forward hook)."""
    rows: list[int] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        rows.append(int(args[0].shape[0]))

    handle = model.register_forward_hook(hook)
    try:
        yield rows
    finally:
        handle.remove()


class Counting:
    """A callable target (class 3's logit) recording the rows of every output it is given."""

    __name__ = "counting"

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        self.rows.append(int(output.shape[0]))
        return output[:, 3]


# -- called once per forward --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "forwards"),
    [
        ("gradcam", {"layer": "conv"}, [2]),
        ("saliency", {}, [2]),
        # clean pass, then 5 samples × 2 images, 2 samples (4 rows) per pass
        ("smoothgrad", {"samples": 5, "batch_size": 4}, [2, 4, 4, 2]),
        # clean pass, then 4 windows × 2 images, 2 windows (4 rows) per pass
        ("occlusion", {"window": 8, "stride": 8, "batch_size": 4}, [2, 4, 4]),
    ],
)
def test_a_callable_target_is_called_once_per_forward(
    method: str, options: dict[str, Any], forwards: list[int]
) -> None:
    net, fn = Net().eval(), Counting()
    with counted(net) as rows:
        e = explain(net, _x(), method, target=fn, **options)
    assert rows == forwards
    assert fn.rows == forwards
    plain = explain(net, _x(), method, target=3, **options)
    assert torch.allclose(e.maps, plain.maps, atol=1e-6)
    assert e.targets.labels == (("counting",), ("counting",))


def test_score_cam_calls_the_target_once_per_forward() -> None:
    net, fn = Net().eval(), Counting()
    with counted(net) as rows:
        explain(net, _x(), "scorecam", layer="conv", target=fn)
    assert len(rows) >= 3  # the layer pass, then at least one masked batch per image
    assert fn.rows == rows


# -- the shape of a callable's result -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "shape"),
    [
        (lambda o: o[:1, 3], r"shape \(1,\)"),  # one row for two images
        (lambda o: o[None, :, :1].expand(3, 2, 1), r"shape \(3, 2, 1\)"),
        (lambda o: o[:, 3].sum(), r"shape \(\)"),
        (lambda o: o[:, 3].tolist(), "a list"),
    ],
)
def test_a_callable_result_must_be_n_or_n_by_t(fn: Callable[[Any], Any], shape: str) -> None:
    net = Net().eval()
    for method in ("gradcam", "saliency", "occlusion"):
        with pytest.raises(TargetError, match=rf"returned {shape} for a batch of 2 images"):
            explain(net, _x(), method, target=fn, layer="conv" if method == "gradcam" else None)
    with pytest.raises(TargetError, match=r"it must return .*\(N,\) or \(N, T\)"):
        resolve_targets(fn, net(_x()), images=2)


def test_a_callable_may_return_t_scalars_per_image() -> None:
    net = Net().eval()

    def pair(o: torch.Tensor) -> torch.Tensor:
        return o[:, [3, 1]]

    e = explain(net, _x(), "gradcam", layer="conv", target=pair)
    assert e.maps.shape == (2, 2, 16, 16)
    assert e.targets.labels == (("pair[0]", "pair[1]"),) * 2
    for t, cls in enumerate((3, 1)):
        plain = explain(net, _x(), "gradcam", layer="conv", target=cls)
        assert torch.allclose(e.maps[:, t], plain.maps[:, 0], atol=1e-6)
        assert torch.allclose(e.scores[:, t], plain.scores[:, 0], atol=1e-6)
    assert e.probabilities is None


def test_a_callable_must_keep_its_target_count_on_perturbed_batches() -> None:
    def changing(o: torch.Tensor) -> torch.Tensor:
        return o[:, :1] if o.shape[0] == 2 else o[:, :2]  # T = 1 on the clean batch only

    with pytest.raises(TargetError, match=r"shape \(4, 2\) .* 1 scalar\(s\) per image"):
        explain(Net().eval(), _x(), "occlusion", target=changing, window=8, batch_size=4)


# -- outputs without logits; finiteness of what is explained ------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_a_dict_output_explained_through_a_callable(method: str) -> None:
    layer = "conv" if method == "gradcam" else None
    plain = explain(Net().eval(), _x(), method, layer=layer, target=3)
    other = explain(
        DictNet().eval(), _x(), method, layer=layer, target=lambda out: out["out"][:, 3]
    )
    assert torch.allclose(other.maps, plain.maps, atol=1e-6, rtol=0)
    assert torch.allclose(other.scores, plain.scores, atol=1e-6, rtol=0)
    assert float(plain.maps.abs().max()) > 1e-3  # the comparison is not of two zero maps


@pytest.mark.parametrize("cls", [ObjectNet, InfAuxNet])
def test_only_the_explained_scalars_must_be_finite(cls: type[Net]) -> None:
    plain = explain(Net().eval(), _x(), "gradcam", layer="conv", target=3)

    def score(out: Any) -> torch.Tensor:
        logits = out.score if isinstance(out, SimpleNamespace) else out[1]
        return logits[:, 3]  # type: ignore[no-any-return]

    for method in ("gradcam", "scorecam"):
        e = explain(cls().eval(), _x(), method, layer="conv", target=score)
        if method == "gradcam":
            assert torch.allclose(e.maps, plain.maps, atol=1e-6, rtol=0)
        assert bool(torch.isfinite(e.maps).all())


def _nan_bias(index: int) -> Net:
    net = Net().eval()
    with torch.no_grad():
        net.fc.bias[index] = float("nan")
    return net


@pytest.mark.parametrize("method", ["gradcam", "saliency", "occlusion", "scorecam"])
def test_a_non_finite_explained_score_is_refused(method: str) -> None:
    layer = "conv" if method in ("gradcam", "scorecam") else None
    with pytest.raises(NonFiniteError, match="The explained target score contains NaN"):
        explain(_nan_bias(3), _x(), method, layer=layer, target=3)
    with pytest.raises(NonFiniteError, match="The explained target score contains NaN"):
        explain(_nan_bias(3), _x(), method, layer=layer, target=lambda o: o[:, 3])
    # A class target is read through the softmax of all logits: another class's NaN poisons it.
    with pytest.raises(NonFiniteError, match="The softmax of the model output contains NaN"):
        explain(_nan_bias(0), _x(), method, layer=layer, target=3)
    # A callable that does not read the NaN logit is explained.
    e = explain(_nan_bias(0), _x(), method, layer=layer, target=lambda o: o[:, 3])
    assert bool(torch.isfinite(e.maps).all())


# -- class names --------------------------------------------------------------------------------


def test_class_names_of_the_wrong_count_are_refused() -> None:
    net = Net().eval()
    with pytest.raises(TargetError, match="4 class names for a model with 5 classes"):
        explain(net, _x(), "gradcam", layer="conv", class_names=["a", "b", "c", "d"])
    loaded = from_module(net, class_names=list("abcdef"))
    with pytest.raises(TargetError, match="6 class names for a model with 5 classes"):
        explain(loaded, _x(), "saliency", target=3)
    named = explain(from_module(net, class_names=list("abcde")), _x(), "saliency", target="D")
    assert named.targets.labels == (("d",), ("d",))
    unnamed = explain(net, _x(), "saliency", target=3, class_names=())
    assert unnamed.targets.labels == (("3",), ("3",))
