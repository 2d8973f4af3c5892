"""Targets: indices, names, per-image lists, top-k, callables, and their errors."""

from __future__ import annotations

import pytest
import torch

from cnnviz.capture.targets import TopK, class_index, logits_of, resolve_targets
from cnnviz.errors import TargetError

NAMES = ("cat", "dog", "espresso", "crane", "crane")
LOGITS = torch.tensor([[0.1, 2.0, -1.0, 0.5, 0.0], [3.0, 1.0, 2.0, -2.0, 0.0]])


def test_default_is_the_predicted_class() -> None:
    t = resolve_targets(None, LOGITS, NAMES)
    assert t.indices is not None and t.indices.tolist() == [[1], [0]]
    assert t.labels == (("dog",), ("cat",))
    assert torch.equal(t.scores(LOGITS), torch.tensor([[2.0], [3.0]]))


def test_names_indices_and_per_image_lists() -> None:
    assert class_index("Espresso", NAMES, 5) == 2
    assert class_index("3", NAMES, 5) == 3
    t = resolve_targets(["espresso", 4], LOGITS, NAMES)
    assert t.indices is not None and t.indices.tolist() == [[2], [4]]
    assert torch.equal(t.scores(LOGITS), torch.tensor([[-1.0], [0.0]]))


def test_top_k_orders_best_first() -> None:
    t = resolve_targets(TopK(3), LOGITS, NAMES)
    assert t.indices is not None and t.indices.tolist() == [[1, 3, 0], [0, 2, 1]]
    assert t.per_image == 3


def test_callable_targets_any_scalar_per_image() -> None:
    out = {"aux": torch.zeros(2), "logits": LOGITS}

    def margin(o: dict[str, torch.Tensor]) -> torch.Tensor:
        return o["logits"][:, 0] - o["logits"][:, 1]

    t = resolve_targets(margin, out, NAMES)
    assert t.indices is None and t.labels == (("margin",), ("margin",))
    assert torch.allclose(t.scores(out), torch.tensor([[-1.9], [2.0]]))
    assert torch.equal(logits_of(out), LOGITS)
    assert torch.equal(logits_of((LOGITS, None)), LOGITS)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (7, "out of range"),
        ("espreso", "espresso"),
        ("crane", "ambiguous"),
        ([1], "1 targets given for a batch of 2"),
        (TopK(9), "only 5 classes"),
        (lambda o: o[None], r"shape \(1, 2, 5\) for a batch of 2 images"),
        (lambda o: o[:1], r"shape \(1, 5\) for a batch of 2 images"),
        (lambda o: o[:, :0], r"shape \(2, 0\) for a batch of 2 images"),
    ],
)
def test_bad_targets_name_the_problem(spec: object, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        resolve_targets(spec, LOGITS, NAMES)  # type: ignore[arg-type]


def test_class_names_must_name_every_class() -> None:
    with pytest.raises(TargetError, match="4 class names for a model with 5 classes"):
        resolve_targets(None, LOGITS, NAMES[:4])
    with pytest.raises(TargetError, match="6 class names for a model with 5 classes"):
        resolve_targets(3, LOGITS, (*NAMES, "extra"))
    assert resolve_targets(3, LOGITS, ()).labels == (("3",), ("3",))  # no names: numbers


def test_callable_targets_score_once_with_t_columns() -> None:
    calls = []

    def two(o: torch.Tensor) -> torch.Tensor:
        calls.append(o.shape[0])
        return o[:, [4, 0]]

    t = resolve_targets(two, LOGITS, NAMES)
    assert calls == [2] and t.per_image == 2 and t.labels == (("two[0]", "two[1]"),) * 2
    assert torch.equal(t.scores(LOGITS), torch.tensor([[0.0, 0.1], [0.0, 3.0]]))
    assert calls == [2, 2]
    rows = torch.tensor([1, 1, 0])
    three = torch.cat([LOGITS[1:], LOGITS[1:], LOGITS[:1]])
    assert torch.equal(t.scores(three, rows=rows)[:, 1], torch.tensor([3.0, 3.0, 0.1]))
    with pytest.raises(TargetError, match=r"shape \(2, 2\) for a batch of 3 images"):
        t.scores(LOGITS, rows=rows)


def test_per_image_lists_give_several_targets_each() -> None:
    t = resolve_targets([["espresso", 4], [0, 1]], LOGITS, NAMES)
    assert t.indices is not None and t.indices.tolist() == [[NAMES.index("espresso"), 4], [0, 1]]
    assert t.labels[1] == (NAMES[0], NAMES[1])
    with pytest.raises(TargetError, match="same, non-zero length"):
        resolve_targets([[1, 2], [3]], LOGITS, NAMES)
