"""``shapes_vgg11``: the seed's VGG-11 narrowed for 64×64 images, trained here on synthetic shapes.

It is cnnviz's offline demo model and the known ground truth its explanation methods are
measured against: the class is decided by the object alone (:mod:`cnnviz.data.shapes`), whose
exact mask and box are known, so a faithful map must point at the object.

The model is :class:`~cnnviz.models.vgg.VGG11` with ``batch_norm=True``, every width ÷ 8
(8 … 64 channels), global average pooling (``pool_size=1``: the class evidence may sit anywhere,
which also suits CAM methods) and two 256-unit hidden layers without dropout. It keeps the seed's
layer names (``conv1`` … ``conv5_2``, ``bn1`` … ``bn5_2``). Spatial sizes: 64 at ``conv1``, 32 at
``conv2``, 16 at ``conv3_*``, 8 at ``conv4_*``, 4 at ``conv5_*``.

It is trained on first use (60,000 fresh images, about 100 s of one CPU core; held-out accuracy
about 99 %) and cached as ``shapes_cache_dir()/shapes_vgg11-v<N>-<hash>.safetensors`` with a JSON
of metrics beside it; the hash covers the whole recipe and the data generator's parameters, so
changing either retrains. Example::

    from cnnviz.data.shapes import heldout_shapes
    from cnnviz.models.shapes_vgg11 import load_shapes_vgg11, normalize_shapes

    model = load_shapes_vgg11()
    batch = heldout_shapes(100)
    predicted = model(normalize_shapes(batch.images)).argmax(dim=1)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cnnviz.capture.forward import model_state_guard
from cnnviz.data.shapes import (
    HELDOUT_SEED,
    SHAPE_CLASSES,
    dataset_config,
    heldout_shapes,
    make_shapes,
)
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.models.trained_cache import cache_path, load_or_train, save_weights
from cnnviz.models.trained_cache import shapes_cache_dir as shapes_cache_dir  # re-exported
from cnnviz.models.vgg import VGG11
from cnnviz.progress import progress as progress_bar

logger = logging.getLogger(__name__)

SHAPES_PREPROCESSING = Preprocessing(
    input_size=(64, 64),
    crop_pct=1.0,
    interpolation="bilinear",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)
"""How an RGB image in [0, 1] becomes this model's input: 64×64, then ``(x - 0.5) / 0.5``."""

SHAPES_VGG11_VERSION = 1
"""Bumped by hand when the recipe changes in a way the hash cannot see (e.g. the training loop)."""

_MODEL_CONFIG: dict[str, Any] = {
    "width": 1 / 8,
    "hidden": 256,
    "pool_size": 1,
    "dropout": 0.0,
    "batch_norm": True,
}
_TRAIN_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "n_per_epoch": 6000,
    "epochs": 10,
    "batch_size": 16,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "num_threads": 1,
}
_N_HELDOUT = 1000  # images the recorded held-out accuracy is measured on
_EXPECTED_SECONDS = 100  # logged on first use: one thread of a 2-core laptop-class CPU


def build_shapes_vgg11() -> VGG11:
    """The untrained ``shapes_vgg11`` architecture (a :class:`VGG11`, seed layer names)."""
    return VGG11(num_classes=len(SHAPE_CLASSES), **_MODEL_CONFIG)


