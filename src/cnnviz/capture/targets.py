"""What is explained: one scalar per image and target, taken from the model's output.

A target specification (``TargetSpec``) is one of:

* ``None`` — the predicted class of each image (arg-max of the logits);
* an ``int`` class index or a ``str`` class name — the same class for every image;
* a sequence with one index or name per image (its length must match the batch), or with one
  sequence of ``T`` indices or names per image (``[[3, 7], [1, 2]]``: ``T`` targets each);
* :class:`TopK` — the ``k`` highest-scoring classes of each image (``k`` targets per image);
* a callable mapping the model output to a tensor of shape ``(N,)`` or ``(N, T)`` — any scalar
  (or ``T`` scalars) per image: multi-label, regression, a segmentation class summed over a
  mask, a dict or tuple output. It is called once per forward pass, on that pass's output.

Class scores are the **pre-softmax** logits (Simonyan et al. 2014; Selvaraju et al. 2017).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch

from cnnviz.errors import TargetError, close_matches

ScoreFn: TypeAlias = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class TopK:
    """The ``k`` highest-scoring classes of each image, best first."""

    k: int

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise TargetError(f"top-k needs a positive whole number k, got {self.k!r}")


TargetSpec: TypeAlias = (
    int | str | Sequence[int | str] | Sequence[Sequence[int | str]] | TopK | ScoreFn | None
)


def logits_of(output: Any) -> torch.Tensor:
    """The class-score tensor in a model's output.

    A tensor is returned as is; a tuple or list gives its first element; a mapping gives its
    ``"logits"`` entry, else ``"out"``, else its first tensor value; an object with a ``logits``
    attribute (Hugging Face outputs) gives that attribute.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    if isinstance(output, Mapping):
        for key in ("logits", "out"):
            if key in output:
                return logits_of(output[key])
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TargetError(
        f"Cannot find class scores in a model output of type {type(output).__name__}; "
        "pass a callable target that maps the output to one scalar per image."
    )


def class_index(value: int | str, class_names: Sequence[str] | None, num_classes: int) -> int:
    """A class index from an index or a class name (case-insensitive), validated."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"A class target must be an int index or a str name, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return class_index(int(text), class_names, num_classes)
        if not class_names:
            raise TargetError(
                f"Class name {value!r} given, but this model has no class names; use an index "
                f"0…{num_classes - 1}."
            )
        lowered = [name.lower() for name in class_names]
        hits = [i for i, name in enumerate(lowered) if name == text.lower()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise TargetError(
                f"Class name {value!r} is ambiguous (indices {hits}); give the index instead."
            )
        raise TargetError(
            f"Unknown class name {value!r}.{close_matches(text.lower(), lowered)} "
            f"Give an exact class name of this model or an index 0…{num_classes - 1}."
        )
    if not 0 <= value < num_classes:
        raise TargetError(
            f"Class index {value} is out of range: this model has {num_classes} classes "
            f"(0…{num_classes - 1})."
        )
    return value


@dataclass(frozen=True)
class Targets:
    """Targets resolved against one batch: ``T`` scalars per image.

    ``indices`` is ``(N, T)`` class indices (``None`` for a callable target), ``labels`` the
    matching human labels, and :meth:`scores` computes the ``(N, T)`` scalars from an output.
    """

    indices: torch.Tensor | None
    labels: tuple[tuple[str, ...], ...]
    score_fn: ScoreFn | None = None

    @property
    def per_image(self) -> int:
        """T, the number of targets for each image."""
        return len(self.labels[0]) if self.labels else 0

    def scores(self, output: Any, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``(M, T)`` target scalars of ``output``.

        ``rows`` (length M) says which original image each output row belongs to, for
        perturbation batches that repeat one image; by default row i is image i. A callable
        target is called once, and its result must have M rows and T columns.
        """
        if self.score_fn is not None:
            expected = len(rows) if rows is not None else len(self.labels)
            return callable_scores(self.score_fn, output, expected, self.per_image)
        assert self.indices is not None  # invariant: either score_fn or indices
        logits = class_logits(output)
        index = self.indices.to(logits.device)
        if rows is not None:
            index = index[rows.to(logits.device)]
        if index.shape[0] != logits.shape[0]:
            raise TargetError(
                f"{index.shape[0]} target rows for {logits.shape[0]} outputs; "
                "give one target per image."
            )
        return logits.gather(1, index)


