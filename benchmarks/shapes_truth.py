"""Known-truth benchmark: every registered method on the held-out synthetic shapes.

Regenerates ``docs/shapes-benchmark.md``::

    .venv/bin/python benchmarks/shapes_truth.py

For every method in the registry (CAM methods at their default layer and at the conv4 block's
output, ``backbone.relu4_2``, 8×8) plus three reference maps (a Gaussian at the image
centre, uniform noise per pixel, uniform noise on a 4×4 grid upsampled like a CAM), on
``heldout_shapes(N)`` (64×64, never used in training; N = 100 by default), explaining each
image's true class:

* pointing game against the exact object mask, tolerance 4 px (the papers' 15 px at 224 px,
  scaled to 64 px), and energy pointing game (share of positive map mass on the mask);
* deletion and insertion AUC (RISE protocol: ``--steps`` steps, deletion to zeros of the
  normalised input, i.e. mid-grey; insertion into the 11×11, σ = 5 blur; trapezoid AUC);
* full-depth cascading randomisation: Spearman rank correlation of ``|map|`` between the trained
  model and a copy with every layer re-initialised (``reset_parameters``), mean over images.

The numbers depend only on the cached ``shapes_vgg11`` weights, the seeds and the torch version.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CONV4 = "backbone.relu4_2"
TOLERANCE = 4.0
REFERENCES = ("centre-map", "random-map", "coarse-random-map")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def score(
    model: torch.nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    batch_size: int,
) -> dict[str, float]:
    """Localisation and faithfulness means of ``(N, H, W)`` maps."""
    from cnnviz.metrics import faithfulness as fa
    from cnnviz.metrics import localisation as lo

    pointing = lo.pointing_game(maps, masks, tolerance=TOLERANCE).hits.float()
    energy = lo.energy_pointing_game(maps, masks)
    target = labels.tolist()
    deletion = fa.deletion(model, x, maps, target=target, steps=steps, batch_size=batch_size)
    insertion = fa.insertion(model, x, maps, target=target, steps=steps, batch_size=batch_size)
    finite = energy[torch.isfinite(energy)]
    return {
        "pointing": float(pointing.mean()),
        "energy": float(finite.mean()) if finite.numel() else math.nan,
        "deletion": float(deletion.auc.mean()),
        "insertion": float(insertion.auc.mean()),
    }


def explain_maps(
    model: torch.nn.Module,
    x: torch.Tensor,
    method: str,
    layer: str | None,
    labels: torch.Tensor,
    chunk: int,
) -> tuple[torch.Tensor, str | None]:
    """Rectified input-resolution maps for all images, explained in chunks."""
    from cnnviz.api import explain
    from cnnviz.metrics.faithfulness import relevance_maps

    maps, used = [], None
    for start in range(0, x.shape[0], chunk):
        part = slice(start, start + chunk)
        e = explain(model, x[part], method, layer=layer, target=labels[part].tolist())
        maps.append(relevance_maps(e))
        used = e.layer
    return torch.cat(maps), used


def spearman_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the Spearman correlation of |a| and |b| (NaNs skipped)."""
    from cnnviz.methods.postprocess import Display
    from cnnviz.metrics.sanity import similarity

    values = [
        similarity(a[i], b[i], Display.ABSOLUTE, ("spearman_abs",))["spearman_abs"]
        for i in range(a.shape[0])
    ]
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def run(
    n: int, steps: int, batch_size: int, chunk: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every configuration's row, and facts for the header."""
    from cnnviz.api import default_layer
    from cnnviz.data.shapes import heldout_shapes
    from cnnviz.methods.registry import get_method, method_names
    from cnnviz.metrics.localisation import reference_map
    from cnnviz.models import load_model
    from cnnviz.models.shapes_vgg11 import heldout_accuracy, normalize_shapes
    from cnnviz.runs.randomization import randomization_groups, randomized_copy

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    loaded = load_model("shapes_vgg11")
    model = loaded.module
    batch = heldout_shapes(n)
    x = normalize_shapes(batch.images)
    labels, masks = batch.labels, batch.masks
    default = default_layer(model, x[:1])
    groups = randomization_groups(model, x[:1])
    random_model = randomized_copy(model, groups, seed=seed)
    configs: list[tuple[str, str | None]] = []
    for name in method_names():
        if get_method(name).needs_layer:
            configs += [(name, default), (name, CONV4)]
        else:
            configs.append((name, None))
    rows = []
    for name, layer in configs:
        start = time.perf_counter()
        row: dict[str, Any] = {"method": name, "layer": layer or "input"}
        try:
            maps, used = explain_maps(model, x, name, layer, labels, chunk)
            explain_seconds = time.perf_counter() - start
            row.update(score(model, x, maps, masks, labels, steps, batch_size))
            random_maps, _ = explain_maps(random_model, x, name, used, labels, chunk)
            row["randomised"] = spearman_abs(maps, random_maps)
            row["layer"] = used or "input"
            row["explain_ms"] = 1000.0 * explain_seconds / n
        except Exception as e:  # a method that cannot run here gets a row saying why
            row["error"] = f"{type(e).__name__}: {str(e).split(';')[0]}".splitlines()[0]
        logging.info("%s @ %s: %.0f s", name, row["layer"], time.perf_counter() - start)
        rows.append(row)
    for name in REFERENCES:
        maps = torch.stack([reference_map(name, (64, 64), i, seed) for i in range(n)])
        rows.append(
            {
                "method": name,
                "layer": "—",
                "randomised": math.nan,
                "explain_ms": 0.0,
                **score(model, x, maps, masks, labels, steps, batch_size),
            }
        )
    facts = {
        "default_layer": default,
        "accuracy": heldout_accuracy(model, 1000),
        "weights": loaded.weights,
        "groups": len(groups),
        "load": load,
    }
    return rows, facts


def _cell(value: float, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(
    rows: Sequence[dict[str, Any]], facts: dict[str, Any], args: argparse.Namespace, seconds: float
) -> str:
    """The docs page."""
    from cnnviz.data.shapes import AREA_FRACTION

    lo, hi = AREA_FRACTION
    command = "python benchmarks/shapes_truth.py" + "".join(
        f" --{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k != "out" and v != DEFAULTS[k]
    )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Known-truth benchmark: explanation methods on held-out synthetic shapes",
        "",
        f"`{command}` — {date}; CPU: {cpu_model()}; torch threads: {torch.get_num_threads()}; "
        f"torch {torch.__version__}; Python {platform.python_version()}; "
        f"{os.cpu_count()} logical CPUs, load average {facts['load']:.1f} at the start "
        f"(other work on the machine slows the timings); total run time {seconds:.0f} s.",
        "",
        f"Model `shapes_vgg11` ({facts['weights']}), held-out accuracy "
        f"{100 * facts['accuracy']:.1f} % on 1,000 images. {args.images} held-out 64×64 images "
        "(`heldout_shapes`), each explained for its **true** class. Generated by the command "
        "above; do not edit by hand.",
        "",
        f"* **pointing**: pointing game on the exact object mask, tolerance {TOLERANCE:g} px "
        "(the papers' 15 px at 224 px, scaled to 64 px); higher is better.",
        "* **energy**: energy pointing game, share of positive map mass on the object mask "
        f"(the objects cover {lo:.0%}–{hi:.0%} of the image); higher is better.",
        f"* **deletion ↓ / insertion ↑**: RISE AUC, {args.steps} steps, deletion to zeros of the "
        "normalised input (mid-grey), insertion into the blurred image (11×11, σ = 5), "
        "class probability after softmax, trapezoid rule over the pixel fraction [0, 1].",
        f"* **randomised ↓**: Spearman rank correlation of |map| between the trained model and "
        f"a copy whose {facts['groups']} layer groups are all re-initialised (full-depth "
        "cascading randomisation, Adebayo et al. 2018); near 0 means the map depends on the "
        "weights, as it should. Not defined for the reference maps.",
        f"* **layer**: CAM methods at their default layer (`{facts['default_layer']}`, 4×4) and at "
        f"the conv4 block's output (`{CONV4}`, 8×8, before pooling); `input` for input-space "
        "methods.",
        f"* **ms/img**: explanation time per image, batches of {args.chunk}, this machine.",
        "* **references**: `centre-map` is a Gaussian at the image centre (σ = 16 px), "
        "`random-map` uniform noise per pixel, `coarse-random-map` uniform noise on a 4×4 grid "
        "upsampled bilinearly like a last-block CAM; all independent of the model. Deleting "
        "scattered pixels to grey pushes an image out of distribution as fast as deleting the "
        "object, so `random-map` scores a deletion AUC as low as the good maps; compare deletion "
        "with `coarse-random-map` (see docs/evaluation.md).",
        "",
        "| method | layer | pointing ↑ | energy ↑ | deletion ↓ | insertion ↑ | randomised ↓ "
        "| ms/img |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(
                f"| {row['method']} | {row['layer']} | not run: {row['error']} | | | | | |"
            )
            continue
        lines.append(
            f"| {row['method']} | `{row['layer']}` | {_cell(row['pointing'])} | "
            f"{_cell(row['energy'])} | {_cell(row['deletion'])} | {_cell(row['insertion'])} | "
            f"{_cell(row['randomised'])} | {_cell(row['explain_ms'], 1)} |"
        )
    lines.append("")
    return "\n".join(lines)


SANITY_METHODS = ("saliency", "gradcam", "guided-backprop")  # the trio of Adebayo et al.


def _row(name: str, values: Iterable[float], digits: int = 2) -> str:
    return f"| {name} | " + " | ".join(_cell(v, digits) for v in values) + " |"


def _table(header: Sequence[str], rows: Sequence[str]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
        *rows,
        "",
    ]


def sanity_markdown(n: int, seed: int, data_train: int, data_epochs: int) -> list[str]:
    """The sanity-check sections: cascading and independent randomisation step by step for the
    paper's three methods, and data randomisation (retraining on permuted labels)."""
    from cnnviz.data.shapes import heldout_shapes
    from cnnviz.methods.registry import method_names
    from cnnviz.metrics import sanity
    from cnnviz.models import load_model
    from cnnviz.models.shapes_vgg11 import normalize_shapes
    from cnnviz.render import figures
    from cnnviz.runs import randomization

    model = load_model("shapes_vgg11").module
    x = normalize_shapes(heldout_shapes(n).images)
    methods = [m for m in SANITY_METHODS if m in method_names()]
    lines = [
        "## Sanity checks step by step",
        "",
        f"{n} held-out images explained for their predicted class (`heldout_shapes({n})`), "
        f"seed {seed}; mean over images. Cascading: the layer groups are re-initialised from "
        "the logits down, cumulatively (each column names the lowest group randomised so far); "
        "independent: one group at a time. Discussion in docs/evaluation.md.",
        "",
    ]
    for mode in sanity.MODES:
        results = randomization.parameter_randomization(model, x, methods, mode=mode, seed=seed)
        steps = [figures.short_label(label) for label in next(iter(results.values())).steps]
        lines += [f"**{mode}**, `spearman_abs` (Spearman rank correlation of |map|):", ""]
        rows = [_row(name, r.mean("spearman_abs")) for name, r in results.items()]
        lines += _table(["method", *steps], rows)
        if mode == "cascading":
            lines += ["**cascading**, every layer random, every similarity:", ""]
            rows = [
                _row(name, [r.mean(m)[-1] for m in sanity.SIMILARITIES])
                for name, r in results.items()
            ]
            lines += _table(["method", *sanity.SIMILARITIES], rows)
    if data_epochs > 0:
        random_model, metrics = randomization.train_random_labels(
            seed=seed + 1, n_train=data_train, epochs=data_epochs
        )
        results = randomization.compare_models(model, random_model, x, methods)
        lines += [
            "**data randomisation**: `train_random_labels(n_train="
            f"{data_train}, epochs={data_epochs})` reaches {100 * metrics['train_accuracy']:.0f} % "
            f"on its permuted training labels and {100 * metrics['heldout_accuracy']:.0f} % on "
            "true held-out labels (chance 17 %); its maps compared with the trained model's:",
            "",
        ]
        rows = [
            _row(name, [r.mean(m)[0] for m in sanity.SIMILARITIES]) for name, r in results.items()
        ]
        lines += _table(["method", *sanity.SIMILARITIES], rows)
    return lines


DEFAULTS = {
    "images": 100,
    "steps": 50,
    "batch_size": 256,
    "chunk": 50,
    "seed": 0,
    "sanity_images": 32,
    "data_train": 1024,
    "data_epochs": 30,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the Markdown page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=DEFAULTS["images"])
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument(
        "--chunk", type=int, default=DEFAULTS["chunk"], help="images per explain call"
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument(
        "--sanity-images",
        type=int,
        default=DEFAULTS["sanity_images"],
        help="images of the step-by-step sanity tables (0: none)",
    )
    parser.add_argument("--data-train", type=int, default=DEFAULTS["data_train"])
    parser.add_argument(
        "--data-epochs",
        type=int,
        default=DEFAULTS["data_epochs"],
        help="epochs of the permuted-label model (0: no data randomisation)",
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "shapes-benchmark.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    rows, facts = run(args.images, args.steps, args.batch_size, args.chunk, args.seed)
    extra = (
        sanity_markdown(args.sanity_images, args.seed, args.data_train, args.data_epochs)
        if args.sanity_images > 0
        else []
    )
    text = markdown(rows, facts, args, time.perf_counter() - start) + "\n".join(["", *extra])
    from cnnviz.outputs.files import atomic_write_bytes

    atomic_write_bytes(Path(args.out), text.encode("utf-8"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
