"""The figure every cnnviz picture is drawn on: a matplotlib ``Figure`` with its own Agg canvas,
outside pyplot, that shows itself (:class:`InlineFigure`).

A figure built outside pyplot shows as ``<Figure size … with 1 Axes>`` in Jupyter and its
``show()`` raises; an :class:`InlineFigure` has ``_repr_png_``, so a notebook draws it with no
``%matplotlib`` magic, and ``show()`` works in a notebook, under an interactive matplotlib
backend, and says what to do instead on a headless machine.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnviz.notebook import display

if TYPE_CHECKING:
    import os

logger = logging.getLogger(__name__)


class InlineFigure(Figure):
    """A ``Figure`` that displays itself in Jupyter (``_repr_png_``) and shows with one call."""

    def _repr_png_(self) -> bytes:
        return figure_to_png_bytes(self)

    def show(self, warn: bool = True) -> None:
        """Show the figure: as the cell's output in a notebook, in a window under an interactive
        matplotlib backend; on a headless machine, log how to save it instead."""
        if display(self):
            return
        show_with_pyplot(self)

    def save(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """``savefig(path)`` (PNG unless the suffix says otherwise); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.savefig(target, **kwargs)
        return target


def show_with_pyplot(fig: Figure) -> None:
    """Hand ``fig`` to pyplot and show it, when the backend can show windows."""
    # lazy: only when a script asks to show a window
    import matplotlib
    from matplotlib.backends.registry import BackendFilter, backend_registry

    backend = matplotlib.get_backend().lower()
    interactive = backend_registry.list_builtin(BackendFilter.INTERACTIVE)  # type: ignore[no-untyped-call]  # matplotlib leaves it unannotated
    if backend not in interactive:
        logger.warning(
            "This matplotlib backend (%s) has no window to show the figure in; save it with "
            ".save('figure.png') (or set MPLBACKEND to an interactive backend).",
            backend,
        )
        return
    import matplotlib.pyplot as plt  # lazy: pyplot starts a GUI toolkit

    holder = plt.figure()
    manager = holder.canvas.manager
    if manager is None:
        return
    manager.canvas.figure = fig
    fig.set_canvas(manager.canvas)
    plt.show()


def new_figure(width: float, height: float, dpi: int) -> InlineFigure:
    """An :class:`InlineFigure` with its own Agg canvas and constrained layout, outside pyplot."""
    fig = InlineFigure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def subplots(
    nrows: int = 1, ncols: int = 1, *, panel_inches: float = 3.0, dpi: int = 100, **kwargs: Any
) -> tuple[InlineFigure, Any]:
    """``matplotlib.pyplot.subplots`` without pyplot: an :class:`InlineFigure` of ``nrows`` ×
    ``ncols`` axes, ``panel_inches`` square each, that shows itself in a notebook (no magic, and
    never a second copy of it, as pyplot's inline backend would add). ``kwargs`` go to
    ``Figure.subplots`` (``squeeze``, ``sharex``, …); returns the figure and its axes.

    Draw several results side by side with their ``plot(ax=...)``::

        >>> fig, axes = cnnviz.subplots(1, 2)
        >>> cnnviz.explain(model, x, "gradcam", layer="bn5_2").plot(ax=axes[0])
        >>> cnnviz.explain(model, x, "gradcam", layer="bn4_2").plot(ax=axes[1])
        >>> fig
    """
    for name, value in (("nrows", nrows), ("ncols", ncols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not panel_inches > 0:
        raise ValueError(f"panel_inches must be positive, got {panel_inches!r}")
    fig = new_figure(ncols * panel_inches, nrows * panel_inches + 0.4, dpi)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def figure_to_png_bytes(fig: Figure, *, dpi: int | None = None) -> bytes:
    """Render ``fig`` (Agg) to PNG bytes."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi if dpi is not None else fig.dpi)
    return buffer.getvalue()