def normalize_shapes(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], ``(N, 3, 64, 64)``, normalised with :data:`SHAPES_PREPROCESSING`."""
    mean = torch.tensor(SHAPES_PREPROCESSING.mean, dtype=images.dtype, device=images.device)
    std = torch.tensor(SHAPES_PREPROCESSING.std, dtype=images.dtype, device=images.device)
    return (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def train_shapes_vgg11(
    *,
    seed: int = 0,
    n_per_epoch: int = 6000,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    num_threads: int | None = 1,
    n_heldout: int = _N_HELDOUT,
    progress: bool = True,
) -> tuple[VGG11, dict[str, float]]:
    """Train ``shapes_vgg11`` from scratch, deterministically for a given ``seed``.

    Each epoch draws fresh images, ``make_shapes(n_per_epoch, seed=1000 * seed + epoch)``, so the
    network never sees an image twice and cannot learn backgrounds by heart; ``seed`` must be in
    0–999, so training seeds stay below 1,000,000, far from
    :data:`~cnnviz.data.shapes.HELDOUT_SEED`. Weights are initialised from ``seed`` (inside
    ``torch.random.fork_rng``, so the caller's global RNG is untouched) and batches shuffled by a
    generator seeded with it. AdamW with a one-cycle learning rate (peak ``lr``), cross-entropy,
    no augmentation. ``progress`` shows a bar (:mod:`cnnviz.progress`).

    ``num_threads`` (default 1) is torch's thread count during training, restored afterwards:
    a fixed count makes the weights the same whatever the caller's setting (CPU float sums depend
    on how work is split among threads), and one thread is also the fastest on a busy machine.
    ``None`` keeps the current setting.

    Returns:
        The model in eval mode and its metrics: ``heldout_accuracy`` (on ``n_heldout`` images),
        ``seconds`` and ``cpu_seconds`` (data generation and training), ``threads``, ``n_train``
        (distinct training images, ``epochs * n_per_epoch``), ``epochs`` and ``final_loss`` (the
        last epoch's mean).
    """
    return train_vgg11(
        _fresh_shapes(seed, n_per_epoch),
        lambda model: {"heldout_accuracy": heldout_accuracy(model, n_heldout)},
        seed=seed,
        n_per_epoch=n_per_epoch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        num_threads=num_threads,
        progress=progress,
    )


def train_vgg11(
    epoch_data: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    evaluate: Callable[[VGG11], dict[str, float]],
    *,
    seed: int,
    n_per_epoch: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    num_threads: int | None,
    progress: bool,
    desc: str = "shapes_vgg11",
    initialise: Callable[[VGG11], None] | None = None,
) -> tuple[VGG11, dict[str, float]]:
    """Train a fresh :func:`build_shapes_vgg11` on ``epoch_data`` with :func:`fit`, seeded.

    The shared recipe of the models cnnviz trains for 64×64 shapes (``shapes_vgg11`` and
    :mod:`cnnviz.models.shapes_watermark`): ``seed`` in 0–999 initialises the weights (inside
    ``torch.random.fork_rng``) and seeds the shuffling; ``num_threads`` as in
    :func:`train_shapes_vgg11`. ``evaluate(model)`` gives the first metrics (e.g. held-out
    accuracy), measured after training; then ``seconds``, ``cpu_seconds``, ``threads``,
    ``n_train``, ``epochs`` and ``final_loss`` are added. ``initialise(model)``, if given, may
    replace some of the seeded initial weights (e.g. with trained ones) before training.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 1000:
        raise ValueError(f"seed must be in 0–999 (held-out data uses {HELDOUT_SEED}), got {seed}")
    if n_per_epoch < batch_size or epochs < 1 or batch_size < 2:
        raise ValueError(
            f"Need n_per_epoch >= batch_size >= 2 and epochs >= 1, got n_per_epoch={n_per_epoch}, "
            f"batch_size={batch_size}, epochs={epochs}"
        )
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
    with torch.random.fork_rng(devices=[]), _torch_threads(num_threads):
        start, start_cpu = time.perf_counter(), time.process_time()
        torch.manual_seed(seed)
        model = build_shapes_vgg11()
        if initialise is not None:
            initialise(model)
        final_loss = fit(
            model,
            epoch_data,
            n_per_epoch=n_per_epoch,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            shuffle=torch.Generator().manual_seed(seed),
            progress=progress,
            desc=desc,
        )
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        metrics = {
            **evaluate(model),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "threads": float(torch.get_num_threads()),
            "n_train": float(epochs * n_per_epoch),
            "epochs": float(epochs),
            "final_loss": final_loss,
        }
    return model, metrics


def fit(
    model: torch.nn.Module,
    epoch_data: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    *,
    n_per_epoch: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    shuffle: torch.Generator,
    progress: bool = False,
    desc: str = "shapes_vgg11",
) -> float:
    """Train ``model`` with AdamW and a one-cycle schedule (25 % warm-up) on cross-entropy.

    ``epoch_data(epoch)`` gives that epoch's ``n_per_epoch`` ``(inputs, labels)``; each epoch
    visits them in the order ``torch.randperm(n_per_epoch, generator=shuffle)``, in batches of
    ``batch_size`` (the last partial batch is dropped: BatchNorm wants more than one image).
    ``progress`` draws a bar over the batches (:mod:`cnnviz.progress`), described by ``desc``.
    Leaves ``model`` in eval mode and returns the last epoch's mean loss. The one training loop
    of ``shapes_vgg11`` and of the sanity checks' random-label model
    (:mod:`cnnviz.runs.randomization`).
    """
    steps = n_per_epoch // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.25
    )
    model.train()
    final_loss = math.nan
    with progress_bar(epochs * steps, desc, "batch", show=progress) as bar:
        for epoch in range(epochs):
            inputs, labels = epoch_data(epoch)
            order = torch.randperm(n_per_epoch, generator=shuffle)
            total = 0.0
            for step in range(steps):
                index = order[step * batch_size : (step + 1) * batch_size]
                loss = F.cross_entropy(model(inputs[index]), labels[index])
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                schedule.step()
                total += float(loss.detach())
                bar.update(1)
            final_loss = total / steps
            bar.note(f"epoch {epoch + 1}/{epochs}, loss={final_loss:.3f}")
    model.eval()
    return final_loss


