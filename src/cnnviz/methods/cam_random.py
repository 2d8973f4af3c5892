"""RandomCAM: the layer's activations under random channel weights — the control a CAM should
beat (pytorch-grad-cam's ``RandomCAM``), so that "the map highlights the object" can be checked
against what any weighting of the same feature maps already highlights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnviz.methods.base import register
from cnnviz.methods.cam import ActivationCAM, LayerPass


@register
class RandomCAM(ActivationCAM):
    """RandomCAM (pytorch-grad-cam's baseline; the model-independent-weights control of the
    sanity checks, Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

    w_k ~ U(−1, 1) independently per image, target and channel,   map = Σ_k w_k A^k.

    The weights come from NumPy's ``RandomState(seed)`` drawn as ``(T, N, K)``, so target ``t``
    gets exactly the weights of pytorch-grad-cam's ``t``-th call after ``np.random.seed(seed)``
    (tested). The global NumPy state is not touched. Example::

        >>> e = explain(model, x, "randomcam", layer="conv5_2", seed=3)
    """

    name = "randomcam"
    title = "RandomCAM"
    paper = "pytorch-grad-cam (a baseline)"
    summary = "Layer activations under random channel weights in [−1, 1] (a control)."

    def __init__(self, *, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        self.seed = seed

    def compute(
        self, model: nn.Module, x: torch.Tensor, layer: str, run: LayerPass
    ) -> torch.Tensor:
        A = run.activations
        (n, k), t = A.shape[:2], run.targets.per_image
        drawn = np.random.RandomState(self.seed).uniform(-1, 1, size=(t, n, k))
        weights = torch.from_numpy(drawn).to(A)
        return torch.einsum("tnk,nkhw->nthw", weights, A)
