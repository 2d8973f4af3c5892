"""The optimisation loop of feature visualisation: Adam on a parameterised image, through the moves.

Each step (Olah, Mordvintsev & Schubert, Distill 2017):

    x = param()                       the image in [0, 1]            (features.parameterisation)
    x̃ = T_step(x)                     random moves, one per image    (features.transforms)
    s = objective(model((x̃ − μ) / σ)) a score per image             (features.objectives)
    θ ← Adam(θ, ∇_θ −Σ_b s_b)         learning rate 0.05 by default

The model runs through :class:`~cnnviz.capture.hooks.LayerCapture`, so it is left exactly as
found (hooks removed, modes restored, parameters' ``.grad`` untouched: gradients are taken with
``torch.autograd.grad`` to the model's input and then to the image's own parameters). When the
objective reads only layers, the forward pass stops after the last of them. The images are kept
at the chosen steps (``thresholds``); a non-finite objective or gradient stops the run at that
step and keeps the last finite image; Ctrl-C stops it and keeps the images so far. An image
whose unit is dead on its near-grey start (score and gradient exactly zero) is drawn again with
more contrast at steps 1, 4 and 16.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.capture.forward import model_device
from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.layers import LayerRef, resolve_layer
from cnnviz.errors import ArgumentError
from cnnviz.featurevis.objectives import Objective, Probe
from cnnviz.featurevis.parameterisation import FourierImage, PixelImage
from cnnviz.featurevis.transforms import RobustnessTransforms
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.progress import progress

logger = logging.getLogger(__name__)

DEFAULT_STEPS = 512
DEFAULT_LEARNING_RATE = 0.05
RESTART_AT = (1, 4, 16)
"""At these steps, an image whose unit is dead (score and gradient exactly 0) is drawn again
with ``RESTART_FACTOR`` times the contrast (at most 27 times Lucid's, after three restarts)."""
RESTART_FACTOR = 3.0


@dataclass(frozen=True)
class OptimisedImages:
    """What a run produced.

    Attributes:
        images: ``(B, C, H, W)`` in [0, 1], the last finite images (CPU, float32).
        snapshots: the images at each threshold step reached, by step.
        scores: the objective per image at the last step taken, before the moves' randomness
            is averaged out (the score of the moved image the optimiser saw).
        steps: steps completed.
        stopped: why the run ended early (``None`` when it ran every step).
    """

    images: torch.Tensor
    snapshots: dict[int, torch.Tensor]
    scores: torch.Tensor
    steps: int
    stopped: str | None = None

    @property
    def interrupted(self) -> bool:
        return self.stopped is not None and self.stopped.startswith("interrupted")


def normaliser(prep: Preprocessing, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x ↦ (x − mean) / std`` with the model's preprocessing, per channel."""
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


def resolve_objective_layers(module: nn.Module, objective: Objective) -> dict[LayerRef, str]:
    """Each layer reference of ``objective`` as the dotted name it names in ``module``."""
    return {ref: resolve_layer(module, ref) for ref in objective.layers}


def check_thresholds(thresholds: Sequence[int], steps: int) -> tuple[int, ...]:
    kept = tuple(sorted({int(t) for t in thresholds}))
    if any(t < 1 or t > steps for t in kept):
        raise ArgumentError(
            f"thresholds must be steps between 1 and {steps}, got {list(thresholds)}"
        )
    return kept


def optimise(
    module: nn.Module,
    objective: Objective,
    image: FourierImage | PixelImage,
    prep: Preprocessing,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LEARNING_RATE,
    thresholds: Sequence[int] = (),
    transforms: RobustnessTransforms | None = None,
    generator: torch.Generator,
    desc: str = "features",
) -> OptimisedImages:
    """Maximise ``objective`` over the parameters of ``image`` (a parameterisation module).

    Args:
        module: the model, left as found.
        objective: the score per image to maximise.
        image: ``image()`` gives the ``(B, C, H, W)`` batch in [0, 1] (features.parameterisation).
        prep: the model's preprocessing (its mean and std normalise the image).
        steps: Adam steps.
        lr: Adam's learning rate.
        thresholds: steps at which to keep the images (the last step is always kept).
        transforms: the random moves (``None``: none).
        generator: draws the moves.
        desc: the progress bar's label.
    """
    if steps < 1:
        raise ArgumentError(f"steps must be at least 1, got {steps}")
    if not math.isfinite(lr) or lr <= 0:
        raise ArgumentError(f"lr must be a positive number, got {lr}")
    kept = set(check_thresholds(thresholds, steps)) | {steps}
    device = model_device(module)
    image = image.to(device)
    names = resolve_objective_layers(module, objective)
    normalise = normaliser(prep, device)
    params = [p for p in image.parameters() if p.requires_grad]
    adam = torch.optim.Adam(params, lr=lr)
    snapshots: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        last = image().detach()
    scores = torch.full((last.shape[0],), float("nan"))
    done, stopped = 0, None
    capture = LayerCapture(
        module,
        list(dict.fromkeys(names.values())),
        grad=GradFrom.INPUT,
        stop_after_layers=not objective.needs_logits,
    )
    with (
        capture,
        torch.inference_mode(False),
        torch.enable_grad(),
        progress(steps, desc, "step") as bar,
    ):
        try:
            for step in range(1, steps + 1):
                x = image()
                moved = transforms(x, generator) if transforms is not None else x
                model_input = normalise(moved)
                logits = capture.forward(model_input.detach())
                probe = Probe(x, capture.activations, logits, names)
                values = objective.value(probe)
                if values.shape != (x.shape[0],):
                    raise ArgumentError(
                        f"the objective gave a score of shape {tuple(values.shape)}; expected "
                        f"one per image, ({x.shape[0]},)"
                    )
                loss = -values.sum()
                if not torch.isfinite(loss):
                    stopped = f"the objective became non-finite at step {step}"
                    break
                grads = _parameter_grads(loss, capture.input, model_input, params)
                if not all(torch.isfinite(g).all() for g in grads):
                    stopped = f"the gradient became non-finite at step {step}"
                    break
                last, scores = x.detach(), values.detach()
                done = step
                if step in RESTART_AT:
                    _restart_dead(image, values.detach(), grads, generator)
                if step in kept:
                    snapshots[step] = last.cpu().float()
                for param, grad in zip(params, grads, strict=True):
                    param.grad = grad
                adam.step()
                bar.update()
        except KeyboardInterrupt:
            stopped = f"interrupted at step {done + 1}"
    if stopped is not None:
        logger.warning(
            "Feature visualisation stopped early: %s; keeping the images of step %d.", stopped, done
        )
        if done and done not in snapshots:
            snapshots[done] = last.cpu().float()
    return OptimisedImages(last.cpu().float(), snapshots, scores.cpu().float(), done, stopped)


def _parameter_grads(
    loss: torch.Tensor,
    fed: torch.Tensor | None,
    model_input: torch.Tensor,
    params: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """∇ of ``loss`` with respect to ``params``: through the model to its input ``fed`` (a leaf
    copy of ``model_input``), then through the moves and the parameterisation; plus any direct
    dependence of ``loss`` on the image (the regularisers)."""
    if fed is None or not fed.requires_grad:
        raise RuntimeError("the capture did not record the model's input")
    (to_input,) = torch.autograd.grad(loss, fed, retain_graph=True, allow_unused=True)
    if to_input is None:
        to_input = torch.zeros_like(model_input)
    grads = torch.autograd.grad(
        [loss, model_input],
        list(params),
        grad_outputs=[torch.ones_like(loss), to_input],
        allow_unused=True,
    )
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _restart_dead(
    image: FourierImage | PixelImage,
    values: torch.Tensor,
    grads: Sequence[torch.Tensor],
    generator: torch.Generator,
) -> None:
    """Draw again the images whose score and gradient are exactly zero (a dead unit)."""
    flat = torch.cat([g.flatten(1) for g in grads], dim=1)
    dead = (values == 0) & (flat.abs().amax(dim=1) == 0)
    if bool(dead.any()):
        logger.debug("Restarting %d image(s) whose unit is dead on the start.", int(dead.sum()))
        image.restart(dead.cpu(), generator, RESTART_FACTOR)
