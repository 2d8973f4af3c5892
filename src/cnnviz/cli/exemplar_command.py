"""``cnnviz exemplars``: the images of a folder where each channel of a layer fires most.

``cnnviz exemplars MODEL DIR... --layer L --channels 0-15 --k 9 --out OUT`` reads the images once
in batches (bounded memory; ``--resume`` continues an interrupted run from
``OUT/exemplars-state.json``) and writes, per channel, its top-k images by mean activation and
the receptive-field crops of its k strongest peaks (``exemplars.json``, ``exemplars.png``,
``channel-XXXX/NN.png``, ``manifest.json``). A file that cannot be read is skipped (exit 1);
Ctrl-C keeps the state written after the last batch (exit 130). ``--nproc N`` (or ``torchrun``)
shares the batches among N ranks; rank 0 writes and prints (:mod:`cnnviz.runs.distributed`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from cnnviz.cli.exit_codes import ExitCode
from cnnviz.cli.shared import (
    add_nproc_option,
    finish,
    input_paths,
    load,
    make_out_dir,
    relaunched,
    say,
    writing_into,
)
from cnnviz.cli.values import channel_list, positive_int

logger = logging.getLogger(__name__)


def add_exemplars_command(commands: Any, add_model_options: Callable[..., None]) -> None:
    """Register ``exemplars`` on the parser's sub-commands (``add_model_options`` is the
    parser's, passed in so that this module does not import the parser that imports it)."""
    text = "the images (and crops) of a folder where each channel of a layer fires most"
    p = commands.add_parser("exemplars", help=text, description=text)
    p.set_defaults(func=cmd_exemplars, model=None)
    p.add_argument("model_name", metavar="MODEL")
    p.add_argument("images", nargs="+", metavar="DIR", help="image files or folders")
    add_model_options(p, model_option=False)
    p.add_argument("--layer", "-l", required=True, help="dotted name or alias")
    p.add_argument(
        "--channels", type=channel_list, default=None, help="e.g. 0-15 or 0,4,7-9 (default: all)"
    )
    p.add_argument("--k", type=positive_int, default=9, help="images kept per channel")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--resume", action="store_true", help="continue from OUT/exemplars-state.json")
    add_nproc_option(p, "exemplars")
    p.add_argument("--out", "-o", required=True)


def cmd_exemplars(args: argparse.Namespace) -> int:
    """``cnnviz exemplars``: stream the folder, collect, write."""
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.outputs.manifest import read_manifest
    from cnnviz.runs.distributed import current_ranks, process_group
    from cnnviz.runs.exemplars import ExemplarSettings, exemplar_files

    status = relaunched(args)  # --nproc N: as N ranks, each a share of the batches
    if status is not None:
        return status
    ranks = current_ranks()
    paths = input_paths(args.images)
    loaded = load(args, args.model_name)
    out = make_out_dir(args)
    settings = ExemplarSettings(
        layer=args.layer,
        channels=tuple(args.channels) if args.channels is not None else None,
        k=args.k,
        batch_size=args.batch_size,
        resume=args.resume,
    )
    try:
        with writing_into(out), process_group(ranks, args.device):
            result, failures = exemplar_files(loaded, paths, out, settings, ranks=ranks)
    except KeyboardInterrupt:
        say(f"interrupted: the batches so far are kept; rerun with --resume to continue into {out}")
        return ExitCode.INTERRUPTED
    if not ranks.leader:  # rank 0 prints the run's summary; the exit code is each rank's
        return ExitCode.PARTIAL if failures else ExitCode.OK
    manifest = read_manifest(out)
    return finish(
        manifest.to_dict(),
        out,
        args,
        what=f"the exemplars of {len(result.channels)} channel(s) of {result.layer}",
        files=("exemplars.png", "exemplars.json", "manifest.json"),
    )
