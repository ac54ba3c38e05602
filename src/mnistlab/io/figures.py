"""Figures that show themselves: a matplotlib ``Figure`` Jupyter draws inline, no pyplot needed.

A bare ``matplotlib.figure.Figure`` (no pyplot, no GUI backend: safe on a server and in tests)
is shown by Jupyter only as ``<Figure size ...>`` unless ``%matplotlib inline`` registered a
formatter. ``new_figure`` makes one that carries its own PNG representation (``_repr_png_``), so
``result.figure()`` or ``evaluation.plot()`` as a cell's last line draws the picture, with or
without that magic; ``savefig`` works as on any figure.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_INLINE: type | None = None


def _inline_class() -> type:
    global _INLINE
    if _INLINE is None:
        from matplotlib.figure import Figure

        class InlineFigure(Figure):
            """A matplotlib figure that notebooks show as a PNG by itself."""

            def _repr_png_(self) -> bytes:
                buffer = io.BytesIO()
                self.savefig(buffer, format="png", bbox_inches="tight")
                return buffer.getvalue()

        _INLINE = InlineFigure
    return _INLINE


def new_figure(**kwargs: Any) -> Figure:
    """``matplotlib.figure.Figure(**kwargs)`` that Jupyter draws inline."""
    figure: Figure = _inline_class()(**kwargs)
    return figure


def png_bytes(figure: Figure, *, dpi: int | None = None) -> bytes:
    """The figure as PNG bytes (for embedding in HTML, writing atomically)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()