def callable_scores(
    fn: ScoreFn, output: Any, images: int, per_image: int | None = None
) -> torch.Tensor:
    """``fn(output)`` as ``(N, T)`` scores for a batch of ``N = images``, called once.

    Raises :class:`TargetError` unless ``fn`` returns a tensor of shape ``(N,)`` or ``(N, T)``
    (with ``T = per_image`` when given: the count it returned on the unperturbed batch).
    """
    values = fn(output)
    if not isinstance(values, torch.Tensor):
        raise TargetError(
            f"the target function returned a {type(values).__name__} for a batch of {images} "
            "images; it must return a tensor of shape (N,) or (N, T)"
        )
    shape = tuple(values.shape)
    if values.dim() not in (1, 2) or shape[0] != images or 0 in shape[1:]:
        raise TargetError(
            f"the target function returned shape {shape} for a batch of {images} images; "
            "it must return (N,) or (N, T)"
        )
    scores = values.unsqueeze(1) if values.dim() == 1 else values
    if per_image is not None and scores.shape[1] != per_image:
        raise TargetError(
            f"the target function returned shape {shape} for a batch of {images} images, "
            f"but {per_image} scalar(s) per image on the unperturbed batch; it must return "
            "the same number of scalars per image on every batch"
        )
    return scores


def class_logits(output: Any) -> torch.Tensor:
    """The ``(N, classes)`` logits in ``output`` (:func:`logits_of`); else a TargetError."""
    logits = logits_of(output)
    if logits.dim() != 2:
        raise TargetError(
            f"Class targets need (N, classes) scores, the model gives shape {tuple(logits.shape)}; "
            "pass a callable target that returns one scalar per image."
        )
    return logits


def checked_class_names(
    class_names: Sequence[str] | None, num_classes: int
) -> Sequence[str] | None:
    """``class_names`` if there is one per class; ``None`` for none (or an empty sequence).

    Raises :class:`TargetError` for names of another count: they cannot belong to this model.
    """
    if not class_names:
        return None
    if len(class_names) != num_classes:
        raise TargetError(
            f"{len(class_names)} class names for a model with {num_classes} classes; give one "
            "name per output of the model, or none."
        )
    return class_names


def resolve_and_score(
    spec: TargetSpec,
    output: Any,
    class_names: Sequence[str] | None = None,
    *,
    images: int | None = None,
) -> tuple[Targets, torch.Tensor]:
    """Resolve ``spec`` against ``output`` and score it, calling a callable target once.

    Returns the :class:`Targets` and their ``(N, T)`` scores, still attached to the graph of
    ``output``. ``images`` is N, the batch size of the model input (by default the rows of the
    class logits); a callable target's result must have N rows.
    """
    if callable(spec) and not isinstance(spec, (str, TopK)):
        n = images if images is not None else class_logits(output).shape[0]
        scores = callable_scores(spec, output, n)
        name = getattr(spec, "__name__", type(spec).__name__)
        count = scores.shape[1]
        row = (name,) if count == 1 else tuple(f"{name}[{t}]" for t in range(count))
        return Targets(None, tuple(row for _ in range(n)), spec), scores
    targets = _resolve_classes(spec, class_logits(output), class_names)
    return targets, targets.scores(output)


def resolve_targets(
    spec: TargetSpec,
    output: Any,
    class_names: Sequence[str] | None = None,
    *,
    images: int | None = None,
) -> Targets:
    """Resolve ``spec`` against the model's ``output`` for a batch (see the module docstring)."""
    return resolve_and_score(spec, output, class_names, images=images)[0]


def _resolve_classes(
    spec: TargetSpec, logits: torch.Tensor, class_names: Sequence[str] | None
) -> Targets:
    """Class-index targets ``(N, T)`` of a non-callable ``spec`` for ``(N, classes)`` logits."""
    n, num_classes = logits.shape
    class_names = checked_class_names(class_names, num_classes)
    if spec is None:
        index = logits.detach().argmax(dim=1, keepdim=True)
    elif isinstance(spec, TopK):
        if spec.k > num_classes:
            raise TargetError(f"top-{spec.k} asked, but the model has only {num_classes} classes.")
        index = logits.detach().topk(spec.k, dim=1).indices
    elif isinstance(spec, (int, str)):
        one = class_index(spec, class_names, num_classes)
        index = torch.full((n, 1), one, dtype=torch.long)
    elif isinstance(spec, Sequence):
        if len(spec) != n:
            raise TargetError(
                f"{len(spec)} targets given for a batch of {n} images; give one per image "
                "or a single target for all."
            )
        rows = [v if isinstance(v, Sequence) and not isinstance(v, str) else [v] for v in spec]
        if len({len(row) for row in rows}) != 1 or not rows[0]:
            raise TargetError(
                "Per-image target lists must all have the same, non-zero length; got lengths "
                f"{[len(row) for row in rows]}."
            )
        index = torch.tensor(
            [[class_index(v, class_names, num_classes) for v in row] for row in rows],
            dtype=torch.long,
        )
    else:
        raise TypeError(
            f"Unsupported target {spec!r}; see cnnviz.capture.targets for the accepted forms."
        )
    index = index.cpu()
    labels = tuple(
        tuple(class_names[i] if class_names else str(i) for i in row.tolist()) for row in index
    )
    return Targets(index, labels)
