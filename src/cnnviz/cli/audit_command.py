"""``cnnviz audit RESULTS --out DIR [--labels F] [--boxes F]``: which images does the model get
right for the wrong reason?

Clusters the maps of a ``cnnviz explain`` run class by class (spectral relevance analysis,
:mod:`cnnviz.audit.spray`), flags clusters whose evidence lies off the object (with ``--boxes``)
or in a corner or at the border, and writes a page, ``audit.csv`` (image → cluster → flags) and
``clusters.csv`` (:mod:`cnnviz.runs.audit`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cnnviz.cli.exit_codes import ExitCode
from cnnviz.cli.shared import out_path, say, writing_into
from cnnviz.cli.values import non_negative_int, positive_int


def add_audit_command(commands: Any) -> None:
    """Register ``audit`` on the parser's sub-commands."""
    text = (
        "cluster a run's maps class by class (SpRAy) and flag the clusters whose evidence lies "
        "off the object, in a corner or at the border"
    )
    p = commands.add_parser("audit", help=text, description=text)
    p.set_defaults(func=cmd_audit)
    p.add_argument("results", metavar="RESULTS", help="the --out folder of a cnnviz explain run")
    p.add_argument("--out", "-o", required=True, help="folder for index.html and the CSV files")
    p.add_argument("--method", help="which method's maps (needed when the run holds several)")
    p.add_argument("--labels", help="CSV image,label: the images' true classes (optional)")
    p.add_argument(
        "--boxes",
        help="the objects' boxes or masks, as for cnnviz evaluate (CSV image,x0,y0,x1,y1 or "
        "JSON); without them a cluster is flagged for a corner or the border only",
    )
    p.add_argument("--neighbours", type=positive_int, default=10, help="k of the k-NN graph")
    p.add_argument("--max-clusters", type=positive_int, default=8, help="most clusters per class")
    p.add_argument("--grid", type=positive_int, default=8, help="maps are pooled to GRID×GRID")
    p.add_argument(
        "--min-images",
        type=positive_int,
        help="audit classes with at least this many maps (default and least: 2 × neighbours)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the clustering")


def cmd_audit(args: argparse.Namespace) -> int:
    # lazy: the audit loads NumPy, SciPy and scikit-learn; `cnnviz --help` must stay instant
    from cnnviz.audit.clusters import AuditSettings

    # lazy: as above
    from cnnviz.runs.audit import audit_results

    out = out_path(args)
    settings = AuditSettings(
        neighbours=args.neighbours,
        max_clusters=args.max_clusters,
        grid=args.grid,
        min_images=args.min_images,
        seed=args.seed,
    )
    with writing_into(out):
        audit = audit_results(
            Path(args.results),
            out,
            method=args.method,
            labels=args.labels,
            boxes=args.boxes,
            settings=settings,
        )
    clusters = sum(len(c.clusters) for c in audit.classes)
    say(
        f"audited {len(audit.classes)} class(es): {clusters} cluster(s), "
        f"{audit.flagged_count} flagged; open {out / 'index.html'}"
    )
    for audited in audit.classes:
        for cluster in audited.flagged:
            say(
                f"flagged: {audited.label}, cluster {cluster.index} ({cluster.size} maps): "
                + ", ".join(cluster.flags)
            )
    return ExitCode.OK
