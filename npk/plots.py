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


def save_figure(fig: Figure, path, dpi: int = DPI) -> Path:
    """Save `fig` as a PNG at `path` (folders created; written to a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    return path


def _finish(fig: Figure, path, dpi: int = DPI) -> Figure:
    if path is not None:
        save_figure(fig, path, dpi)
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


# ------------------------------------------------------------------------- the two linearities (npk.interpret)
def _as_images(w: np.ndarray) -> tuple[np.ndarray, bool]:
    """Filters (n, C, H, W) / (n, H, W) as images: RGB in [0, 1] (each filter min-max scaled) for C = 3,
    otherwise (n, H, W) scaled to [-1, 1] per filter, for a diverging colour map."""
    if w.ndim == 4 and w.shape[1] == 3:
        lo = w.min(axis=(1, 2, 3), keepdims=True)
        span = np.maximum(w.max(axis=(1, 2, 3), keepdims=True) - lo, 1e-300)
        return ((w - lo) / span).transpose(0, 2, 3, 1), True
    w = w.sum(1) if w.ndim == 4 else w
    return w / np.maximum(np.abs(w).max(axis=(1, 2), keepdims=True), 1e-300), False


@styled
def filter_grid(layers: Mapping[str, np.ndarray], path=None, title: str = "Effective gating filters",
                per_layer: int = 10):
    """One row per layer: the first `per_layer` filters as images (rows of the primal map A, reshaped).

    layers[name] has shape (n, C, H, W) or (n, H, W). Single-channel filters use a diverging map with
    zero white (red +, blue -, each filter scaled to its own largest |w|); C = 3 is shown as RGB
    (each filter min-max scaled; grey is zero only where the filter is balanced); other C are summed.
    """
    if not layers:
        raise ValueError("filter_grid needs at least one layer of filters")
    n = min(per_layer, max(len(w) for w in layers.values()))
    fig, axes = new_figure(None, path, figsize=(1.0 * n + 0.8, 1.1 * len(layers) + 0.5), ncols=n, nrows=len(layers))
    axes = np.array(axes, dtype=object).reshape(len(layers), n)
    for row, (name, w) in zip(axes, layers.items()):
        images, rgb = _as_images(_numpy(w)[:n])
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            if j < len(images):
                ax.imshow(images[j], cmap=None if rgb else "RdBu_r", vmin=None if rgb else -1, vmax=None if rgb else 1,
                          interpolation="nearest")
            else:
                ax.set_visible(False)
        row[0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle(title)
    return _finish(fig, path)


@styled
def arrangement(panels: Mapping[str, Mapping], X, y, path=None, title: str = "Gates as hyperplanes"):
    """Per model (columns): the zero sets q_l,i(x) = 0 of every gate over the learnt function (top) and the
    regions of constant gate pattern (bottom), on a 2-D input grid.

    panels[name] = {"xx", "yy": (H, W) grids, "qs": per gated layer an (units, H, W) array of
    pre-activations on the grid, "f": (H, W) learnt score (its zero line is the decision boundary)}.
    For a DLGN every zero set is a straight line; for a DNN deeper layers' zero sets bend at earlier gates.
    """
    X, y = _numpy(X), np.asarray(_numpy(y), dtype=np.int64)
    first = next(iter(panels.values()))
    ratio = np.ptp(_numpy(first["yy"])) / np.ptp(_numpy(first["xx"]))
    fig, axes = new_figure(None, path, figsize=(4.8 * len(panels), 2 * 4.8 * ratio + 1.0), ncols=len(panels), nrows=2)
    axes = np.array(axes, dtype=object).reshape(2, len(panels))
    colours = matplotlib.colormaps["viridis"]
    for (name, p), top, bottom in zip(panels.items(), axes[0], axes[1]):
        xx, yy, qs, f = (_numpy(p["xx"]), _numpy(p["yy"]), [_numpy(q) for q in p["qs"]], _numpy(p["f"]))
        lim = np.abs(f).max()
        top.contourf(xx, yy, f, levels=np.linspace(-lim, lim, 21), cmap="RdBu_r", alpha=0.35)
        top.contour(xx, yy, f, levels=[0], colors="black", linewidths=2.0)
        for l, q in enumerate(qs):
            c = colours(l / max(1, len(qs) - 1) * 0.85)
            for unit in q:
                if unit.min() < 0 < unit.max():
                    top.contour(xx, yy, unit, levels=[0], colors=[c], linewidths=0.9)
            top.plot([], [], color=c, label=f"layer {l + 1} gates")
        top.plot([], [], color="black", lw=2, label="decision boundary")
        patterns = np.concatenate([(q > 0).reshape(len(q), -1) for q in qs]).T
        _, region = np.unique(patterns, axis=0, return_inverse=True)
        n_regions = region.max() + 1
        shuffled = np.random.default_rng(0).permutation(n_regions)[region.ravel()].reshape(xx.shape)
        bottom.pcolormesh(xx, yy, shuffled, cmap="tab20", shading="auto", rasterized=True)
        for ax, sub in ((top, name), (bottom, f"{name}: {n_regions} gate patterns on the grid")):
            ax.scatter(X[:, 0], X[:, 1], c=y, cmap="coolwarm", s=7, edgecolors="black", linewidths=0.3)
            ax.set_xlim(xx.min(), xx.max())
            ax.set_ylim(yy.min(), yy.max())
            ax.set_title(sub)
            ax.set_aspect("equal")
        top.legend(loc="lower left", fontsize=7, frameon=True)
    fig.suptitle(title)
    return _finish(fig, path, dpi=100)     # per-pixel detail: 150 dpi would triple the file


@styled
def layer_kernels(kernels: Mapping[str, Mapping[str, object]], y, path=None,
                  title: str = "Gate-overlap kernels layer by layer", max_points: int = 150):
    """Rows: models; columns: the Grams of kernels[model] ({label: (N, N) Gram}, e.g. each layer's overlap
    G_l G_l^T and their product, the NPK), samples sorted by class (every s-th of N > max_points shown, as in
    `gram_heatmap`); last column: their normalised spectra (of the whole Grams)."""
    n_cols = max(len(ks) for ks in kernels.values())
    fig, axes = new_figure(None, path, figsize=(2.4 * (n_cols + 1) + 0.5, 2.3 * len(kernels)),
                           ncols=n_cols + 1, nrows=len(kernels))
    axes = np.array(axes, dtype=object).reshape(len(kernels), n_cols + 1)
    for row, (name, ks) in zip(axes, kernels.items()):
        for ax, (label, K) in zip(row, ks.items()):
            gram_heatmap(K, y, ax=ax, max_points=max_points)
            ax.set_title(f"{name}: {label}")
            ax.set_xlabel("")
            ax.set_ylabel("")
            ax.images[-1].colorbar.remove()
        spectrum_plot({label: _spectrum(K) for label, K in ks.items()}, ax=row[-1], title=f"{name}: spectra")
    n = max(len(K) for ks in kernels.values() for K in ks.values())
    step = -(-n // max_points)
    fig.suptitle(title + (f" (heatmaps: 1 in {step} samples)" if step > 1 else ""))
    return _finish(fig, path, dpi=100)


def _spectrum(K) -> np.ndarray:
    """Eigenvalues of a symmetric Gram, descending (numpy float64)."""
    return np.linalg.eigvalsh(_numpy(K))[::-1]


@styled
def versus_k(series: Mapping[str, Mapping], path=None, ylabel: str = "", title: str = "", ax=None, percent: bool = False):
    """One line per series of values against k (series[name] = {k: value}), log-scaled k axis."""
    fig, ax = new_figure(ax, path, figsize=(5.0, 3.6))
    for name, values in series.items():
        ks = sorted(values, key=float)
        v = np.array([values[k] for k in ks], dtype=np.float64)
        ax.semilogx([float(k) for k in ks], 100 * v if percent else v, marker="o", ms=3, lw=1.5, label=name)
    ax.set_xlabel("k (top eigenvectors)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return _finish(fig, path)
