"""Text tables of the model summary and the layer list (fixed width, thousands separators)."""

from __future__ import annotations

from collections.abc import Sequence

from cnnviz.inspect.summary import OWN, LayerRow, ModelSummary, SummaryRow


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


def format_layer_table(rows: list[LayerRow]) -> str:
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
