"""Figures: Gram heatmaps, eigenvalue decay, accuracy bars, training curves.

Every function takes data, an optional matplotlib Axes `ax` (draw into an existing figure) and an optional
`path` (save a PNG there), and returns the Figure. With a path and no ax the figure is a bare
matplotlib Figure rendered by the Agg backend: pyplot's state and the interactive backend are untouched.
Without either, the figure comes from pyplot (so that it shows in a notebook).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .files import atomic_write

DPI = 150
STYLE = {"axes.grid": False, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9,
         "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "legend.frameon": False}


def styled(fn):
    """Run a plotting function under the module's STYLE (rcParams restored afterwards)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def new_figure(ax=None, path=None, figsize=(5.5, 4.0), ncols: int = 1, nrows: int = 1):
    """(figure, axes) to draw on: `ax`'s figure, a bare Agg Figure when saving, else a pyplot figure."""
    if ax is not None:
        return ax.figure, ax
    if path is not None:
        fig = Figure(figsize=figsize, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
    else:
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", squeeze=False)
    return fig, axes[0, 0] if nrows * ncols == 1 else axes


def save_figure(fig: Figure, path) -> Path:
    """Save `fig` as a PNG at `path` (folders created; written to a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    return path


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def _numpy(a) -> np.ndarray:
    return np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)


@styled
def gram_heatmap(K, y, path=None, title: str = "Gram matrix", ax=None, class_names: Sequence | None = None,
                 max_points: int = 800, cmap: str = "viridis"):
    """Heatmap of K with samples sorted by class: white lines at class boundaries, ticks at class centres.

    Samples are sorted stably by label; Grams larger than `max_points` are shown at every s-th sorted sample
    (noted in the title). Colours span the 1st to 99th percentile of the off-diagonal entries, so that a
    large diagonal does not wash out the class structure.
    """
    K, y = _numpy(K), np.asarray(_numpy(y), dtype=np.int64)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or len(y) != len(K):
        raise ValueError(f"gram_heatmap needs a square Gram (N, N) and N labels, got {K.shape} and {len(y)} labels")
    order = np.argsort(y, kind="stable")
    step = max(1, -(-len(order) // max_points))
    order = order[::step]
    K, y = K[np.ix_(order, order)], y[order]
    off = K[~np.eye(len(K), dtype=bool)] if len(K) > 1 else K.ravel()
    vmin, vmax = np.percentile(off, [1, 99])
    fig, ax = new_figure(ax, path, figsize=(5.6, 4.8))
    im = ax.imshow(K, cmap=cmap, vmin=vmin, vmax=vmax if vmax > vmin else None, interpolation="nearest")
    classes, starts = np.unique(y, return_index=True)
    ends = np.r_[starts[1:], len(y)]
    for b in starts[1:] - 0.5:
        ax.axhline(b, color="white", lw=0.8)
        ax.axvline(b, color="white", lw=0.8)
    names = [str(c) for c in (classes if class_names is None else [class_names[c] for c in classes])]
    centres = (starts + ends - 1) / 2
    ax.set_xticks(centres, names, rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(centres, names)
    ax.tick_params(length=0)
    ax.set_xlabel("sample x' (sorted by class)")
    ax.set_ylabel("sample x (sorted by class)")
    ax.set_title(title + (f" (1 in {step} samples shown)" if step > 1 else ""))
    fig.colorbar(im, ax=ax, shrink=0.85, label="K(x, x')")
    return _finish(fig, path)


@styled
def spectrum_plot(spectra: Mapping[str, Sequence[float]], path=None, title: str = "Eigenvalue decay", ax=None,
                  floor: float = 1e-12):
    """lambda_i / lambda_1 against i on log-log axes, one line per kernel.

    Ratios below `floor` are dropped: in float64 they are round-off (a rank-deficient Gram's zero
    eigenvalues come out near 1e-16 lambda_1, of either sign) and would only stretch the axis.
    """
    fig, ax = new_figure(ax, path)
    for name, s in spectra.items():
        s = np.sort(_numpy(s).ravel())[::-1]
        if len(s) == 0 or s[0] <= 0:
            raise ValueError(f"spectrum {name!r} needs a positive largest eigenvalue, got {s[:1].tolist()}")
        r = s / s[0]
        r = r[r >= floor]
        ax.loglog(np.arange(1, len(r) + 1), r, lw=1.5, label=name)
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel(r"normalised eigenvalue $\lambda_i / \lambda_1$")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return _finish(fig, path)


@styled
def accuracy_bars(table: Mapping[str, Mapping[str, float]], path=None, title: str = "Test accuracy", ax=None):
    """Grouped bars: table[group][series] = accuracy as a fraction in [0, 1] (shown in %, value on each bar).

    e.g. {"DNN": {"network": 0.97, "NPK ridge": 0.95}, "DLGN": {...}}; a missing or None entry is skipped.
    """
    groups = list(table)
    series = list(dict.fromkeys(s for g in groups for s in table[g]))
    values = [[table[g].get(s) for g in groups] for s in series]
    flat = [v for row in values for v in row if v is not None]
    if not flat or not all(0 <= v <= 1 for v in flat):
        raise ValueError(f"accuracy_bars needs accuracies as fractions in [0, 1] (e.g. 0.97), got {flat}")
    fig, ax = new_figure(ax, path, figsize=(min(12.0, max(4.0, 1.5 + 0.6 * len(groups) * len(series))), 3.8))
    width = 0.8 / len(series)
    for j, (name, row) in enumerate(zip(series, values)):
        x = [i + (j - (len(series) - 1) / 2) * width for i, v in enumerate(row) if v is not None]
        bars = ax.bar(x, [100 * v for v in row if v is not None], width * 0.92, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    low = 100 * min(flat)
    ax.set_ylim(max(0.0, np.floor(low / 10) * 10 - 10), 100.5)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, path)


@styled
def curves(history: Mapping[str, Sequence[float]], path=None, x: str = "epoch", labels: Mapping[str, str] | None = None,
           logy: Sequence[str] = (), title: str | None = None, axes=None):
    """One panel per series of a history dict (e.g. {"epoch": [...], "train_loss": [...], "nu": [...]}).

    history[x] gives the horizontal values (0, 1, 2, ... when absent); `labels` maps a key to its axis
    label (with units), `logy` lists the keys drawn on a log scale. None / NaN values leave gaps. `axes`:
    a sequence of Axes, one per plotted key.
    """
    keys = [k for k in history if k != x]
    if not keys:
        raise ValueError(f"curves needs at least one series besides {x!r}, got keys {list(history)}")
    labels = dict(labels or {})
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    if axes is None:
        fig, grid = new_figure(None, path, figsize=(3.4 * ncols, 2.7 * nrows), ncols=ncols, nrows=nrows)
        grid = np.atleast_1d(grid).ravel()
        for extra in grid[len(keys):]:
            extra.set_visible(False)
    else:
        grid = list(axes)
        if len(grid) < len(keys):
            raise ValueError(f"curves needs {len(keys)} axes (one per key {keys}), got {len(grid)}")
        fig = grid[0].figure
    for ax, key in zip(grid, keys):
        y = np.array([np.nan if v is None else v for v in history[key]], dtype=np.float64)
        xs = _numpy(history[x]) if x in history else np.arange(len(y))
        if len(xs) != len(y):
            raise ValueError(f"history[{key!r}] has {len(y)} values but history[{x!r}] has {len(xs)}")
        ax.plot(xs, y, marker="o" if len(y) <= 30 else None, ms=3, lw=1.5)
        if key in logy:
            ax.set_yscale("log")
        ax.set_xlabel(labels.get(x, x))
        ax.set_ylabel(labels.get(key, key))
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)
