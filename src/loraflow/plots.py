"""Figures with matplotlib, drawn on the Agg canvas without pyplot.

Why no pyplot: pyplot keeps global state (a current figure, a chosen backend) that a library must
not touch -- a notebook user's `%matplotlib` setting stays theirs, and a headless server never
needs a display. `Plot` is a plain `Figure` that also shows itself inline in Jupyter
(`_repr_png_`), so `loraflow.data.stats(...).figure` or `train_result.loss_figure` display as
pictures whether or not pyplot was ever imported. matplotlib is imported only when a plot is made.
"""
from __future__ import annotations

import io
from pathlib import Path

from loraflow.atomic import atomic_path


def new_figure(width: float, height: float, dpi: int = 100):
    """An empty `Plot` (a matplotlib Figure) of `width` x `height` inches on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    class Plot(Figure):
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png")
            return buffer.getvalue()

    figure = Plot(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


def save_figure(figure, path: str | Path) -> Path:
    """Write the figure as a PNG, atomically (a reader never sees half a file)."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    return path
