"""cnnviz.inspect.summary: identity counts, rows that add up, hand-computed mult-adds, no change."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cnnviz.capture.hooks import ForwardError
from cnnviz.inspect.summary import (
    ModelSummary,
    count_parameters,
    layer_table,
    summarize,
)
from cnnviz.inspect.tables import format_layer_table, format_summary
from cnnviz.models.vgg import VGG11
from hook_leaks import hooked_modules

VGG11_PARAMS = 132_863_336
VGG11_BN_PARAMS = 132_868_840
VGG11_BACKBONE_PARAMS = 9_220_480  # Σ (C_in·9 + 1)·C_out over the 8 convolutions
VGG11_CLASSIFIER_PARAMS = 123_642_856  # (25088+1)·4096 + (4096+1)·4096 + (4096+1)·1000

# (H_out = W_out, C_in, C_out) of VGG-11's convolutions at 224×224, and its linear layers.
VGG11_CONVS = [
    (224, 3, 64),
    (112, 64, 128),
    (56, 128, 256),
    (56, 256, 256),
    (28, 256, 512),
    (28, 512, 512),
    (14, 512, 512),
    (14, 512, 512),
]
VGG11_LINEARS = [(25088, 4096), (4096, 4096), (4096, 1000)]
VGG11_MULT_ADDS = sum(h * h * c_out * c_in * 9 for h, c_in, c_out in VGG11_CONVS) + sum(
    i * o for i, o in VGG11_LINEARS
)


def meta_vgg11(**kwargs: object) -> VGG11:
    """VGG-11 on the meta device: real architecture, no weights allocated."""
    with torch.device("meta"):
        return VGG11(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def vgg11() -> VGG11:
    return meta_vgg11()


def children(summary: ModelSummary, name: str, depth: int) -> list[str]:
    return [
        r.name
        for r in summary.rows
        if r.depth == depth + 1 and (name == "" or r.name.startswith(name + "."))
    ]


def assert_rows_add_up(summary: ModelSummary) -> None:
    """At every level L, the rows of depth L plus the shallower leaf rows sum to the totals."""
    deepest = max(r.depth for r in summary.rows)
    for level in range(deepest + 1):
        chosen = [
            r
            for r in summary.rows
            if r.depth == level or (r.depth < level and not children(summary, r.name, r.depth))
        ]
        assert sum(r.params for r in chosen) == summary.total_params, level
        assert sum(r.trainable for r in chosen) == summary.trainable_params, level
        assert sum(r.frozen for r in chosen) == summary.frozen_params, level
        assert sum(r.mult_adds for r in chosen) == summary.total_mult_adds, level
    for r in summary.rows:
        assert r.params == r.trainable + r.frozen


# -- parameter counts ------------------------------------------------------------------------------


def test_vgg11_parameter_counts(vgg11: VGG11) -> None:
    assert count_parameters(vgg11) == (VGG11_PARAMS, 0)
    assert count_parameters(meta_vgg11(batch_norm=True)) == (VGG11_BN_PARAMS, 0)
    assert count_parameters(vgg11.backbone) == (VGG11_BACKBONE_PARAMS, 0)
    assert VGG11_BACKBONE_PARAMS + VGG11_CLASSIFIER_PARAMS == VGG11_PARAMS


def test_trainable_and_frozen_after_freezing_the_backbone() -> None:
    model = meta_vgg11()
    model.backbone.requires_grad_(False)
    assert count_parameters(model) == (VGG11_CLASSIFIER_PARAMS, VGG11_BACKBONE_PARAMS)
    summary = summarize(model, depth=1)
    assert (summary.trainable_params, summary.frozen_params) == (
        VGG11_CLASSIFIER_PARAMS,
        VGG11_BACKBONE_PARAMS,
    )
    rows = {r.name: r for r in summary.rows}
    assert (rows["backbone"].trainable, rows["backbone"].frozen) == (0, VGG11_BACKBONE_PARAMS)
    assert (rows["classifier"].trainable, rows["classifier"].frozen) == (
        VGG11_CLASSIFIER_PARAMS,
        0,
    )
    assert_rows_add_up(summary)
    text = format_summary(summary)
    assert "Frozen params:" in text
    assert "9,220,480" in text


def test_partially_frozen_subtree() -> None:
    model = meta_vgg11()
    model.backbone.conv1.requires_grad_(False)  # 1,792 params
    summary = summarize(model, depth=None)
    rows = {r.name: r for r in summary.rows}
    assert rows["backbone"].frozen == 1792
    assert rows["backbone"].trainable == VGG11_BACKBONE_PARAMS - 1792
    assert rows["backbone.conv1"].frozen == 1792
    assert_rows_add_up(summary)
    lines = format_summary(summary).splitlines()
    assert "partial" in next(line for line in lines if "backbone (VGG11Backbone)" in line)
    assert " no " in next(line for line in lines if "backbone.conv1 " in line)


class Body(nn.Module):
    """A parent with a parameter of its own next to a child."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(4))  # 4
        self.lin = nn.Linear(4, 4)  # 20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.lin(x)
        return y + self.offset


