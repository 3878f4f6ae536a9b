"""The evaluate stage's figures, as PNG files.

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``, saved through the
Agg renderer): no pyplot, no global backend switch, no windows, safe in a worker process.
matplotlib is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly
    fig.savefig(path, format="png")
    return path


def confusion_matrix_png(cm: np.ndarray | Sequence[Sequence[int]], path: str | Path, *,
                         title: str = "Confusion matrix (test set)") -> Path:
    """Draw a confusion matrix (rows = true digit, columns = predicted) with counts.

    Returns:
        ``path``.
    """
    cm = np.asarray(cm)
    n = cm.shape[0]
    fig = _figure(7, 6)
    ax = fig.add_subplot()
    # Log-like colour scale via the off-diagonal maximum, so that errors are visible next to
    # the large diagonal counts.
    off = cm.copy()
    np.fill_diagonal(off, 0)
    vmax = max(1, int(off.max()) * 2)
    im = ax.imshow(np.minimum(cm, vmax), cmap="Blues", vmin=0, vmax=vmax)
    for i in range(n):
        for j in range(n):
            value = int(cm[i, j])
            if value == 0:
                continue
            dark = value > vmax * 0.6
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if dark else ("black" if i == j else "darkred"))
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    from matplotlib.ticker import MaxNLocator

    bar = fig.colorbar(im, ax=ax, label=f"count (colour capped at {vmax})")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    return _save(fig, path)


def training_curves_png(history: Mapping[str, Any], path: str | Path, *,
                        title: str = "Training curves") -> Path:
    """Draw accuracy and loss per epoch, training vs validation.

    Args:
        history: ``history.json`` of the train stage (``epoch``, ``loss``, ``accuracy``,
            ``val_loss``, ``val_accuracy`` lists).
        path: where to write the PNG.
        title: the figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: if the history has no per-epoch ``loss``.
    """
    from matplotlib.ticker import MaxNLocator

    loss = list(history.get("loss") or [])
    if not loss:
        raise ValueError("training history has no per-epoch 'loss' values to plot")
    epochs = list(history.get("epoch") or range(1, len(loss) + 1))
    fig = _figure(10, 4)
    fig.suptitle(title)
    for col, metric in enumerate(("accuracy", "loss")):
        ax = fig.add_subplot(1, 2, col + 1)
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            values = history.get(key)
            if values:
                ax.plot(epochs[: len(values)], values, style, label=label, markersize=3)
        if metric == "accuracy" and history.get("best_epoch"):
            ax.axvline(history["best_epoch"], color="grey", linestyle=":", label="best epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, path)


def digit_grid_png(images: np.ndarray, captions: Sequence[str], path: str | Path, *,
                   title: str, cols: int = 3, colors: Sequence[str] | None = None) -> Path:
    """Draw images in a grid, each with a caption (e.g. ``true 7 / pred 7``).

    Returns:
        ``path``. With no images, the figure says so instead.
    """
    n = len(images)
    rows = max(1, -(-n // cols))
    fig = _figure(2.2 * cols, 2.4 * rows + 0.4)
    fig.suptitle(title)
    if n == 0:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=14)
        return _save(fig, path)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i], cmap="gray_r", vmin=0.0, vmax=1.0)
        ax.set_title(captions[i], fontsize=9, color=(colors[i] if colors else "black"))
        ax.axis("off")
    return _save(fig, path)
