"""How strongly ``shapes_vgg11_watermark`` took its shortcut, and a figure of it.

    PYTHONPATH=src .venv/bin/python benchmarks/watermark_shortcut.py [--out FIGURE.png] [--n 600]

Prints, on ``heldout_watermark_shapes(N)``: the held-out accuracy on clean images; on tagged
triangles the triangle's probability with and without the tag (the clean twin); on the other
classes' images that probability with the tag stamped; and Grad-CAM's share of positive mass in
the tag's corner cells (``conv4_2``, 8×8: the bottom-right 2×2) on tagged triangles and on their
clean twins. Saves a figure: tagged triangles, their Grad-CAM, the clean twins and theirs.
The figures depend only on the cached weights, the seeds and the torch version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import cnnviz  # noqa: E402  (after the path set-up above)
from cnnviz.data.watermark import (  # noqa: E402
    WATERMARK_CLASS,
    corner_share,
    heldout_watermark_shapes,
)
from cnnviz.methods.postprocess import minmax_normalize, relu  # noqa: E402
from cnnviz.models.shapes_vgg11 import normalize_shapes  # noqa: E402
from cnnviz.models.shapes_watermark import (  # noqa: E402
    load_shapes_vgg11_watermark,
    shapes_vgg11_watermark_path,
    shortcut_metrics,
)
from cnnviz.render.colours import overlay  # noqa: E402

LAYER = "conv4_2"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/watermark-figure.png"))
    parser.add_argument("--n", type=int, default=600, help="held-out images")
    parser.add_argument("--columns", type=int, default=6, help="images in the figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_shapes_vgg11_watermark()
    print(f"model: {shapes_vgg11_watermark_path()}")
    for key, value in shortcut_metrics(model, args.n).items():
        print(f"{key}: {value:.4f}")
    batch = heldout_watermark_shapes(args.n)
    tagged = batch.watermarked.nonzero().squeeze(1)
    maps = {}
    for kind, images in (("tagged", batch.shapes.images), ("clean twin", batch.clean)):
        e = cnnviz.explain(
            model, normalize_shapes(images[tagged]), "gradcam", layer=LAYER, target=WATERMARK_CLASS
        )
        maps[kind] = e.maps[:, 0]
        share = corner_share(maps[kind])
        print(
            f"gradcam corner share, {kind}: mean {float(share.mean()):.4f}, "
            f"median {float(share.median()):.4f} ({len(share)} triangles)"
        )
    more = (corner_share(maps["tagged"]) > corner_share(maps["clean twin"])).float().mean()
    print(f"tagged image's corner share above its twin's: {float(more):.3f}")
    _figure(batch.shapes.images[tagged], batch.clean[tagged], maps, args.columns, args.out)
    print(f"figure: {args.out}")
    return 0


def _figure(
    tagged: torch.Tensor,
    clean: torch.Tensor,
    maps: dict[str, torch.Tensor],
    columns: int,
    out: Path,
) -> None:
    import matplotlib  # lazy: only the figure needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    rows = [
        ("tagged", tagged, None),
        ("Grad-CAM, tagged", tagged, maps["tagged"]),
        ("clean twin", clean, None),
        ("Grad-CAM, twin", clean, maps["clean twin"]),
    ]
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.7 * len(rows)))
    for r, (title, images, row_maps) in enumerate(rows):
        for c in range(columns):
            image = images[c].permute(1, 2, 0).numpy()
            if row_maps is not None:
                map01 = minmax_normalize(relu(row_maps[c : c + 1]))[0].numpy()
                image = overlay(image, map01.astype(np.float64), alpha=0.5)
            axes[r, c].imshow(image, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=8)
    fig.suptitle(f"shapes_vgg11_watermark: Grad-CAM at {LAYER} for 'triangle'", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
