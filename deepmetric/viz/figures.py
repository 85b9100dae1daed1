"""Figures without pyplot: creation, PNG export and ``data:`` URIs for self-contained HTML.

Every plot in :mod:`deepmetric.viz` builds a :class:`matplotlib.figure.Figure` directly instead of going
through ``pyplot``: no global figure registry to leak memory in long runs, no GUI backend, and PNGs are
rendered by Agg whatever ``MPLBACKEND`` says.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
# matplotlib writes its name and homepage into PNG metadata; reports must not carry any URL
_PNG_METADATA = {"Software": None}


def new_figure(width: float, height: float, constrained: bool = True) -> Figure:
    """An Agg-backed figure of ``width x height`` inches, with constrained layout unless told otherwise."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def figure_and_axes(ax: Axes | None, width: float, height: float) -> tuple[Figure, Axes]:
    """Draw into ``ax`` when the caller gives one, else into one axes of a new figure."""
    if ax is not None:
        return ax.figure, ax
    figure = new_figure(width, height)
    return figure, figure.add_subplot()


def figure_to_png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata=_PNG_METADATA)
    return buffer.getvalue()


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG file (parent folders created) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_to_png(figure))
    return path


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...``: an image an HTML page can hold inline."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_data_uri(figure: Figure) -> str:
    return png_data_uri(figure_to_png(figure))
