"""Errors that cnnviz raises for bad input, each naming the problem and the remedy.

The CLI turns any :class:`CnnvizError` into one line on stderr and its ``exit_code`` (2, or 3 for
missing weights), never a traceback; any other exception is a bug in cnnviz (exit 70).
Every class also derives from the built-in exception a Python user would expect (``ValueError``,
``TypeError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import contextvars
import difflib
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class CnnvizError(Exception):
    """Base class: a problem with what the user handed cnnviz, with a remedy in the message."""

    exit_code: int = 2


class ModelNotFoundError(CnnvizError, ValueError):
    """An unknown model name."""


class WeightsUnavailableError(CnnvizError, FileNotFoundError):
    """Pretrained weights are needed but cannot be found offline."""

    exit_code = 3


class CheckpointError(CnnvizError, ValueError):
    """A checkpoint that cannot be read safely or does not fit the model."""


class ImageLoadError(CnnvizError, ValueError):
    """An image file that cannot be decoded (or is refused, e.g. a decompression bomb)."""


class LayerError(CnnvizError, ValueError):
    """An unknown layer, or a layer that is not run exactly once by the forward pass."""


class NotApplicableError(LayerError):
    """This method does not apply to this model, layer or input size.

    For example CAM on a model whose head is not global average pooling + one linear layer, a
    CAM method on a layer without a spatial output, or an occlusion window larger than the
    input. ``--method all`` (and the report's "methods compared") skips a method that raises it,
    and says why; any other exception is a failure. A :class:`LayerError`, since most of these
    are about the layer, so ``except LayerError`` keeps catching them.
    """


class TargetError(CnnvizError, ValueError):
    """A class index or name that the model does not have, or targets that do not fit the batch."""


class NonFiniteError(CnnvizError, ValueError):
    """NaN or infinite values in weights, inputs, outputs or maps."""


class OutputError(CnnvizError, OSError):
    """An output folder that cannot be created or written."""


class UsageError(CnnvizError, ValueError):
    """Command-line options that do not fit together or do not parse."""


class AuditError(CnnvizError, ValueError):
    """An audit that cannot be made: too few maps of a class, labels or boxes that do not match
    the results."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """A human phrase listing the candidates closest to ``name`` ('' when none is close)."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean: " + ", ".join(repr(m) for m in matches) + "?"


def one_line(text: str) -> str:
    """``text`` with control characters (newlines, tabs, escapes) shown escaped: ``a\\nb``.

    The CLI passes every message through it, so a file name with a newline cannot split an
    error into two lines.
    """
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch)[0] == "C" else ch
        for ch in text
    )


class ArgumentError(CnnvizError, ValueError):
    """An argument (or option) value out of its range: a batch size of 0, a negative count."""


def positive_int(value: object, what: str, minimum: int = 1) -> int:
    """``value`` if it is a whole number ≥ ``minimum`` (not a bool), else an :class:`ArgumentError`
    naming ``what``: the one check behind every count, size and step option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return value


def error_text(error: BaseException) -> str:
    """An exception's message with its white space folded to single spaces (its type's name when
    it has no message): how a caught third-party error is quoted inside a cnnviz message."""
    return " ".join(str(error).split()) or type(error).__name__


# Who is reading the messages: the CLI sets "cli" for its run, so a remedy names a flag there and
# an argument in Python (``--class-names FILE`` vs ``class_names=``).
_SPEAKING: contextvars.ContextVar[str] = contextvars.ContextVar("cnnviz_speaking", default="python")


@contextmanager
def speaking_cli() -> Iterator[None]:
    """Within this block, :func:`remedy` names command-line flags (the CLI wraps each command)."""
    token = _SPEAKING.set("cli")
    try:
        yield
    finally:
        _SPEAKING.reset(token)


def remedy(cli: str, python: str) -> str:
    """``cli`` when the command line is running, else ``python``: one message, two audiences.

    Example::

        f"the classes are numbered; name them with {remedy('--class-names FILE', 'class_names=')}"
    """
    return cli if _SPEAKING.get() == "cli" else python


def weights_remedy() -> str:
    """How to do without pretrained weights, said to the caller: ``--weights FILE or --weights
    random`` on the command line, ``weights="FILE" or weights="random"`` in Python."""
    return remedy("--weights FILE or --weights random", 'weights="FILE" or weights="random"')
