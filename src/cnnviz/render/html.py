"""HTML pages: Jinja2 templates with autoescaping, and pictures embedded as ``data:`` URIs.

Pages load nothing from the network (each template sets a Content-Security-Policy), so a report
can be mailed or opened offline. All text is escaped by Jinja2's autoescaping.
"""

from __future__ import annotations

import base64
import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnviz.outputs.files import encode_png
from cnnviz.render.figures import figure_to_png_bytes

if TYPE_CHECKING:
    from jinja2 import Environment
    from matplotlib.figure import Figure


def png_bytes_data_uri(data: bytes) -> str:
    """A ``data:image/png;base64,…`` URI for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png_data_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,…`` URI for a uint8 ``(H, W)`` or ``(H, W, 3)`` array."""
    return png_bytes_data_uri(encode_png(np.ascontiguousarray(image)))


def figure_data_uri(fig: Figure) -> str:
    """A data URI of a matplotlib figure rendered to PNG."""
    return png_bytes_data_uri(figure_to_png_bytes(fig))


@functools.lru_cache(maxsize=1)
def template_environment() -> Environment:
    """The Jinja2 environment of cnnviz's page templates (autoescaped, loaded once)."""
    from jinja2 import Environment, PackageLoader, select_autoescape  # lazy: only pages need it

    return Environment(
        loader=PackageLoader("cnnviz.render", "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
        keep_trailing_newline=True,
    )


def render_page(template: str, **context: Any) -> str:
    """The page template ``template`` (in ``cnnviz/render/templates``) rendered with ``context``."""
    return str(template_environment().get_template(template).render(**context))
