"""Feature visualisation: objectives by hand, moves and parameterisations, the loop's guarantees.

Tiny models with set weights, so every value is computed by hand; the known-truth checks on real
models are in tests/test_featurevis_truth.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import cnnviz
from cnnviz.errors import LayerError
from cnnviz.featurevis import objectives as obj
from cnnviz.featurevis.checks import selectivity, stability, unit_scores
from cnnviz.featurevis.optimise import optimise
from cnnviz.featurevis.parameterisation import (
    FourierImage,
    PixelImage,
    colour_matrix,
    frequency_scale,
)
from cnnviz.featurevis.transforms import RobustnessTransforms, affine_matrices, move
from cnnviz.inputs.preprocess import Preprocessing
from hook_leaks import hooked_modules

GREY = Preprocessing(input_size=(16, 16), crop_pct=1.0, mean=(0.5,), std=(0.5,))
RGB = Preprocessing(input_size=(16, 16), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)


class Tiny(nn.Module):
    """conv (1×1, set weights: channel 0 is red, channel 1 green − blue; for one input channel,
    x and −x) → ReLU → mean pool → linear (2 → 3 classes)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            weight = [[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]] if channels == 3 else [[1.0], [-1.0]]
            self.conv.weight.copy_(torch.tensor(weight).view(2, channels, 1, 1))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.relu(self.conv(x)))))


def probe_of(acts: torch.Tensor, image: torch.Tensor | None = None, logits=None) -> obj.Probe:
    image = torch.zeros(acts.shape[0], 3, 4, 4) if image is None else image
    return obj.Probe(image, {"a": acts}, logits, {"a": "a"})


# -- objectives, by hand -------------------------------------------------------------------------


def test_channel_neuron_layer_values_by_hand() -> None:
    acts = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    p = probe_of(acts)
    # image 0, channel 1: values 4, 5, 6, 7 -> mean 5.5; image 1, channel 2: 20..23 -> 21.5
    assert obj.channel("a", [1, 2])(p).tolist() == [5.5, 21.5]
    assert obj.channel("a", 0)(p).tolist() == [1.5, 13.5]
    # the centre of a 2×2 map is (1, 1): image 0 channel 1 -> 7; image 1 channel 1 -> 19
    assert obj.neuron("a", 1)(p).tolist() == [7.0, 19.0]
    assert obj.neuron("a", 1, 0, 1)(p).tolist() == [5.0, 17.0]
    expected = [float((acts[b] ** 2).mean()) for b in range(2)]
    assert obj.layer("a")(p).tolist() == pytest.approx(expected)


def test_class_direction_and_composition_by_hand() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    acts = torch.zeros(2, 2, 1, 1)
    acts[0, :, 0, 0] = torch.tensor([3.0, 4.0])
    acts[1, :, 0, 0] = torch.tensor([1.0, 0.0])
    p = probe_of(acts, logits=logits)
    assert obj.class_logit([2, 0])(p).tolist() == [3.0, 4.0]
    # direction (3, 4) / 5: image 0 -> (9 + 16) / 5 = 5; image 1 -> 3 / 5
    assert obj.direction("a", [3.0, 4.0])(p).tolist() == pytest.approx([5.0, 0.6])
    combined = 2 * obj.class_logit(1) - obj.direction("a", [3.0, 4.0]) / 2
    assert combined(p).tolist() == pytest.approx([2 * 2 - 2.5, 2 * 5 - 0.3])
    assert combined.needs_logits and combined.layers == ("a",)
    assert (-obj.class_logit(0))(p).tolist() == [-1.0, -4.0]


def test_regularisers_by_hand() -> None:
    image = torch.full((1, 1, 2, 2), 0.5)
    image[0, 0, 0, 0] = 1.0  # one pixel off grey by 0.5
    p = obj.Probe(image, {}, None, {})
    assert obj.l2()(p).tolist() == [-(0.25 / 4)]
    # |dy|: (1 - .5), 0 over 2 pairs -> 0.25; |dx| likewise 0.25
    assert obj.total_variation()(p).tolist() == [-0.5]


def test_diversity_by_hand() -> None:
    acts = torch.zeros(4, 2, 1, 1)
    acts[0, 0] = acts[1, 0] = 1.0  # group 1: the same Gram matrix -> cosine 1
    acts[2, 0] = 1.0
    acts[3, 1] = 1.0  # group 2: orthogonal Gram matrices -> cosine 0
    values = obj.diversity("a", 2)(probe_of(acts))
    assert values.tolist() == pytest.approx([-1.0, -1.0, 0.0, 0.0])
    assert obj.diversity("a", 1)(probe_of(acts)).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="multiple of 3"):
        obj.diversity("a", 3)(probe_of(acts))


