"""The sampling core of LIME, KernelSHAP and Shapley Value Sampling.

Each of these methods explains an image through its segments (superpixels,
:mod:`cnnviz.methods.superpixels`): it draws binary *coalitions* z ∈ {0, 1}^F (segment f kept
when z_f = 1, else set to the baseline), scores the perturbed images, and turns the scores into
one value per segment. :func:`coalition_scores` streams every coalition of every image through
the model without autograd, ``batch_size`` rows per forward pass, and reads every target's score
off the same pass; :class:`SegmentSampling` is the base that holds the options they share.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.capture.targets import Targets, TargetSpec
from cnnviz.errors import positive_int
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.methods.base import Explanation, Method
from cnnviz.methods.baselines import BaselineContext, BaselineSpec, baseline_tensor, parse_baseline
from cnnviz.methods.gradients import CleanPass, chunks, clean_pass, forward_scores
from cnnviz.methods.perturbation import Score, map_result, parse_score
from cnnviz.methods.postprocess import Display
from cnnviz.methods.superpixels import Segments, Superpixels
from cnnviz.progress import batches


@dataclass(frozen=True)
class Sampled:
    """What the model said on the coalitions of each image: ``scores[i]`` ``(S_i, T)`` and,
    when asked for, the cosine distances ``distances[i]`` ``(S_i,)`` of the perturbed images to
    the image (flattened over C × H × W, in model-input units)."""

    scores: list[torch.Tensor]
    distances: list[torch.Tensor] | None


def coalition_scores(
    model: nn.Module,
    x: torch.Tensor,
    fill: torch.Tensor,
    groups: torch.Tensor,
    coalitions: Sequence[torch.Tensor],
    targets: Targets,
    *,
    batch_size: int,
    title: str,
    probability: bool = False,
    distances: bool = False,
) -> Sampled:
    """Score the perturbed images of ``coalitions[i]`` ``(S_i, F_i)`` (bool) of each image i.

    Row s of image i is ``x_i`` where ``coalitions[i][s, groups[i]]`` holds, else ``fill_i``
    (the baseline); all rows of all images stream through the model ``batch_size`` at a time.
    """
    n, _, height, width = x.shape
    sizes = [len(z) for z in coalitions]
    flat = torch.zeros((sum(sizes), max(z.shape[1] for z in coalitions)), dtype=torch.bool)
    start = 0
    for z in coalitions:
        flat[start : start + len(z), : z.shape[1]] = z.cpu()
        start += len(z)
    flat = flat.to(x.device)
    image_of = torch.repeat_interleave(torch.arange(n), torch.tensor(sizes)).to(x.device)
    scores = x.new_empty((len(flat), targets.per_image))
    gaps = x.new_empty(len(flat), dtype=torch.float32) if distances else None
    for span in batches(list(chunks(len(flat), 1, batch_size)), title):
        rows = slice(span.start, span.stop)
        image = image_of[rows]
        on = flat[rows].gather(1, groups[image].flatten(1)).view(len(span), 1, height, width)
        batch = torch.where(on, x[image], fill[image])
        scores[rows] = forward_scores(model, batch, targets, image, probability=probability)
        if gaps is not None:
            similarity = F.cosine_similarity(
                x[image].flatten(1).float(), batch.flatten(1).float(), dim=1
            )
            gaps[rows] = 1 - similarity
    split = [len(z) for z in coalitions]
    return Sampled(
        list(torch.split(scores, split)), None if gaps is None else list(torch.split(gaps, split))
    )


class SegmentSampling(Method):
    """Base of the methods that score coalitions of segments; subclasses implement
    :meth:`segment_values` (one value per segment and target).

    Options shared by all: ``samples`` (coalitions or permutations per image), ``segments``
    ("slic", the default, "quickshift" or "patches") or ``mask`` (integer segment ids
    ``(H, W)`` or ``(N, H, W)``); SLIC's ``n_segments`` (50) and ``compactness`` (10);
    Quickshift's ``kernel_size`` (5), ``max_dist`` (10) and ``ratio`` (1); both's Gaussian
    pre-smoothing ``sigma`` (1 px); the patches' ``patch`` (px, default a 14 × 14 grid);
    ``baseline`` (0 in model-input units, any of :mod:`cnnviz.methods.baselines`) for the
    segments left out; ``preprocessing`` (the model's, passed by :func:`cnnviz.explain`: the
    picture the superpixels are computed on, and the "black" baseline); ``score`` ("logit" or
    "probability"); ``batch_size`` perturbed images per forward pass; ``seed``.
    """

    display = Display.SIGNED
    default_samples: ClassVar[int]

    def __init__(
        self,
        *,
        samples: int | None = None,
        segments: str | Segments | None = None,
        mask: torch.Tensor | None = None,
        n_segments: int | None = None,
        compactness: float | None = None,
        sigma: float | None = None,
        kernel_size: float | None = None,
        max_dist: float | None = None,
        ratio: float | None = None,
        patch: int | None = None,
        baseline: BaselineSpec = 0.0,
        preprocessing: Preprocessing | None = None,
        score: str | Score = Score.LOGIT,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.samples = positive_int(self.default_samples if samples is None else samples, "samples")
        self.superpixels = Superpixels.parse(
            segments,
            mask,
            n_segments=n_segments,
            compactness=compactness,
            sigma=sigma,
            kernel_size=kernel_size,
            max_dist=max_dist,
            ratio=ratio,
            patch=patch,
        )
        self.baseline = parse_baseline(baseline)
        self.preprocessing = preprocessing
        self.context = BaselineContext(preprocessing, seed=seed)
        self.score = parse_score(score)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.seed = positive_int(seed, "seed", minimum=0)

    @abc.abstractmethod
    def segment_values(
        self,
        model: nn.Module,
        x: torch.Tensor,
        fill: torch.Tensor,
        groups: torch.Tensor,
        counts: list[int],
        clean: CleanPass,
    ) -> list[torch.Tensor]:
        """One ``(T, F_i)`` tensor per image: each target's value of each segment."""

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with ``seed``, one per image: the coalitions are drawn on the
        CPU, as captum draws them from torch's global generator, so a seed gives the same ones
        on every device, and an image's explanation does not depend on the batch it is in."""
        return torch.Generator().manual_seed(self.seed)

    def sample(
        self,
        model: nn.Module,
        x: torch.Tensor,
        fill: torch.Tensor,
        groups: torch.Tensor,
        coalitions: Sequence[torch.Tensor],
        clean: CleanPass,
        *,
        distances: bool = False,
    ) -> Sampled:
        """:func:`coalition_scores` with this method's options."""
        return coalition_scores(
            model,
            x,
            fill,
            groups,
            coalitions,
            clean.targets,
            batch_size=self.batch_size,
            title=self.title,
            probability=self.score is Score.PROBABILITY,
            distances=distances,
        )

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        groups, counts = self.superpixels.groups(x, self.preprocessing)
        clean = clean_pass(model, x, target, class_names)
        fill = baseline_tensor(self.baseline, x, self.context)
        values = self.segment_values(model, x, fill, groups, counts, clean)
        maps = torch.stack([v.to(x)[:, g] for v, g in zip(values, groups, strict=True)])
        return map_result(self, x, clean, maps)
