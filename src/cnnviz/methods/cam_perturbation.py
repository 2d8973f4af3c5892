"""Perturbation CAMs: channel weights measured by forward passes instead of gradients.

Score-CAM masks the *input* with each upsampled channel and runs the whole network on the masked
images; Ablation-CAM zeroes one channel of the *layer* at a time and runs only the part of the
network after the layer (:class:`OutputSwap`). Both run their forwards in batches of
``batch_size`` under ``torch.inference_mode()``, skip perturbations whose result is known without
a forward (a constant channel's mask, an all-zero channel's ablation), and serve every target of
an image from the same forwards.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnviz.capture.forward import add_forward_hook, input_layout, model_state_guard
from cnnviz.capture.hooks import HookOwner
from cnnviz.capture.targets import Targets
from cnnviz.errors import LayerError, NonFiniteError
from cnnviz.methods.base import register
from cnnviz.methods.cam import ActivationCAM, LayerPass
from cnnviz.methods.postprocess import upsample
from cnnviz.progress import batch_progress

logger = logging.getLogger(__name__)


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return batch_size


class OutputSwap(HookOwner):
    """Replace one layer's output by a given tensor during forward passes (a context manager).

    The layer's forward hook returns the replacement, so the part of the network after the layer
    runs on it, with as many rows as the replacement has; the part before the layer runs on
    whatever input is given (one image is enough). The hook is removed on exit, also after an
    error. Example::

        with OutputSwap(model, "backbone.bn5_2") as swap:
            logits = swap.forward(x[:1], ablated_activations)  # (B, classes)
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.model = model
        self.layer = layer
        self.module = model.get_submodule(layer)
        self._handle: RemovableHandle | None = None
        self._replacement: torch.Tensor | None = None
        self._calls = 0

    def __enter__(self) -> OutputSwap:
        self._handle = add_forward_hook(self.module, self._hook)
        return self

    def remove(self) -> None:
        """Remove the hook; safe to call more than once."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
        replacement = self._replacement
        if replacement is None:  # a forward pass not run by OutputSwap.forward: leave it alone
            return None
        self._calls += 1
        if self._calls > 1:
            raise LayerError(
                f"Layer {self.layer!r} runs more than once in one forward pass; choose a layer "
                "that runs once."
            )
        if not isinstance(output, torch.Tensor) or output.shape[1:] != replacement.shape[1:]:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise LayerError(
                f"Layer {self.layer!r} gives {got}, which does not match the replacement of shape "
                f"{tuple(replacement.shape)}; choose a layer whose output is one tensor."
            )
        return replacement

    def forward(self, x: torch.Tensor, replacement: torch.Tensor) -> Any:
        """Run the model on ``x`` with the layer's output replaced; returns the model's output."""
        if self._handle is None:
            raise RuntimeError("OutputSwap.forward must be called inside its `with` block")
        self._replacement, self._calls = replacement, 0
        try:
            output = self.model(x)
        finally:
            self._replacement = None
        if self._calls != 1:
            raise LayerError(f"Layer {self.layer!r} never ran in the forward pass.")
        return output


def _batches(rows: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, rows.numel(), size):
        yield rows[start : start + size]


@register
class ScoreCAM(ActivationCAM):
    """Score-CAM (Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, "Score-CAM: Score-Weighted
    Visual Explanations for Convolutional Neural Networks", CVPR workshops 2020).

    Each channel ``A^k`` is upsampled (bilinear, ``align_corners=False`` as in the authors'
    code) to the input size, min-max normalised to ``M^k ∈ [0, 1]``, and the target's score is
    read on the masked input ``s_k = y(x ⊙ M^k)``; then::

        w = softmax_k(s_k),   map = Σ_k w_k A^k   (the paper's map is ReLU(map)).

    ``y`` is the pre-softmax score and the softmax runs over channels, as in the paper's
    Algorithm 1 and pytorch-grad-cam (the paper's baseline ``y(x_b)`` is a constant shift, which
    the softmax ignores; the authors' first code weighted by the class probability instead).
    A constant channel has no min-max mask: it masks the image to zero, whose score is computed
    once and shared by all such channels and images. pytorch-grad-cam upsamples with
    ``align_corners=True``, so its maps differ slightly. Example::

        >>> e = explain(model, x, "scorecam", layer="conv5_2", target=TopK(2), batch_size=64)
    """

    name = "scorecam"
    title = "Score-CAM"
    paper = "Wang et al., CVPRW 2020"
    summary = "Channels weighted by the softmax of the target score on channel-masked inputs."

    def __init__(self, *, batch_size: int = 32) -> None:
        self.batch_size = _check_batch_size(batch_size)

    def compute(
        self, model: nn.Module, x: torch.Tensor, layer: str, run: LayerPass
    ) -> torch.Tensor:
        A, targets = run.activations, run.targets
        n, k = A.shape[:2]
        flat = A.flatten(2)
        varying = flat.amax(dim=2) > flat.amin(dim=2)  # (N, K); a constant channel → zero mask
        work = [
            (i, part)
            for i in range(n)
            for part in _batches(varying[i].nonzero()[:, 0], self.batch_size)
        ]
        scores = A.new_zeros(n, k, targets.per_image)
        layout = input_layout(model, x)
        with (
            model_state_guard(model),
            torch.inference_mode(),
            batch_progress(len(work), self.title) as bar,
        ):
            if not varying.all():  # one forward of the zero image serves every constant channel
                output = model(torch.zeros_like(x[:1], memory_format=layout))
                for i in range(n):
                    zero = targets.scores(output, rows=torch.tensor([i]))
                    scores[i, ~varying[i]] = zero.to(scores.dtype)
            for i, part in work:
                masks = unit_masks(A[i, part], (x.shape[-2], x.shape[-1]))
                masked = x[i : i + 1] * masks.unsqueeze(1)
                output = model(masked.contiguous(memory_format=layout))
                rows = torch.full((part.numel(),), i, dtype=torch.long)
                scores[i, part] = targets.scores(output, rows=rows).to(scores.dtype)
                bar.update()
        weights = scores.softmax(dim=1)
        return torch.einsum("nkt,nkhw->nthw", weights, A)


def unit_masks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps ``(B, h, w)`` upsampled to ``size`` and min-max scaled to [0, 1] (a constant map → 0).

    :func:`~cnnviz.methods.postprocess.minmax_normalize` in one pass, in place: this runs once per
    Score-CAM mask, and at 224×224 it otherwise costs a noticeable share of a forward pass.
    """
    up = upsample(maps, size)
    flat = up.flatten(1)
    low, high = torch.aminmax(flat, dim=1, keepdim=True)
    span = (high - low).clamp_(min=torch.finfo(flat.dtype).tiny)
    return flat.sub_(low).div_(span).view_as(up)


class Feed(enum.Enum):
    """What the part of the network before the layer sees while ablated activations are swapped
    in after it (:class:`OutputSwap`); the first that reproduces the model's score is used."""

    NOTHING = 0
    """An empty batch: the part before the layer does no work (nothing bypasses the layer)."""
    ONE = 1
    """The image once: a skip connection around the layer broadcasts it (``a + skip``)."""
    EVERY_ROW = 2
    """The image once per row: always right (``cat([a, skip])``), as pytorch-grad-cam does."""

    def rows(self, x: torch.Tensor, i: int, count: int) -> torch.Tensor:
        """Image ``i`` of ``x`` as fed for ``count`` ablated rows."""
        if self is Feed.NOTHING:
            return x[:0]
        if self is Feed.ONE:
            return x[i : i + 1]
        return x[i : i + 1].repeat(count, 1, 1, 1)


@register
class AblationCAM(ActivationCAM):
    """Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization", WACV 2020).

    With ``y`` the target's score and ``y_k`` its score when channel ``k`` of the layer is set to
    zero::

        w_k = (y − y_k) / y,   map = Σ_k w_k A^k   (the paper's map is ReLU(map)).

    Only the part of the network after the layer runs for the ablations: the captured ``A`` is
    ablated in batches of ``batch_size`` and swapped in for the layer's output
    (:class:`OutputSwap`), while the part before the layer gets an empty batch — or, when a skip
    connection bypasses the layer, the image once or once per row (:class:`Feed`, chosen by
    checking that two unablated rows give ``y``). An all-zero channel is not run: ``y_k = y``.
    pytorch-grad-cam zeroes the channel only when the layer's minimum is 0 and otherwise sets it
    to ``min(A) − 1e7``; cnnviz always zeroes, as the paper does. Example::

        >>> e = explain(model, x, "ablationcam", layer="conv5_2", target=[3, 7])
    """

    name = "ablationcam"
    title = "Ablation-CAM"
    paper = "Desai & Ramaswamy, WACV 2020"
    summary = "Channels weighted by the relative drop of the score when each is zeroed."

    def __init__(self, *, batch_size: int = 32) -> None:
        self.batch_size = _check_batch_size(batch_size)

    def compute(
        self, model: nn.Module, x: torch.Tensor, layer: str, run: LayerPass
    ) -> torch.Tensor:
        A, targets, y = run.activations, run.targets, run.scores
        if (y == 0).any():
            raise NonFiniteError(
                "Ablation-CAM divides by the target score, which is exactly 0 here; explain "
                "another target or use scorecam."
            )
        n, k = A.shape[:2]
        active = A.flatten(2).ne(0).any(dim=2)  # (N, K); ablating a zero channel changes nothing
        ablated = y.unsqueeze(1).repeat(1, k, 1).to(A.dtype)  # y_k, (N, K, T)
        work = [
            (i, part)
            for i in range(n)
            for part in _batches(active[i].nonzero()[:, 0], self.batch_size)
        ]
        feed: Feed | None = None  # decided on the first batch
        layout = input_layout(model, x)
        with (
            model_state_guard(model),
            OutputSwap(model, layer) as swap,
            torch.inference_mode(),
            batch_progress(len(work), self.title) as bar,
        ):
            for i, part in work:
                if feed is None:
                    feed = self._choose_feed(swap, x, A[i], i, targets, y, layout)
                batch = A[i].repeat(part.numel(), 1, 1, 1)
                batch[torch.arange(part.numel(), device=A.device), part] = 0
                image = feed.rows(x, i, part.numel())
                ablated[i, part] = _swapped_scores(swap, image, batch, i, targets, layout)
                bar.update()
        weights = (y.unsqueeze(1) - ablated) / y.unsqueeze(1)
        return torch.einsum("nkt,nkhw->nthw", weights, A)

    def _choose_feed(
        self,
        swap: OutputSwap,
        x: torch.Tensor,
        activation: torch.Tensor,
        i: int,
        targets: Targets,
        y: torch.Tensor,
        layout: torch.memory_format,
    ) -> Feed:
        """The cheapest :class:`Feed` with which two unablated rows both reproduce ``y``."""
        check = activation.unsqueeze(0).repeat(2, 1, 1, 1)
        expected = y[i].expand(2, -1)
        for feed in (Feed.NOTHING, Feed.ONE):
            try:
                image = feed.rows(x, i, 2)
                scores = _swapped_scores(swap, image, check.clone(), i, targets, layout)
            except Exception as e:  # a shape error here means: feed the image
                logger.debug("%s: feeding %s before the layer failed: %s", self.title, feed, e)
                continue
            atol = 1e-4 * float(y[i].abs().max())
            if torch.allclose(scores, expected.to(scores.dtype), rtol=1e-3, atol=atol):
                logger.debug("%s: feeding %s before the layer", self.title, feed)
                return feed
        logger.info(
            "%s: a skip connection bypasses %r; the image runs once per row", self.title, swap.layer
        )
        return Feed.EVERY_ROW


def _swapped_scores(
    swap: OutputSwap,
    image: torch.Tensor,
    batch: torch.Tensor,
    i: int,
    targets: Targets,
    layout: torch.memory_format,
) -> torch.Tensor:
    """Target scores ``(B, T)`` of image ``i`` with the layer's output replaced by ``batch``."""
    rows = batch.shape[0]
    output = swap.forward(
        image.contiguous(memory_format=layout), batch.contiguous(memory_format=layout)
    )
    scores = targets.scores(output, rows=torch.full((rows,), i, dtype=torch.long))
    if scores.shape[0] != rows:
        raise LayerError(f"{rows} activations in, {scores.shape[0]} scores out")
    return scores.to(batch.dtype)
