"""Where cnnviz runs, for showing things: a Jupyter kernel or a plain interpreter.

In a Jupyter kernel nothing is configured for a library's log records (the root logger has no
handler, so INFO notices are lost), and figures built outside pyplot show as text. cnnviz says
its own notices there through one handler on the ``cnnviz`` logger (:func:`notebook_logging`,
called on ``import cnnviz``), and its figures and results show themselves through
``_repr_png_`` (:func:`display`). Torch-free and matplotlib-free.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

NOTEBOOK_HANDLER_NAME = "cnnviz-notebook"


def in_notebook() -> bool:
    """Whether this interpreter is a Jupyter (IPython) kernel, which displays rich outputs."""
    if "ipykernel" not in sys.modules:
        return False
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and getattr(shell, "kernel", None) is not None


def display(obj: Any) -> bool:
    """Show ``obj`` as a cell output when running in a notebook; ``False`` elsewhere."""
    if not in_notebook():
        return False
    from IPython.display import display as ipython_display  # lazy: only inside a kernel

    ipython_display(obj)  # type: ignore[no-untyped-call]  # IPython leaves it unannotated
    return True


def notebook_logging(logger: logging.Logger | None = None) -> logging.Handler | None:
    """In a notebook, print the INFO notices of the ``cnnviz`` logger (the automatic CAM layer,
    the eval-mode notice) on the cell's stderr, once, unless logging was configured already.

    Nothing is added outside a notebook, when the ``cnnviz`` logger has a handler, or when the
    root logger has one (the user configured logging: their choice stands). Returns the handler
    added, if any.
    """
    target = logger if logger is not None else logging.getLogger("cnnviz")
    if not in_notebook() or target.handlers or logging.getLogger().handlers:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(NOTEBOOK_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(message)s"))
    target.addHandler(handler)
    if target.level == logging.NOTSET:
        target.setLevel(logging.INFO)
    return handler