def test_objective_errors_name_the_problem() -> None:
    acts = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match="channel 5 is out of range: layer 'a' has 3 channels"):
        obj.channel("a", 5)(probe_of(acts))
    with pytest.raises(ValueError, match="lists 3 indices for a batch of 2"):
        obj.channel("a", [0, 1, 2])(probe_of(acts))
    with pytest.raises(LayerError, match="needs a spatial layer"):
        obj.neuron("a", 0)(probe_of(torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="non-zero"):
        obj.direction("a", [0.0, 0.0])


# -- parameterisations and moves ------------------------------------------------------------


def test_fourier_image_range_channels_and_scale() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = FourierImage(2, 3, (12, 10), generator=g, sd=1.0)()
    grey = FourierImage(2, 1, (12, 10), generator=g, sd=1.0)()
    assert rgb.shape == (2, 3, 12, 10) and grey.shape == (2, 1, 12, 10)
    values = rgb.detach()
    assert float(values.min()) > 0 and float(values.max()) < 1 and float(values.std()) > 0.01
    assert torch.equal(colour_matrix(1), torch.eye(1)) and torch.equal(
        colour_matrix(4), torch.eye(4)
    )
    # Lucid's matrix over its largest column norm: that column has norm 1
    assert float(colour_matrix(3).norm(dim=0).max()) == pytest.approx(1.0)
    scale = frequency_scale((4, 4))
    # frequencies 0 (clamped to 1/4 -> 4), 1/4 -> 4, 1/2 -> 2; corner (1/2, 1/2) -> 1/0.7071
    assert scale[0, 0] == 4 and scale[0, 1] == 4 and scale[0, 2] == 2
    assert float(scale[2, 2]) == pytest.approx(1 / math.sqrt(0.5))


def test_moves_are_seeded_scaled_and_differentiable() -> None:
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    moves = RobustnessTransforms().for_size((32, 32))
    assert moves.jitter == pytest.approx(8 * 32 / 224) and moves.pad == pytest.approx(12 * 32 / 224)
    a = moves(images, torch.Generator().manual_seed(5))
    b = moves(images, torch.Generator().manual_seed(5))
    c = moves(images, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    draws = moves.draw(3, torch.Generator().manual_seed(5))
    assert len({tuple(d.tolist()) for d in draws}) == 3
    low, high = moves.scale
    assert bool(((draws[:, 0] >= low) & (draws[:, 0] <= high)).all())
    assert bool((draws[:, 1].abs() <= math.radians(10)).all())
    small = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    draw = torch.tensor([[1.05, 0.1, 0.3, -0.2]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: move(x, draw), (small,))


def test_a_whole_pixel_shift_moves_the_image_exactly_and_fills_grey() -> None:
    image = torch.rand(1, 1, 5, 7)
    draw = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)  # sample one pixel right
    moved = move(image, draw)
    assert torch.allclose(moved[0, 0, :, :-1], image[0, 0, :, 1:], atol=1e-6)
    assert torch.allclose(moved[0, 0, :, -1], torch.full((5,), 0.5), atol=1e-6)
    matrices = affine_matrices(torch.tensor([[2.0, 0.0, 0.0, 0.0]]), (4, 4))
    assert matrices[0, :, :2].tolist() == [[0.5, 0.0], [0.0, 0.5]]


# -- the loop ---------------------------------------------------------------------------------


def test_optimisation_raises_the_channel_and_leaves_the_model_as_found() -> None:
    model = Tiny().train()
    model.fc.weight.requires_grad_(False)
    result = cnnviz.features(
        cnnviz.from_module(model, preprocessing=RGB),
        "conv",
        [0, 1],
        steps=200,
        stability=False,
    )
    with torch.no_grad():
        scores = unit_scores(model.conv((result.images - 0.5) / 0.5))
    # channel 0 is red, channel 1 is green minus blue: the pictures go there
    assert float(scores[0, 0]) > 0.6 and float(scores[1, 1]) > 0.6
    red = float(result.images[0, 0].mean())
    green, blue = result.images[1, 1:].mean(dim=(1, 2)).tolist()
    assert red > 0.75 and green > blue + 0.3
    assert model.training and all(m.training for m in model.modules())
    assert hooked_modules(model) == []
    assert all(p.grad is None for p in model.parameters())
    assert not model.fc.weight.requires_grad and model.conv.weight.requires_grad
    assert result.checks[0].selectivity > 1 and result.steps == 200


def test_grayscale_model_gets_a_grey_parameterisation() -> None:
    model = Tiny(channels=1)
    result = cnnviz.features(
        cnnviz.from_module(model, preprocessing=GREY), "conv", [0], steps=100, stability=False
    )
    assert result.images.shape == (1, 1, 16, 16)
    assert float(result.images.mean()) > 0.7  # channel 0 wants white (from mid-grey)
    pictures = result.to_numpy()
    assert pictures.shape == (1, 16, 16, 3) and (pictures[..., 0] == pictures[..., 2]).all()


def test_the_same_seed_gives_the_same_pictures() -> None:
    loaded = cnnviz.from_module(Tiny(), preprocessing=RGB)
    a = cnnviz.features(loaded, "conv", [0, 1], steps=8, seed=3, stability=False)
    b = cnnviz.features(loaded, "conv", [0, 1], steps=8, seed=3, stability=False)
    c = cnnviz.features(loaded, "conv", [0, 1], steps=8, seed=4, stability=False)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


class Failing(obj.Objective):
    """Channel 0 of ``conv``, until step ``at``: then ``kind`` (an exception, or NaN)."""

    layers = ("conv",)

    def __init__(self, at: int, kind: object) -> None:
        self.at, self.kind, self.calls = at, kind, 0

    def value(self, probe: obj.Probe) -> torch.Tensor:
        self.calls += 1
        acts = probe.layer("conv")
        if self.calls == self.at:
            if self.kind == "nan":
                return acts.flatten(1).mean(dim=1) * math.nan
            raise self.kind  # type: ignore[misc]
        return acts[:, 0].flatten(1).mean(dim=1)


def _run(objective: obj.Objective, model: nn.Module, steps: int = 10):
    image = PixelImage(1, 3, (8, 8), generator=torch.Generator().manual_seed(0))
    return optimise(model, objective, image, RGB, steps=steps, generator=torch.Generator())


def test_state_and_hooks_restored_after_an_exception_inside_the_optimisation() -> None:
    model = Tiny().train()
    with pytest.raises(RuntimeError, match="boom"):
        _run(Failing(3, RuntimeError("boom")), model)
    assert model.training and hooked_modules(model) == []
    assert all(p.grad is None for p in model.parameters())


def test_nan_stops_at_its_step_and_keeps_the_last_finite_image() -> None:
    result = _run(Failing(4, "nan"), Tiny())
    assert result.stopped == "the objective became non-finite at step 4"
    assert result.steps == 3 and bool(torch.isfinite(result.images).all())
    assert 3 in result.snapshots


def test_ctrl_c_keeps_the_images_so_far() -> None:
    model = Tiny()
    result = _run(Failing(6, KeyboardInterrupt()), model)
    assert result.interrupted and result.steps == 5 and result.stopped == "interrupted at step 6"
    assert hooked_modules(model) == []


def test_a_dead_start_is_restarted() -> None:
    model = Tiny()
    with torch.no_grad():
        model.conv.bias.fill_(-0.2)  # a grey image (0 after normalising) gives 0 after the ReLU
    image = PixelImage(1, 3, (8, 8), generator=torch.Generator().manual_seed(0), sd=0.01)
    result = optimise(
        model, obj.channel("relu", 0), image, RGB, steps=30, generator=torch.Generator()
    )
    assert image.sd > 0.01  # drawn again with more contrast
    assert float(result.scores[0]) > 0


# -- checks and the result -----------------------------------------------------------------------


def test_selectivity_and_stability_by_hand() -> None:
    scores = torch.tensor([[4.0, 1.0, 3.0, -2.0], [0.0, 2.0, 2.0, 2.0]])
    # image 0 unit 0: others (1, 3, 0) -> mean 4/3 -> 3; image 1 unit 0: 0 / 2 = 0
    assert selectivity(scores, [0, 0]) == pytest.approx([3.0, 0.0])
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    spread, same = stability(torch.tensor([2.0, 1.0, 4.0]), images.expand(3, -1, -1, -1)[[0, 0, 0]])
    assert spread == pytest.approx(0.25) and same == pytest.approx(1.0)


def test_result_shows_and_saves(tmp_path: Path) -> None:
    loaded = cnnviz.from_module(Tiny(), preprocessing=RGB)
    result = cnnviz.features(
        loaded, "conv", [0, 1], steps=6, thresholds=(3,), exemplars=torch.zeros(2, 3, 16, 16)
    )
    png = result._repr_png_()
    assert png.startswith(b"\x89PNG")
    assert "FeatureVisualization of 2 unit(s)" in repr(result)
    written = result.save(tmp_path)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    assert names == [
        "checks.json",
        "exemplars",
        "features.png",
        "steps/0003/unit-00.png",
        "steps/0003/unit-01.png",
        "steps/0006/unit-00.png",
        "steps/0006/unit-01.png",
        "unit-00.png",
        "unit-01.png",
    ]
    import json

    record = json.loads((tmp_path / "checks.json").read_text())
    assert [u["index"] for u in record["units"]] == [0, 1]
    # zero exemplar input -> channel 0 is relu(0) = 0 there, so the ratio is infinite
    assert record["units"][0]["exemplar_activation"] == 0.0
    assert result.checks[0].stability_activation is not None


def test_facets_are_pushed_apart_by_diversity() -> None:
    loaded = cnnviz.from_module(Tiny(), preprocessing=RGB)
    result = cnnviz.features(loaded, "conv", [1], steps=20, facets=3, stability=False)
    assert result.images.shape[0] == 3 and result.facets == 3
    assert "diversity" in result.objective
    assert result.labels() == ["channel 1 · facet 1", "channel 1 · facet 2", "channel 1 · facet 3"]


def test_bad_requests_are_clear() -> None:
    loaded = cnnviz.from_module(Tiny(), preprocessing=RGB)
    with pytest.raises(LayerError, match="conv"):
        cnnviz.features(loaded, "conf", steps=2)
    with pytest.raises(ValueError, match="channel 7 is out of range: layer 'conv' has 2 channels"):
        cnnviz.features(loaded, "conv", [7], steps=2)
    with pytest.raises(LayerError, match="A neuron is a position in a feature map"):
        cnnviz.features(loaded, "fc", [0], unit="neuron", steps=2)
    with pytest.raises(ValueError, match="class 9 is out of range: the model has 3 classes"):
        cnnviz.features(loaded, classes=[9], steps=2)
    with pytest.raises(ValueError, match="Unknown class 'dgo'"):
        cnnviz.features(
            cnnviz.from_module(Tiny(), preprocessing=RGB, class_names=["dog", "cat", "cow"]),
            classes=["dgo"],
            steps=2,
        )


def test_the_strongest_start_is_shown_first() -> None:
    from cnnviz.featurevis.visualise import _best_start_first, _reordered

    # 3 starts × 2 units × 1 facet; unit 0 is best in start 2, unit 1 in start 0
    scores = torch.tensor([1.0, 9.0, 2.0, 8.0, 5.0, 7.0])
    order = _best_start_first(scores, 3, 2, 1)
    assert order.tolist() == [[2, 0], [1, 1], [0, 2]]
    images = torch.arange(6.0).view(6, 1, 1, 1)  # image b holds the value b
    shown = _reordered(images, order, 3)
    assert shown[:, :, 0, 0, 0].tolist() == [[4.0, 1.0], [2.0, 3.0], [0.0, 5.0]]


def test_exemplars_are_collected_shown_and_saved(tmp_path: Path) -> None:
    loaded = cnnviz.from_module(Tiny(), preprocessing=RGB)
    natural = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    natural[3, 0] = 1.0  # image 3 is the reddest: channel 0's best exemplar
    x = (natural - 0.5) / 0.5
    result = cnnviz.features(loaded, "relu", [0, 1], steps=4, exemplars=x, stability=False)
    ex = result.exemplars
    assert ex is not None and ex.channels == (0, 1) and ex.k == 3
    best_red = float(torch.relu(x[:, 0]).mean(dim=(1, 2)).max())
    assert result.checks[0].exemplar_activation == pytest.approx(best_red)
    assert int(ex.score_sources[0, 0]) == 3
    assert "exemplar crops" in result.title()
    result.save(tmp_path)
    assert (tmp_path / "exemplars" / "exemplars.json").is_file()


def test_a_layer_the_forward_pass_never_reaches_is_named() -> None:
    model = Tiny()
    model.unused = nn.Conv2d(3, 4, 1)  # registered, never called by forward
    loaded = cnnviz.from_module(model, preprocessing=RGB)
    with pytest.raises(LayerError, match=r"'unused'.*never ran in the forward pass"):
        cnnviz.features(loaded, "unused", [0], steps=2)
    assert hooked_modules(model) == []
