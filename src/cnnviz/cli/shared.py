"""Helpers every ``cnnviz`` command shares: loading the model, listing inputs, the output folder,
printing the summary and choosing the exit code. Import-light: heavy imports happen inside.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnviz.cli.exit_codes import ExitCode
from cnnviz.cli.values import positive_int
from cnnviz.errors import CnnvizError, ImageLoadError, OutputError, UsageError, one_line
from cnnviz.progress import status

if TYPE_CHECKING:
    from cnnviz.models import LoadedModel

logger = logging.getLogger("cnnviz.cli")


def say(text: str) -> None:
    """One line ``cnnviz: text`` on stderr (control characters escaped)."""
    print("cnnviz: " + one_line(text), file=sys.stderr)


def parse_key_values(items: Sequence[str], flag: str, *, example: str) -> dict[str, Any]:
    """``["steps=256", "signed=true"]`` → ``{"steps": 256, "signed": True}``: whole numbers,
    then decimal numbers, then ``true``/``false``/``none``, else the text itself."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UsageError(f"{flag} takes KEY=VALUE (e.g. {example}), got {item!r}.")
        value: Any = text.strip()
        for convert in (int, float):
            try:
                value = convert(value)
                break
            except ValueError:
                continue
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        elif isinstance(value, str) and value.lower() == "none":
            value = None
        options[key] = value
    return options


def load(
    args: argparse.Namespace,
    name: str | None = None,
    *,
    data: bool = True,
    structure_only: bool = False,
) -> LoadedModel:
    """The model named by ``name`` (or ``--model``) with every model option of the command line
    (``--weights``, ``--device``, ``--class-names``, ``--model-arg``, the preprocessing flags).

    ``data=True`` (a command that runs the model or reads its weights) refuses the ``meta``
    device, whose tensors have shapes but no values; ``layers`` and ``summary`` accept it.
    ``structure_only=True`` (``layers``, ``summary``) builds the architecture without its
    pretrained weights when no ``--weights`` is given, and says so: the structure needs none.
    """
    model = name or args.model
    with status(f"loading {model}", delay=0.5):  # torch's import and the weights take seconds
        # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
        from cnnviz.models import load_model
        from cnnviz.models.own import is_own_model

        weights, device = args.weights, args.device
        if structure_only and weights is None and not is_own_model(model):
            weights, device = "random", "meta"  # shapes without values: no initialisation
            logger.info(
                "architecture only: pretrained weights not loaded (the structure needs none)"
            )
        loaded = load_model(
            model,
            weights=weights,
            device=device,
            class_names=getattr(args, "class_names", None),
            preprocessing=preprocessing_overrides(args) or None,
            model_args=parse_key_values(
                getattr(args, "model_arg", None) or [], "--model-arg", example="num_classes=10"
            ),
        )
    if data and any(t.is_meta for t in loaded.module.parameters()):
        raise UsageError(
            f"--device {args.device} holds shapes but no values; it works for `cnnviz layers` "
            "and `cnnviz summary` only. Use --device cpu or cuda."
        )
    return loaded


def preprocessing_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The preprocessing fields set by ``--input-size``, ``--resize``, ``--crop``, ``--mean``,
    ``--std`` and ``--interpolation`` (each already parsed by the argument parser)."""
    fields = {
        "input_size": getattr(args, "input_size", None),
        "resize": getattr(args, "resize", None),
        "crop_pct": getattr(args, "crop", None),
        "mean": getattr(args, "mean", None),
        "std": getattr(args, "std", None),
        "interpolation": getattr(args, "interpolation", None),
    }
    if fields["resize"] is not None and fields["crop_pct"] is not None:
        raise UsageError("give --resize or --crop, not both: each sets how much is cropped.")
    return {key: value for key, value in fields.items() if value is not None}


def emit_json(obj: object) -> None:
    """``obj`` as JSON on stdout (the ``--json`` summary)."""
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.outputs.files import to_json_text

    sys.stdout.write(to_json_text(obj) + "\n")


def input_paths(entries: Sequence[str]) -> list[Path]:
    """The image files named by ``entries`` (files, or folders searched for images).

    Raises:
        ImageLoadError: an entry that is missing or cannot be listed, or a folder without
            image files.
    """
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.inputs.images import find_images

    paths: list[Path] = []
    for entry in entries:
        try:
            found = find_images(entry)
        except OSError as e:  # e.g. a folder without read permission
            raise ImageLoadError(f"{entry}: cannot list it ({e.strerror or e}).") from e
        if not found:
            raise ImageLoadError(f"{entry}: no image files found there (looked for common types).")
        paths.extend(found)
    return paths


def split_list(text: str, flag: str) -> list[str]:
    """The items of a comma-separated option value, stripped; an empty list is refused."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise UsageError(f"{flag} is empty; give a comma-separated list.")
    return items


