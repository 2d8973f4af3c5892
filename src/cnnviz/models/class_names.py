"""A model's class names from the user: a file (one per line, a JSON list, a CSV) or a sequence.

Formats of a class-names file, chosen by its suffix:

* ``.json`` — a list of names in index order, or an object mapping indices to names
  (``{"0": "cat", "1": "dog"}``, every index from 0 present once);
* ``.csv`` / ``.tsv`` — rows ``index,name`` (an optional header row such as ``index,name`` is
  skipped), every index from 0 present once;
* anything else — plain text, one name per line, in index order; blank lines at the end are
  ignored, a blank line in the middle is an error (it would shift every later class).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cnnviz.errors import CnnvizError, remedy

logger = logging.getLogger(__name__)


class ClassNamesError(CnnvizError, ValueError):
    """A class-names file that cannot be read, or names that do not fit the model."""


ClassNamesSource = Sequence[str] | str | os.PathLike[str]
"""What ``class_names=`` takes: the names themselves, or the path of a class-names file."""


def read_class_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The class names in the file at ``path`` (see the module docstring for the formats).

    Raises:
        ClassNamesError: the file is missing, unreadable, empty, or not in one of the formats.

    Example::

        read_class_names("classes.txt")  # ('cat', 'dog', …)
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ClassNamesError(f"class-names file {str(file)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ClassNamesError(f"cannot read class-names file {str(file)!r} ({e})") from e
    suffix = file.suffix.lower()
    if suffix == ".json":
        names = _from_json(text, file)
    elif suffix in (".csv", ".tsv"):
        names = _from_csv(text, file, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        names = _from_lines(text, file)
    if not names:
        raise ClassNamesError(f"class-names file {str(file)!r} names no class")
    return names


def _from_lines(text: str, file: Path) -> tuple[str, ...]:
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise ClassNamesError(
            f"class-names file {str(file)!r} has a blank line {lines.index('') + 1}: one name "
            "per line, in index order, with no gaps"
        )
    return tuple(lines)


def _from_json(text: str, file: Path) -> tuple[str, ...]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClassNamesError(f"class-names file {str(file)!r} is not valid JSON ({e})") from e
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return tuple(data)
    if isinstance(data, Mapping):
        return _indexed(list(data.items()), file)
    raise ClassNamesError(
        f"class-names file {str(file)!r} holds a JSON {type(data).__name__}; give a list of "
        'names, or an object {"0": "cat", "1": "dog", …}'
    )


def _from_csv(text: str, file: Path, *, delimiter: str) -> tuple[str, ...]:
    rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if row]
    if rows and not rows[0][0].strip().isdigit():
        rows = rows[1:]  # a header row
    if any(len(row) < 2 for row in rows):
        raise ClassNamesError(
            f"class-names file {str(file)!r}: every row needs two columns, index and name"
        )
    return _indexed([(row[0], row[1]) for row in rows], file)


def _indexed(pairs: list[tuple[object, object]], file: Path) -> tuple[str, ...]:
    """Names from ``(index, name)`` pairs covering 0 … n−1 exactly once."""
    by_index: dict[int, str] = {}
    for key, name in pairs:
        text = str(key).strip()
        if not text.isdigit() or not isinstance(name, str):
            raise ClassNamesError(
                f"class-names file {str(file)!r}: {key!r} → {name!r} is not an index and a name"
            )
        if int(text) in by_index:
            raise ClassNamesError(f"class-names file {str(file)!r} names index {text} twice")
        by_index[int(text)] = name.strip()
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing:
        raise ClassNamesError(
            f"class-names file {str(file)!r} skips index {missing[0]}: indices must run 0 … "
            f"{len(by_index) - 1} with no gaps"
        )
    return tuple(by_index[i] for i in range(len(by_index)))


def given_class_names(source: ClassNamesSource, num_classes: int | None) -> tuple[str, ...]:
    """The names from ``source`` (a file path or a sequence), checked against the model's
    ``num_classes`` (``None``: unknown, not checked).

    Raises:
        ClassNamesError: the count differs from the model's, or an entry is not a string.
    """
    if isinstance(source, (str, os.PathLike)):
        names, origin = read_class_names(source), f"class-names file {str(source)!r}"
    elif isinstance(source, Sequence) and all(isinstance(n, str) for n in source):
        names, origin = tuple(source), "class_names"
    else:
        raise ClassNamesError(
            f"class names must be a file path or a sequence of str, got {source!r:.80}"
        )
    if num_classes and len(names) != num_classes:
        raise ClassNamesError(
            f"{origin} has {len(names)} names but the model has {num_classes} classes; give "
            "one name per output of the classifier, in index order"
        )
    return names


def is_numbered(names: Sequence[str]) -> bool:
    """Whether ``names`` are the placeholders ``"0"``, ``"1"``, … of a model without names."""
    return bool(names) and all(name == str(i) for i, name in enumerate(names))


def say_if_numbered(names: Sequence[str]) -> None:
    """Log once per load that the classes are numbered, and how to name them."""
    if is_numbered(names):
        logger.info(
            "classes: %d, numbered 0–%d (the model names none); name them with %s",
            len(names),
            len(names) - 1,
            remedy("--class-names FILE", "class_names=[…] or class_names='classes.txt'"),
        )
