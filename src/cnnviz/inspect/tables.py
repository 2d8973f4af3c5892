"""The model summary and the layer table as values: their rows, and how they print (fixed-width
text with thousands separators in a terminal, HTML tables in a notebook)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

OWN = "<own>"
"""Last name component of a row holding the parameters a parent registers next to its children."""


@dataclass(frozen=True)
class SummaryRow:
    """One row of a :class:`ModelSummary`: a module (or a parent's own parameters).

    ``params``/``trainable``/``frozen``/``mult_adds`` cover the whole subtree of the module.
    ``output_shape`` is the shape of the module's first output, batch dimension (1) included;
    ``None`` when the output is not a single tensor or the module never ran.
    """

    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...] | None
    params: int
    trainable: int
    frozen: int
    mult_adds: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        shape = list(self.output_shape) if self.output_shape is not None else None
        return {
            "name": self.name,
            "type": self.type,
            "depth": self.depth,
            "output_shape": shape,
            "params": self.params,
            "trainable": self.trainable,
            "frozen": self.frozen,
            "mult_adds": self.mult_adds,
        }


@dataclass(frozen=True, repr=False)
class ModelSummary:
    """The result of :func:`summarize`; ``input_size`` is one image, without the batch dimension."""

    rows: tuple[SummaryRow, ...]
    total_params: int
    trainable_params: int
    frozen_params: int
    total_mult_adds: int
    input_size: tuple[int, ...]

    def __str__(self) -> str:
        return format_summary(self)

    def __repr__(self) -> str:
        return (
            f"<ModelSummary: {len(self.rows)} rows, {self.total_params:,} parameters, "
            f"{self.total_mult_adds:,} mult-adds per image; print() it or show it in a notebook>"
        )

    def _repr_html_(self) -> str:
        return summary_html(self)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (for manifests and the report)."""
        return {
            "input_size": list(self.input_size),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "total_mult_adds": self.total_mult_adds,
            "rows": [row.to_dict() for row in self.rows],
        }


@dataclass(frozen=True)
class LayerRow:
    """One module in :func:`layer_table`.

    ``alias`` is the shortest unique suffix that names the layer too (``None`` when the full name
    is already the shortest); ``output_shape`` includes the batch dimension (1) and is ``None``
    when the output is not one tensor, the module did not run, or no input size was given;
    ``params`` covers the module's subtree, counted as in :func:`summarize`.
    """

    name: str
    alias: str | None
    type: str
    output_shape: tuple[int, ...] | None
    params: int


class LayerTable(list[LayerRow]):
    """The rows of :func:`~cnnviz.inspect.summary.layer_table`: a list that prints as a text
    table in a terminal and shows as an HTML table in a notebook."""

    def __str__(self) -> str:
        return format_layer_table(self)

    def __repr__(self) -> str:
        return f"<LayerTable: {len(self)} layers; print() it or show it in a notebook>"

    def _repr_html_(self) -> str:
        return layer_table_html(self)


def format_summary(summary: ModelSummary) -> str:
    """A fixed-width text table of ``summary`` with thousands separators and a totals block."""
    header = ("Layer (type)", "Output shape", "Params", "Trainable", "Mult-adds")
    body = [
        (
            _row_label(row),
            _shape_text(row.output_shape),
            f"{row.params:,}",
            _trainable_text(row),
            f"{row.mult_adds:,}",
        )
        for row in summary.rows
    ]
    table = _table(header, body, right_aligned={2, 4})
    width = max(len(line) for line in table)
    totals = [
        ("Total params", f"{summary.total_params:,}", _human(summary.total_params)),
        ("Trainable params", f"{summary.trainable_params:,}", ""),
        ("Frozen params", f"{summary.frozen_params:,}", ""),
        ("Mult-adds per image", f"{summary.total_mult_adds:,}", _human(summary.total_mult_adds)),
    ]
    number_width = max(len(value) for _, value, _ in totals)
    lines = [table[0], "=" * width, *table[1:], "=" * width]
    for label, value, human in totals:
        suffix = f"  ({human})" if human else ""
        lines.append(f"{label + ':':<21}{value:>{number_width}}{suffix}")
    lines.append(f"{'Input size:':<21}{_shape_text(summary.input_size)} (one image)")
    lines.append("Shared (tied) parameters are counted once, on the first module that owns them.")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def format_layer_table(rows: Sequence[LayerRow]) -> str:
    """A fixed-width text table of :func:`layer_table` rows (params with thousands separators)."""
    header = ("#", "Layer", "Alias", "Type", "Output shape", "Params")
    body = [
        (
            str(index),
            row.name,
            row.alias or "",
            row.type,
            _shape_text(row.output_shape),
            f"{row.params:,}",
        )
        for index, row in enumerate(rows, start=1)
    ]
    table = _table(header, body, right_aligned={0, 5})
    width = max(len(line) for line in table)
    return "\n".join([table[0], "-" * width, *table[1:]]) + "\n"


def _row_label(row: SummaryRow) -> str:
    indent = "  " * row.depth
    if not row.name:
        return row.type
    if row.name.endswith(OWN):
        return f"{indent}{row.name}"
    return f"{indent}{row.name} ({row.type})"


def _trainable_text(row: SummaryRow) -> str:
    if row.params == 0:
        return ""
    if row.frozen == 0:
        return "yes"
    return "no" if row.trainable == 0 else "partial"


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "—" if shape is None else "[" + ", ".join(str(s) for s in shape) + "]"


def _human(count: int) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return ""


def _table(
    header: tuple[str, ...], body: Sequence[tuple[str, ...]], *, right_aligned: set[int]
) -> list[str]:
    """Header line and body lines, columns padded to their widest cell and joined by 3 spaces."""
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]
    lines = []
    for cells in [header, *body]:
        padded = [
            cell.rjust(width) if i in right_aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        lines.append("   ".join(padded).rstrip())
    return lines


def html_table(header: Sequence[str], body: Sequence[Sequence[str]], *, right: set[int]) -> str:
    """An HTML table (cells escaped), numbers in the ``right`` columns right-aligned."""

    def cells(tag: str, row: Sequence[str]) -> str:
        aligned = ("right" if i in right else "left" for i in range(len(row)))
        return "".join(
            f'<{tag} style="text-align:{side}">{html.escape(c)}</{tag}>'
            for side, c in zip(aligned, row, strict=True)
        )

    rows = "".join(f"<tr>{cells('td', row)}</tr>" for row in body)
    return f"<table><thead><tr>{cells('th', header)}</tr></thead><tbody>{rows}</tbody></table>"


def summary_html(summary: ModelSummary) -> str:
    """The summary as an HTML table with its totals (what a notebook shows)."""
    body = [
        (
            _row_label(row).replace(" ", "\u00a0", 2 * row.depth),
            _shape_text(row.output_shape),
            f"{row.params:,}",
            _trainable_text(row),
            f"{row.mult_adds:,}",
        )
        for row in summary.rows
    ]
    header = ("Layer (type)", "Output shape", "Params", "Trainable", "Mult-adds")
    totals = (
        f"<p>Total params: <b>{summary.total_params:,}</b> ({_human(summary.total_params)}) · "
        f"trainable {summary.trainable_params:,} · frozen {summary.frozen_params:,} · "
        f"mult-adds per image {summary.total_mult_adds:,} · input "
        f"{_shape_text(summary.input_size)}. Shared (tied) parameters are counted once.</p>"
    )
    return html_table(header, body, right={2, 4}) + totals


def layer_table_html(rows: Sequence[LayerRow]) -> str:
    """The layer table as HTML (what a notebook shows)."""
    header = ("#", "Layer", "Alias", "Type", "Output shape", "Params")
    body = [
        (str(i), r.name, r.alias or "", r.type, _shape_text(r.output_shape), f"{r.params:,}")
        for i, r in enumerate(rows, start=1)
    ]
    return html_table(header, body, right={0, 5})