class Tied(nn.Module):
    """Tied weights, a module registered under two names and run twice, and a root parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))  # 4, on the root
        self.embed = nn.Linear(4, 4, bias=False)  # 16
        self.body = Body()  # 4 + 20
        self.head = nn.Linear(4, 4)  # its weight is embed's: only the bias (4) is new
        self.head.weight = self.embed.weight
        self.again = self.body.lin  # the same module under a second name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.head(self.again(self.body(self.embed(x))))
        return y * self.scale


def test_tied_weights_are_counted_once_on_the_first_owner() -> None:
    model = Tied()
    naive = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert naive == 84  # 48 + head.weight (16) + again.* (20)
    assert count_parameters(model) == (48, 0)
    summary = summarize(model, (4,))
    rows = {r.name: r for r in summary.rows}
    assert [r.name for r in summary.rows] == [
        "",
        "<own>",
        "embed",
        "body",
        "body.<own>",
        "body.lin",
        "head",
    ]
    assert {name: r.params for name, r in rows.items()} == {
        "": 48,
        "<own>": 4,
        "embed": 16,
        "body": 24,
        "body.<own>": 4,
        "body.lin": 20,
        "head": 4,
    }
    # Mult-adds: embed 16, body.lin runs twice (2 · 16), head 16.
    assert rows["body.lin"].mult_adds == 32
    assert summary.total_mult_adds == 64
    assert summary.total_params == 48
    assert_rows_add_up(summary)


def test_tied_model_rows_add_up_at_depth_one() -> None:
    summary = summarize(Tied(), (4,), depth=1)
    assert [(r.name, r.params) for r in summary.rows] == [
        ("", 48),
        ("<own>", 4),
        ("embed", 16),
        ("body", 24),  # not expanded: its own offset stays inside its row
        ("head", 4),
    ]
    assert_rows_add_up(summary)


@pytest.mark.parametrize("depth", [0, 1, 2, None])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg11_rows_add_up(depth: int | None, batch_norm: bool) -> None:
    model = meta_vgg11(batch_norm=batch_norm)
    model.classifier[6].requires_grad_(False)  # some frozen parameters too
    summary = summarize(model, depth=depth)
    assert summary.total_params == (VGG11_BN_PARAMS if batch_norm else VGG11_PARAMS)
    assert summary.frozen_params == 4_097_000
    assert max(r.depth for r in summary.rows) == (2 if depth is None else depth)
    assert_rows_add_up(summary)


def test_vgg11_mult_adds_and_shapes(vgg11: VGG11) -> None:
    assert VGG11_MULT_ADDS == 7_609_090_048  # torchvision lists vgg11 at 7.61 GFLOPS
    summary = summarize(vgg11)
    assert summary.total_mult_adds == VGG11_MULT_ADDS
    assert summary.input_size == (3, 224, 224)
    rows = {r.name: r for r in summary.rows}
    assert rows["backbone.conv1"].mult_adds == 224 * 224 * 64 * 3 * 9 == 86_704_128
    assert rows["classifier.0"].mult_adds == 25088 * 4096
    assert rows["backbone.bn1" if "backbone.bn1" in rows else "backbone.relu1"].mult_adds == 0
    assert rows["backbone.conv5_2"].output_shape == (1, 512, 14, 14)
    assert rows["avgpool"].output_shape == (1, 512, 7, 7)
    assert rows[""].output_shape == (1, 1000)
    assert rows["backbone"].params == VGG11_BACKBONE_PARAMS
    text = format_summary(summary)
    assert "132,863,336" in text
    assert "7,609,090,048" in text
    assert "(7.61 G)" in text


def test_hand_computed_mult_adds() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),  # out 4×5×5 = 100 · (2 · 9) = 1800
        nn.BatchNorm2d(4),  # 0
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, groups=2),  # out 6×3×3 = 54 · (4/2 · 9) = 972
        nn.Conv2d(6, 6, 1, groups=6),  # out 54 · (1 · 1) = 54
        nn.Flatten(),
        nn.Linear(54, 10),  # 54 · 10 = 540
    )
    summary = summarize(model, (2, 5, 5))
    assert [r.mult_adds for r in summary.rows] == [3366, 1800, 0, 0, 972, 54, 0, 540]
    assert [r.params for r in summary.rows] == [760, 76, 8, 0, 114, 12, 0, 550]
    assert summary.rows[1].output_shape == (1, 4, 5, 5)
    assert summary.rows[6].output_shape == (1, 54)
    assert summary.total_params == 760
    assert_rows_add_up(summary)


@pytest.mark.parametrize(
    ("module", "input_size", "expected"),
    [
        (nn.Conv1d(3, 2, 3), (3, 10), 8 * 2 * 3 * 3),  # out 2×8, 3 in-channels, k 3
        (nn.ConvTranspose2d(2, 3, 2, stride=2), (2, 4, 4), 32 * 3 * 4),  # numel(in)·C_out·k²
        (nn.Linear(5, 7), (3, 5), 3 * 5 * 7),  # 3 feature vectors of 5 → 7
        (nn.Conv2d(3, 8, 3, stride=2, bias=False), (3, 9, 9), 4 * 4 * 8 * 3 * 9),
    ],
)
def test_mult_add_formulas(module: nn.Module, input_size: tuple[int, ...], expected: int) -> None:
    summary = summarize(module, input_size)
    assert summary.total_mult_adds == expected
    assert [r.name for r in summary.rows] == [""]  # a model without children is one row


# -- the model is left exactly as found ------------------------------------------------------------


def small_vgg() -> VGG11:
    torch.manual_seed(0)
    return VGG11(num_classes=5, batch_norm=True, width=1 / 16, hidden=16)


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "devices": {p.device for p in model.parameters()},
    }


def assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["devices"] == after["devices"]
    for a, b in zip(before["grads"], after["grads"], strict=True):  # type: ignore[call-overload]
        assert (a is None and b is None) or torch.equal(a, b)
    state_a, state_b = before["state"], after["state"]
    assert isinstance(state_a, dict)
    assert isinstance(state_b, dict)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def test_summary_and_layer_table_leave_the_model_untouched() -> None:
    model = small_vgg()
    model.train()
    model.get_submodule("backbone.bn1").eval()  # a mixed state must survive
    model.get_submodule("backbone.conv1").requires_grad_(False)
    weight = model.get_parameter("classifier.0.weight")
    grad = torch.full_like(weight, 7.0)
    weight.grad = grad
    before = snapshot(model)
    summary = summarize(model, (3, 32, 32))
    rows = layer_table(model, (3, 32, 32))
    assert_same(before, snapshot(model))  # BN running stats unchanged although in train mode
    assert weight.grad is grad
    assert hooked_modules(model) == []
    assert torch.is_grad_enabled()
    assert summary.frozen_params == 3 * 4 * 9 + 4
    assert len(rows) == len(list(model.named_modules())) - 1


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("kaput")


def test_a_failing_forward_leaves_no_hooks_and_restores_modes() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), Boom())
    model.train()
    before = snapshot(model)
    with pytest.raises(ForwardError, match="kaput") as info:
        summarize(model, (3, 4, 4))
    assert "input_size" in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ForwardError, match="kaput"):
        layer_table(model, (3, 4, 4))
    assert hooked_modules(model) == []
    assert_same(before, snapshot(model))


def test_a_wrong_input_size_says_what_to_do(vgg11: VGG11) -> None:
    with pytest.raises(ForwardError, match=r"one input without the batch dimension"):
        summarize(vgg11, (1, 3, 224, 224))
    assert hooked_modules(vgg11) == []


def test_device_is_never_changed() -> None:
    model = small_vgg()
    assert summarize(model, (3, 32, 32), device="cpu").total_params == count_parameters(model)[0]
    with pytest.raises(ValueError, match="never moves a model"):
        summarize(model, (3, 32, 32), device="meta")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"input_size": "3x224x224"}, TypeError),
        ({"input_size": (3, 0, 4)}, ValueError),
        ({"input_size": ()}, ValueError),
        ({"input_size": (3, 2.5, 4)}, ValueError),
        ({"depth": -1}, ValueError),
        ({"depth": True}, ValueError),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        summarize(nn.Linear(2, 2), **kwargs)  # type: ignore[arg-type]


def test_lazy_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="lazy"):
        count_parameters(nn.LazyLinear(3))


# -- output forms ----------------------------------------------------------------------------------


def test_to_dict_is_json_ready() -> None:
    summary = summarize(Tied(), (4,))
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["total_params"] == 48
    assert data["total_mult_adds"] == 64
    assert data["input_size"] == [4]
    assert [row["name"] for row in data["rows"]] == [r.name for r in summary.rows]
    assert data["rows"][2] == {
        "name": "embed",
        "type": "Linear",
        "depth": 1,
        "output_shape": [1, 4],
        "params": 16,
        "trainable": 16,
        "frozen": 0,
        "mult_adds": 16,
    }


def test_format_summary_golden() -> None:
    summary = summarize(Tied(), (4,))
    # body.lin runs twice, once as `again`: both calls count on its first name.
    expected = (
        "Layer (type)            Output shape   Params   Trainable   Mult-adds\n"
        "=====================================================================\n"
        "Tied                    [1, 4]             48   yes                64\n"
        "  <own>                 —                   4   yes                 0\n"
        "  embed (Linear)        [1, 4]             16   yes                16\n"
        "  body (Body)           [1, 4]             24   yes                32\n"
        "    body.<own>          —                   4   yes                 0\n"
        "    body.lin (Linear)   [1, 4]             20   yes                32\n"
        "  head (Linear)         [1, 4]              4   yes                16\n"
        "=====================================================================\n"
        "Total params:        48\n"
        "Trainable params:    48\n"
        "Frozen params:        0\n"
        "Mult-adds per image: 64\n"
        "Input size:          [4] (one image)\n"
        "Shared (tied) parameters are counted once, on the first module that owns them.\n"
    )
    assert format_summary(summary) == expected


def test_layer_table_for_vgg11(vgg11: VGG11) -> None:
    rows = layer_table(vgg11)
    assert len(rows) == len(list(vgg11.named_modules())) - 1
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows[:3]] == ["backbone", "backbone.conv1", "backbone.relu1"]
    conv = by_name["backbone.conv5_2"]
    assert (conv.alias, conv.type, conv.output_shape, conv.params) == (
        "conv5_2",
        "Conv2d",
        (1, 512, 14, 14),
        2_359_808,
    )
    assert by_name["backbone"].alias is None
    assert by_name["backbone"].params == VGG11_BACKBONE_PARAMS
    assert by_name["classifier"].params == VGG11_CLASSIFIER_PARAMS
    assert by_name["classifier.6"].output_shape == (1, 1000)
    text = format_layer_table(rows)
    line = next(line for line in text.splitlines() if "backbone.conv5_2" in line)
    # The 20th module: backbone, conv1, relu1, pool1, …, relu5_1, conv5_2.
    assert line.split() == [
        "20",
        "backbone.conv5_2",
        "conv5_2",
        "Conv2d",
        *["[1,", "512,", "14,", "14]"],
        "2,359,808",
    ]


def test_layer_table_without_input_runs_nothing() -> None:
    model = nn.Sequential(nn.Linear(2, 3), Boom())
    rows = layer_table(model, None)
    assert [(r.name, r.type, r.output_shape, r.params) for r in rows] == [
        ("0", "Linear", None, 9),
        ("1", "Boom", None, 0),
    ]


def test_layer_table_counts_tied_weights_once() -> None:
    rows = {r.name: r for r in layer_table(Tied(), (4,))}
    assert "again" not in rows  # the second name of a shared module
    assert (rows["head"].params, rows["embed"].params, rows["body"].params) == (4, 16, 24)
    assert rows["body.lin"].alias == "lin"