def out_path(args: argparse.Namespace) -> Path:
    """The ``--out`` folder (not created); an empty value is refused rather than read as ``.``."""
    if not str(args.out).strip():
        raise UsageError("--out is empty; give the folder to write to.")
    return Path(args.out)


def make_out_dir(args: argparse.Namespace) -> Path:
    """The ``--out`` folder, created if needed and checked to be a writable folder.

    Raises:
        OutputError: it is a file, or cannot be created or written.
    """
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.outputs.records import prepare_out_dir

    return prepare_out_dir(out_path(args))


@contextmanager
def writing_into(out: Path) -> Iterator[None]:
    """Turn an ``OSError`` on a file inside ``out`` (disk full, permissions changed mid-run)
    into an :class:`OutputError`; any other ``OSError`` is left alone (it is not about --out)."""
    try:
        yield
    except OSError as e:
        if isinstance(e, CnnvizError) or not _inside(e.filename, out):
            raise
        raise OutputError(
            f"Cannot write {e.filename}: {e.strerror or e}; check the free space and "
            f"permissions of --out {out}."
        ) from e


def _inside(filename: object, folder: Path) -> bool:
    if not isinstance(filename, (str, Path)):
        return False
    path, root = Path(filename).absolute(), folder.absolute()
    return path == root or root in path.parents


def finish(
    manifest: Mapping[str, Any],
    out: Path,
    args: argparse.Namespace,
    *,
    what: str | None = None,
    files: Sequence[str] = ("manifest.json",),
    list_failures: bool = False,
) -> int:
    """Print the summary of a run into ``out`` and choose the exit code (1 if inputs failed).

    ``what`` names what was written (default: the count of results); of ``files`` only those
    that exist in ``out`` are named. ``list_failures`` prints each failure on stderr, for runs
    that do not log them as they happen. The exit code reflects this run: a folder's manifest
    may also list failures of earlier runs into it (``extra.run.failed`` counts this run's).
    """
    failures: list[Mapping[str, Any]] = list(manifest.get("failures", []))
    run = manifest.get("extra", {}).get("run", {})
    failed = int(run.get("failed", len(failures)))
    if args.json:
        emit_json(manifest)
    else:
        written = [name for name in dict.fromkeys(files) if (out / name).is_file()]
        listed = f" ({', '.join(written)})" if written else ""
        what = what or f"{len(manifest.get('items', []))} result(s)"
        note = f"; {failed} input(s) failed, listed there" if failed and not list_failures else ""
        print(one_line(f"Wrote {what} to {out}/{listed}{note}"))
    if list_failures:
        for failure in failures:
            method = f" ({failure['method']})" if failure.get("method") else ""
            say(f"skipped {failure['input']}{method}: {failure['error']}")
    return ExitCode.PARTIAL if failed else ExitCode.OK


def add_nproc_option(p: argparse.ArgumentParser, command: str, share: str = "batches") -> None:
    """``--nproc N``: run ``command`` as N ranks on this machine (:func:`relaunched`), each a
    share of the ``share``."""
    p.add_argument(
        "--nproc",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"{command} with N processes on this machine, each a disjoint share of the {share} "
        f"(for several machines: torchrun --nnodes … -m cnnviz {command} …)",
    )


def relaunched(args: argparse.Namespace) -> int | None:
    """With ``--nproc N`` (N > 1) outside a distributed run: run this command again as N ranks
    on this machine and return their exit status; else ``None`` (go on in this process, whose
    ``args.device`` becomes this rank's: a bare ``cuda`` becomes ``cuda:LOCAL_RANK``)."""
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.runs.distributed import current_ranks, launch, without_option

    ranks = current_ranks()
    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc > 1 and not ranks.distributed:
        say(f"launching {nproc} processes, each a share of the batches")
        return launch(nproc, without_option(args.argv, "--nproc"))
    if hasattr(args, "device"):
        args.device = ranks.device(args.device)
    return None
