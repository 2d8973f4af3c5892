"""The synthetic shapes dataset (ground truth) and the shapes_vgg11 model trained on it."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.capture.hooks import LayerCapture
from cnnviz.capture.layers import resolve_layer
from cnnviz.data.shapes import (
    AREA_FRACTION,
    HELDOUT_SEED,
    SHAPE_CLASSES,
    ShapesBatch,
    heldout_shapes,
    make_shapes,
    mask_boxes,
)
from cnnviz.errors import CheckpointError
from cnnviz.models import shapes_vgg11 as shapes_model
from cnnviz.models.shapes_vgg11 import (
    SHAPES_PREPROCESSING,
    build_shapes_vgg11,
    heldout_accuracy,
    load_shapes_vgg11,
    normalize_shapes,
    shapes_cache_dir,
    shapes_vgg11_path,
)
from cnnviz.models.vgg import VGG11


@pytest.fixture(scope="session")
def shapes_vgg11() -> VGG11:
    """The trained model from the cache (trained there on first use, ~1 min on 2 cores)."""
    return load_shapes_vgg11()


@pytest.fixture(scope="module")
def batch() -> ShapesBatch:
    return make_shapes(300, seed=7)


# -- the dataset -------------------------------------------------------------------------------


def test_same_seed_gives_identical_tensors_and_another_seed_does_not() -> None:
    a, b, c = make_shapes(40, seed=5), make_shapes(40, seed=5), make_shapes(40, seed=6)
    for field in ("images", "labels", "masks", "boxes"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.masks, c.masks)
    assert (a.images - c.images).abs().mean() > 0.1


def test_types_shapes_and_range(batch: ShapesBatch) -> None:
    assert batch.images.shape == (300, 3, 64, 64)
    assert batch.images.dtype == torch.float32
    assert batch.labels.shape == (300,)
    assert batch.labels.dtype == torch.int64
    assert batch.masks.shape == (300, 64, 64)
    assert batch.masks.dtype == torch.bool
    assert batch.boxes.shape == (300, 4)
    assert batch.boxes.dtype == torch.int64
    assert float(batch.images.min()) >= 0.0
    assert float(batch.images.max()) <= 1.0
    assert len(batch) == 300
    small = make_shapes(3, seed=0, size=40)
    assert small.images.shape == (3, 3, 40, 40)
    assert small.masks.shape == (3, 40, 40)


def test_heldout_is_the_heldout_seed() -> None:
    a, b = heldout_shapes(12), make_shapes(12, seed=HELDOUT_SEED)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)


def test_classes_are_balanced() -> None:
    labels = make_shapes(601, seed=1).labels
    counts = torch.bincount(labels, minlength=len(SHAPE_CLASSES))
    assert len(SHAPE_CLASSES) >= 4
    assert len(set(SHAPE_CLASSES)) == len(SHAPE_CLASSES)
    assert counts.tolist() == [101] + [100] * (len(SHAPE_CLASSES) - 1)
    # Shuffled, not in blocks: consecutive labels differ most of the time.
    assert float((labels[1:] != labels[:-1]).float().mean()) > 0.7


def test_each_box_is_the_tight_box_of_its_mask(batch: ShapesBatch) -> None:
    for mask, box in zip(batch.masks, batch.boxes, strict=True):
        ys, xs = mask.nonzero(as_tuple=True)
        expected = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        assert box.tolist() == expected


def test_mask_boxes_by_hand() -> None:
    masks = torch.zeros(3, 8, 10, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True  # rows 2–4, columns 3–8
    masks[1, 7, 0] = True
    assert mask_boxes(masks).tolist() == [[3, 2, 9, 5], [0, 7, 1, 8], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="N, H, W"):
        mask_boxes(masks[0])


def test_masks_are_non_empty_and_objects_cover_the_stated_fraction(batch: ShapesBatch) -> None:
    area = batch.masks.float().mean(dim=(1, 2))
    lo, hi = AREA_FRACTION
    assert float(area.min()) >= 0.9 * lo
    assert float(area.max()) <= 1.1 * hi
    # The intended areas are uniform on AREA_FRACTION: the mean sits in the middle.
    assert abs(float(area.mean()) - (lo + hi) / 2) < 0.005
    x0, y0, x1, y1 = batch.boxes.unbind(1)
    box = ((x1 - x0) * (y1 - y0)).float() / 64**2
    assert float(box.min()) >= 0.9 * lo
    assert float(box.max()) <= 0.3


def test_masks_are_exactly_the_painted_pixels(batch: ShapesBatch) -> None:
    """One flat colour plus noise (σ ≤ 0.05) on the mask; a different colour just outside it."""
    images, masks = batch.images, batch.masks.unsqueeze(1)
    weight = masks.float()
    count = weight.sum(dim=(2, 3))
    mean = (images * weight).sum(dim=(2, 3)) / count
    var = (((images - mean[..., None, None]) ** 2) * weight).sum(dim=(2, 3)) / count
    assert float(var.sqrt().max()) < 0.065
    ring = (F.max_pool2d(weight, kernel_size=3, stride=1, padding=1) > 0) & ~masks
    distance = (images - mean[..., None, None]).abs().amax(dim=1, keepdim=True)
    outside = (distance * ring).sum(dim=(1, 2, 3)) / ring.sum(dim=(1, 2, 3))
    assert float(outside.median()) > 0.25


def test_class_geometry(batch: ShapesBatch) -> None:
    """Circles fill π/4 of their box; rings π/4·(1 − 0.55²) and have a hole at the centre."""
    x0, y0, x1, y1 = batch.boxes.unbind(1)
    fill = batch.masks.float().sum(dim=(1, 2)) / ((x1 - x0) * (y1 - y0)).float()
    circle = batch.labels == SHAPE_CLASSES.index("circle")
    ring = batch.labels == SHAPE_CLASSES.index("ring")
    assert (fill[circle] - math.pi / 4).abs().max() < 0.12
    assert (fill[ring] - math.pi / 4 * (1 - 0.55**2)).abs().max() < 0.06
    centre = batch.masks[torch.arange(len(batch)), (y0 + y1) // 2, (x0 + x1) // 2]
    assert bool(centre[circle].all())
    assert not bool(centre[ring].any())


def test_objects_are_spread_over_the_image() -> None:
    """Pointing at the image centre must be a weak localisation baseline."""
    b = heldout_shapes(500)
    x0, y0, x1, y1 = (b.boxes[:, i] for i in range(4))
    hits = (x0 - 4 <= 32) & (x1 + 4 > 32) & (y0 - 4 <= 32) & (y1 + 4 > 32)
    assert float(hits.float().mean()) < 0.45  # measured 0.41 on 500 images


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n must be"):
        make_shapes(-1, seed=0)
    with pytest.raises(TypeError, match="n must be an int"):
        make_shapes(2.0, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        make_shapes(2, seed=0, size=16)
    assert make_shapes(0, seed=0).images.shape == (0, 3, 64, 64)


# -- the model ---------------------------------------------------------------------------------


def test_architecture_keeps_the_seed_names_and_sizes() -> None:
    torch.manual_seed(0)
    model = build_shapes_vgg11()
    assert resolve_layer(model, "conv1") == "backbone.conv1"
    assert resolve_layer(model, "bn4_1") == "backbone.bn4_1"
    assert resolve_layer(model, "bn5_2") == "backbone.bn5_2"
    assert model.backbone.conv1.out_channels == 8
    assert model.backbone.conv5_2.out_channels == 64
    x = torch.rand(2, 3, 64, 64)
    with LayerCapture(model, ["bn4_1", "bn5_2"]) as cap:
        logits = cap.forward(x)
    assert logits.shape == (2, len(SHAPE_CLASSES))
    assert cap.activations["backbone.bn4_1"].shape == (2, 64, 8, 8)
    assert cap.activations["backbone.bn5_2"].shape == (2, 64, 4, 4)


def test_preprocessing_matches_normalize() -> None:
    assert SHAPES_PREPROCESSING.input_size == (64, 64)
    assert SHAPES_PREPROCESSING.crop_pct == 1.0
    x = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert normalize_shapes(x)[0, :, 0, 0].tolist() == [-1.0, -0.5, 1.0]


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CNNVIZ_CACHE", str(tmp_path))
    assert shapes_cache_dir() == tmp_path
    assert shapes_vgg11_path().parent == tmp_path
    monkeypatch.delenv("CNNVIZ_CACHE")
    assert shapes_cache_dir() == Path.home() / ".cache" / "cnnviz"
    name = shapes_vgg11_path(tmp_path).name
    assert name.startswith(f"shapes_vgg11-v{shapes_model.SHAPES_VGG11_VERSION}-")
    assert re.fullmatch(r"shapes_vgg11-v\d+-[0-9a-f]{10}\.safetensors", name)


def test_the_suite_caches_in_its_session_folder_not_the_home_cache(session_cache: Any) -> None:
    """conftest points ``CNNVIZ_CACHE`` at the session folder before cnnviz is imported."""
    path = shapes_vgg11_path()
    assert path.parent == shapes_cache_dir() == session_cache.path
    assert Path(os.environ["CNNVIZ_CACHE"]).expanduser() == session_cache.path
    if not session_cache.set_by_caller:  # else the caller's own folder is kept, wherever it is
        checkout = Path(__file__).resolve().parents[1]
        assert session_cache.path == session_cache.default == checkout / "build" / "test-cache"
        assert not path.is_relative_to(Path.home() / ".cache")
        assert Path(os.environ["MPLCONFIGDIR"]) == session_cache.path / "matplotlib"


def test_save_and_load_round_trip_and_a_corrupt_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_shapes_vgg11().eval()
    path = shapes_vgg11_path(tmp_path)
    shapes_model._save(model, {"heldout_accuracy": 0.5}, path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    loaded = load_shapes_vgg11(tmp_path)  # exists: loaded, not trained
    x = normalize_shapes(make_shapes(4, seed=2).images)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert json.loads(path.with_suffix(".json").read_text())["metrics"]["heldout_accuracy"] == 0.5
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="retrain=True"):
        load_shapes_vgg11(tmp_path)


def test_training_is_deterministic_and_leaves_global_state_alone() -> None:
    kwargs = {"n_per_epoch": 64, "epochs": 1, "batch_size": 32, "n_heldout": 60, "progress": False}
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    a, metrics = shapes_model.train_shapes_vgg11(seed=3, **kwargs)
    b, _ = shapes_model.train_shapes_vgg11(seed=3, **kwargs)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert not a.training
    assert metrics["n_train"] == 64
    assert metrics["threads"] == 1
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="0–999"):
        shapes_model.train_shapes_vgg11(seed=HELDOUT_SEED)


def test_cache_key_covers_the_training_defaults() -> None:
    """The defaults of train_shapes_vgg11 are the recipe that is hashed into the file name."""
    signature = inspect.signature(shapes_model.train_shapes_vgg11)
    recipe = shapes_model.recipe()
    for name, value in recipe["train"].items():
        assert signature.parameters[name].default == value, name
    assert recipe["data"]["area_fraction"] == list(AREA_FRACTION)


def test_concurrent_first_use_trains_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[int] = []

    def fake_train(**_kwargs: object) -> tuple[VGG11, dict[str, float]]:
        calls.append(1)
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        torch.manual_seed(len(calls))
        return build_shapes_vgg11().eval(), {"heldout_accuracy": 0.0, "seconds": 0.3}

    monkeypatch.setattr(shapes_model, "train_shapes_vgg11", fake_train)
    with ThreadPoolExecutor(max_workers=2) as pool:
        models = list(pool.map(lambda _: load_shapes_vgg11(tmp_path), range(2)))
    assert len(calls) == 1
    x = normalize_shapes(make_shapes(2, seed=0).images)
    with torch.no_grad():
        assert torch.equal(models[0](x), models[1](x))


def test_trained_model_is_accurate_on_heldout_shapes(shapes_vgg11: VGG11) -> None:
    assert not any(m.training for m in shapes_vgg11.modules())
    b = heldout_shapes(600)
    with torch.no_grad():
        predicted = shapes_vgg11(normalize_shapes(b.images)).argmax(dim=1)
    accuracy = float((predicted == b.labels).float().mean())
    assert accuracy >= 0.95
    # Every class is recognised, not just most images.
    for c in range(len(SHAPE_CLASSES)):
        assert float((predicted[b.labels == c] == c).float().mean()) >= 0.85, SHAPE_CLASSES[c]


def test_cached_file_reloads_to_identical_logits(shapes_vgg11: VGG11) -> None:
    path = shapes_vgg11_path()
    assert path.exists()
    again = load_shapes_vgg11()
    assert again is not shapes_vgg11
    x = normalize_shapes(heldout_shapes(32).images)
    with torch.no_grad():
        assert torch.equal(shapes_vgg11(x), again(x))
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["recipe"] == shapes_model.recipe()
    # The accuracy recorded by the training process is exactly what this process measures on
    # the weights from disk: data and weights are bit-identical across processes.
    assert info["metrics"]["heldout_accuracy"] == heldout_accuracy(again, 1000) >= 0.95


_FINGERPRINT = """
import hashlib
from cnnviz.data.shapes import heldout_shapes
from cnnviz.models.shapes_vgg11 import train_shapes_vgg11
b = heldout_shapes(100)
model, _ = train_shapes_vgg11(
    seed=3, n_per_epoch=64, epochs=1, batch_size=32, n_heldout=20, progress=False
)
data = hashlib.sha256(b.images.numpy().tobytes() + b.masks.numpy().tobytes()).hexdigest()
weights = hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.state_dict().values()))
print(data, weights.hexdigest())
"""


def test_data_and_training_are_bit_identical_across_processes() -> None:
    """Two fresh processes, one with 2 intra-op threads and one with 1, produce the same
    held-out images and the same trained weights (training pins itself to one thread)."""
    runs = [
        subprocess.run(
            [sys.executable, "-c", _FINGERPRINT],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": threads},
        ).stdout.split()
        for threads in ("1", "2")
    ]
    assert runs[0] == runs[1]
    assert len(runs[0]) == 2 and all(len(h) == 64 for h in runs[0])


def _inpaint(images: torch.Tensor, region: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """Fill ``region`` (N, 1, H, W) smoothly from its border by repeated 3×3 averaging."""
    out = images.clone()
    for _ in range(steps):
        smooth = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        out = torch.where(region, smooth, out)
    return out


def test_trained_model_depends_on_the_object(shapes_vgg11: VGG11) -> None:
    """Inpainting the object away leaves chance (1/6); inpainting the same silhouette moved
    elsewhere in the image leaves the prediction."""
    b = heldout_shapes(120)
    mask = b.masks.unsqueeze(1)
    moved = mask.roll(shifts=(32, 32), dims=(2, 3))
    near = F.max_pool2d(mask.float(), kernel_size=9, stride=1, padding=4) > 0
    apart = ~(moved & near).flatten(1).any(dim=1)  # the moved silhouette misses the object
    model: nn.Module = shapes_vgg11
    with torch.no_grad():
        p = [
            model(normalize_shapes(x)).softmax(dim=1).gather(1, b.labels[:, None]).squeeze(1)
            for x in (b.images, _inpaint(b.images, mask), _inpaint(b.images, moved))
        ]
    assert int(apart.sum()) > 60
    assert float(p[0].mean()) > 0.9
    assert float(p[1].mean()) < 0.35
    assert float(p[2][apart].mean()) > 0.8