def _fresh_shapes(
    seed: int, n_per_epoch: int
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """Epoch ``e``'s data for :func:`fit`: ``n_per_epoch`` new shapes, seed ``1000·seed + e``."""

    def epoch_data(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = make_shapes(n_per_epoch, seed=1000 * seed + epoch)
        return normalize_shapes(data.images), data.labels

    return epoch_data


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)`` (unchanged for ``None``)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count is not None:
            torch.set_num_threads(previous)


@torch.no_grad()
def heldout_accuracy(model: torch.nn.Module, n: int = _N_HELDOUT) -> float:
    """Top-1 accuracy of ``model`` on ``heldout_shapes(n)``, run in eval mode (each module's
    ``training`` flag restored afterwards)."""
    batch = heldout_shapes(n)
    with model_state_guard(model):
        logits = torch.cat([model(normalize_shapes(x)) for x in torch.split(batch.images, 250)])
    return float((logits.argmax(dim=1) == batch.labels).float().mean())


def recipe() -> dict[str, Any]:
    """Everything that determines the cached weights (hashed into the file name)."""
    return {
        "version": SHAPES_VGG11_VERSION,
        "data": dataset_config(),
        "model": dict(_MODEL_CONFIG),
        "train": dict(_TRAIN_DEFAULTS),
    }


def shapes_vgg11_path(cache_dir: Path | None = None) -> Path:
    """The weights file for the current recipe (it may not exist yet)."""
    return cache_path("shapes_vgg11", SHAPES_VGG11_VERSION, recipe(), cache_dir)


def load_shapes_vgg11(cache_dir: Path | None = None, *, retrain: bool = False) -> VGG11:
    """The trained ``shapes_vgg11`` in eval mode, trained and cached on first use.

    Safe to call from several processes at once: one trains under a lock file, the others wait
    and then load its result; files are written to a temporary name and renamed
    (:mod:`cnnviz.models.trained_cache`).

    Args:
        cache_dir: folder of the cache (default :func:`shapes_cache_dir`).
        retrain: train again and overwrite the cached file.

    Raises:
        CheckpointError: the cached file exists but cannot be read or does not fit the model.
    """
    return load_or_train(
        shapes_vgg11_path(cache_dir),
        name="shapes_vgg11",
        recipe=recipe(),
        build=build_shapes_vgg11,
        train=lambda: train_shapes_vgg11(**_TRAIN_DEFAULTS),
        retrain=retrain,
        expected_seconds=_EXPECTED_SECONDS,
    )


def _save(model: VGG11, metrics: dict[str, float], path: Path) -> None:
    """Cache ``model`` at ``path`` as ``shapes_vgg11`` with the current recipe."""
    save_weights(model, metrics, path, name="shapes_vgg11", recipe=recipe())
