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
            ax.text(j, i, str(value), ha="center", va="center", fontsize=10,
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


_STATUS_COLOURS = {"OK": "#38a169", "WARN": "#b7791f", "ALARM": "#c53030"}


def monitoring_png(batches: Sequence[Mapping[str, Any]],
                   live: Sequence[Mapping[str, Any]] = (), *, title: str = "") -> bytes:
    """A version's scored batches over time, for the Models page: the monitor's status per
    batch, the confidence and embedding effects against their limits, the low-confidence
    share, and the live accuracy (with its interval) where labels came back.

    Args:
        batches: summary rows in batch order (``batch``, ``images``, ``low_confidence``,
            ``monitor``, ``confidence_ks``, ``embedding_mmd``).
        live: ``{"batch", "accuracy", "low", "high", "status"}`` per batch with feedback.

    Returns:
        The PNG's bytes.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = _figure(9.0, 5.2)
    axes = fig.subplots(3, 1, sharex=True, height_ratios=[1.2, 1, 1])
    x = np.arange(len(batches))
    names = [str(b.get("batch")) for b in batches]
    status = [str(b.get("monitor") or "") for b in batches]
    colours = [_STATUS_COLOURS.get(s, "#a0aec0") for s in status]

    ax = axes[0]
    conf = [b.get("confidence_ks") for b in batches]
    mmd = [b.get("embedding_mmd") for b in batches]
    ax.scatter(x, [c if c is not None else np.nan for c in conf], c=colours, marker="o",
               label="confidence KS D", zorder=3)
    ax2 = ax.twinx()
    ax2.plot(x, [m if m is not None else np.nan for m in mmd], color="#4a5568", lw=1,
             marker="^", ms=4, label="embedding MMD²")
    ax2.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylabel("confidence KS D")
    ax2.set_ylabel("embedding MMD²")
    for i, s in enumerate(status):
        if s == "ALARM":
            ax.axvspan(i - 0.4, i + 0.4, color=_STATUS_COLOURS["ALARM"], alpha=0.12, lw=0)
    ax.set_title(title or "Drift per scored batch (colour: OK / WARN / ALARM; shaded: ALARM)",
                 fontsize=10, loc="left")

    ax = axes[1]
    share = [(b.get("low_confidence") or 0) / b["images"] if b.get("images") else np.nan
             for b in batches]
    ax.bar(x, share, color=colours)
    ax.set_ylabel("low-confidence\nshare")

    ax = axes[2]
    index = {n: i for i, n in enumerate(names)}
    points = [(index[str(r["batch"])], r) for r in live if str(r["batch"]) in index]
    if points:
        xs = [p[0] for p in points]
        acc = [p[1]["accuracy"] for p in points]
        err = [[p[1]["accuracy"] - p[1]["low"] for p in points],
               [p[1]["high"] - p[1]["accuracy"] for p in points]]
        ax.errorbar(xs, acc, yerr=err, fmt="none", ecolor="#4a5568", capsize=3)
        ax.scatter(xs, acc, c=[_STATUS_COLOURS.get(str(p[1].get("status")), "#a0aec0")
                               for p in points], zorder=3)
        ax.set_ylim(0, 1.02)
    else:
        ax.text(0.5, 0.5, "no labels have come back yet", ha="center", va="center",
                transform=ax.transAxes, color="#718096")
    ax.set_ylabel("live accuracy\n(95 % interval)")
    step = max(1, len(names) // 12)
    ax.set_xticks(x[::step], [n[-16:] for n in names[::step]], rotation=30, ha="right",
                  fontsize=7)
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png")
    return buf.getvalue()
