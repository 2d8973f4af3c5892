"""Programs saved with their weights: ``torchscript:FILE`` and ``export:FILE.pt2``.

Unlike a checkpoint (tensors only, read safely), these files hold a *program*, and loading one
runs the code in it: pass only files you trust, as with ``torch.jit.load`` and
``torch.export.load`` themselves. The program carries its own weights, so ``weights`` must be
left at its default.

* A **TorchScript** module (``torch.jit.save``) runs as it is. TorchScript accepts no Python
  hooks, so methods that read a layer's output (every CAM, activations, Guided Backprop) refuse
  it by name; input-space methods (saliency, Integrated Gradients, SmoothGrad, occlusion, RISE)
  work.
* An **exported program** (``torch.export.save``) is unflattened
  (``torch.export.unflatten``), which restores the module hierarchy with its dotted names, so
  hooks and therefore every method work on the layers the program keeps. cnnviz runs batches of
  images and of perturbed copies, so the program must be exported with a dynamic batch
  dimension: ``torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnviz.errors import CnnvizError, error_text
from cnnviz.models.checkpoint import CheckpointNotFoundError, program_remedy, zip_kind

PROGRAM_PREFIXES = ("torchscript:", "export:")


class ProgramError(CnnvizError, ValueError):
    """A TorchScript or exported-program file that cannot be loaded or used as a classifier."""


@dataclass(frozen=True)
class LoadedProgram:
    """A program's module and what its file says about the input (``None``: not fixed)."""

    module: nn.Module
    description: str
    in_channels: int | None = None
    input_size: tuple[int, int] | None = None


def _checked(path: Path) -> Path:
    if not path.is_file():
        raise CheckpointNotFoundError(f"program file {str(path)!r} does not exist")
    return path


def load_torchscript(path: Path) -> LoadedProgram:
    """The TorchScript module in ``path`` (on the CPU)."""
    file = _checked(path)
    try:
        with warnings.catch_warnings():  # torch.jit.load's own deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(file), map_location="cpu")  # type: ignore[no-untyped-call]  # untyped in torch
    except (RuntimeError, ValueError, OSError) as e:
        kind = zip_kind(file)
        hint = f"; {program_remedy(file, kind)}" if kind == "export" else ""
        raise ProgramError(
            f"cannot load {str(file)!r} as TorchScript ({error_text(e)[:200]}){hint}"
        ) from e
    if not isinstance(module, nn.Module):
        raise ProgramError(f"{str(file)!r} holds a TorchScript function, not a module")
    return LoadedProgram(module, f"TorchScript program {file}")


def load_exported(path: Path) -> LoadedProgram:
    """The unflattened module of the exported program in ``path``, with its input shape.

    Raises:
        ProgramError: the file is not an exported program, or was exported for a fixed batch
            size (the message shows how to export it with a dynamic one).
    """
    file = _checked(path)
    try:
        program = torch.export.load(str(file))
    except Exception as e:  # torch raises many types for a file that is not a program
        kind = zip_kind(file)
        hint = f"; {program_remedy(file, kind)}" if kind == "torchscript" else ""
        raise ProgramError(
            f"cannot load {str(file)!r} as an exported program ({error_text(e)[:200]}){hint}"
        ) from e
    shape = _input_shape(program, file)
    module = torch.export.unflatten(program)
    channels = shape[1] if isinstance(shape[1], int) else None
    size = (shape[2], shape[3]) if all(isinstance(s, int) for s in shape[2:]) else None
    return LoadedProgram(module, f"exported program {file}", channels, size)  # type: ignore[arg-type]  # ints checked above


def _input_shape(program: torch.export.ExportedProgram, file: Path) -> tuple[object, ...]:
    """The shape of the program's one image input; a fixed batch dimension is refused."""
    inputs = program.graph_signature.user_inputs
    nodes = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in inputs]
    values = [n.meta.get("val") for n in nodes]
    if len(values) != 1 or not isinstance(values[0], torch.Tensor) or values[0].dim() != 4:
        raise ProgramError(
            f"{str(file)!r} takes {len(values)} input(s); cnnviz explains programs that take one "
            "(N, C, H, W) image tensor"
        )
    shape = tuple(values[0].shape)
    if isinstance(shape[0], int):
        raise ProgramError(
            f"{str(file)!r} was exported for batches of exactly {shape[0]} image(s); cnnviz runs "
            "batches of images and of perturbed copies, so export it with a dynamic batch: "
            'torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))'
        )
    return shape


def load_program(spec: str) -> LoadedProgram:
    """``torchscript:FILE`` or ``export:FILE`` → the loaded program."""
    kind, _, name = spec.partition(":")
    path = Path(name).expanduser()
    if kind == "torchscript":
        return load_torchscript(path)
    if kind == "export":
        return load_exported(path)
    raise ProgramError(f"unknown program kind {kind!r}; use torchscript:FILE or export:FILE")
