"""The primal side: the affine maps from the input to the gating network's pre-activations.

A DLGN's gating network is linear in x (affine with biases), so every gated layer's pre-activation is

    q_l(x) = A_l x + b_l,   A_l = dq_l / dx (the same at every x),   b_l = q_l(0),

and every gate 1{(A_l x + b_l)_i > 0} is a half-space of input space (DLGN, DLGN-SF, traced twins with
gating="linear"). A DNN's or DGN's q_l is piecewise affine: on the linear region of x (the inputs with
the same gates, and max-pool selections, in the layers before l)

    q_l(x') = A_l(x) x' + b_l(x),   A_l(x) = dq_l / dx at x,   b_l(x) = q_l(x) - A_l(x) x.

(A DNN with soft gates is smooth, not piecewise affine: (A, b) is then its tangent, exact at x only.)

A conv layer's unit (c, o) reads a window of the input (its receptive field, start + jump * o, of a
fixed size); for a linear gating network all units of channel c apply one composite kernel, the
channel's effective filter, to their windows (`effective_filters`). A's row (c, o) is that filter where
the window lies inside the input. At the borders a circular net wraps the filter around; a zero-padded
net differs there: its first layer drops the taps outside the input, and deeper layers also lose the
paths through the padded positions of the layers in between, so A's row is not a crop of the filter.

Cost: A holds n_q * n_x numbers (n_q the selected pre-activations, n_x = numel(x)). It is computed
exactly by automatic differentiation (torch.func): min(n_q, n_x) vector products with the gating
network (reverse mode when n_q <= n_x), vmapped in chunks of CHUNK = 64, so memory is A plus 64 passes'
activations. Maps larger than `max_bytes` are refused; `channels=` and `positions=` pick a part of q.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.func import jvp, vjp, vmap

from . import graph
from .models.base import GatedNet

LINEAR_GATINGS = ("linear", "shallow")
MAX_BYTES = 2 ** 30
CHUNK = 64


def gating_map(model: GatedNet, layer: int, x: torch.Tensor | None = None, *, channels: Sequence[int] | None = None,
               positions: Sequence[Sequence[int]] | None = None, max_bytes: int = MAX_BYTES):
    """(A, b) with q_layer(x') = A x' + b, q_layer = model.gating_preactivations(x')[layer].

    Args:
        model: a gated model. Linear gating (DLGN, DLGN-SF, gating="linear" / "shallow"): the map is
            global and x may be omitted. Otherwise (DNN, DGN) x, one input of shape model.input_shape,
            is required and (A, b) is the affine map of x's linear region.
        layer: the gated layer, 0 .. model.n_gated - 1.
        channels: keep only these units (dense) or channels (conv) of q.
        positions: conv layers only: keep only these spatial positions, each a tuple of indices.
        max_bytes: refuse an A larger than this (default 1 GiB).
    Returns:
        A of shape (*q shape, *input shape) and b of the q shape, in the model's dtype. With positions,
        the q shape is (channels, len(positions)).
    Example:
        >>> A, b = gating_map(npk.models.DLGN(64, [32, 32], 10), 1)     # A: (32, 64), b: (32,)
    """
    if not isinstance(model, GatedNet):
        raise TypeError(f"gating_map takes a gated model (npk.models), got {type(model).__name__}")
    if not isinstance(layer, int) or not 0 <= layer < model.n_gated:
        raise ValueError(f"layer must be an int in 0..{model.n_gated - 1} (the model's gated layers), got {layer!r}")
    param = next(model.parameters())
    if x is None:
        if model.gating not in LINEAR_GATINGS:
            raise ValueError(f"a gating network of kind {model.gating!r} is not linear: pass x, one input of shape "
                             f"{model.input_shape}, for the affine map of its linear region")
        x = torch.zeros(model.input_shape, dtype=param.dtype, device=param.device)
    else:
        x = torch.as_tensor(x)
        if tuple(x.shape) != model.input_shape:
            raise ValueError(f"x must be one input of shape {model.input_shape}, got {tuple(x.shape)}")
        x = model.check_input(x[None])[0].to(dtype=param.dtype, device=param.device)
    select = _selector(model, layer, channels, positions)

    def q_of(v: torch.Tensor) -> torch.Tensor:
        return select(model.gating_preactivations(v[None])[layer][0])

    with torch.no_grad():
        q = q_of(x)
    n_q, n_x = q.numel(), x.numel()
    need = n_q * n_x * param.element_size()
    if need > max_bytes:
        raise MemoryError(f"gating_map of layer {layer} needs A of shape {(*q.shape, *x.shape)}: {need / 2 ** 20:,.0f} MiB "
                          f"> max_bytes = {max_bytes / 2 ** 20:,.0f} MiB; pick units with channels=[...] (and, for a "
                          f"conv layer, positions=[(i, j), ...]) or raise max_bytes")
    A = _jacobian(q_of, x, n_q).reshape(*q.shape, *x.shape)
    b = q - (A.reshape(n_q, n_x) @ x.reshape(n_x)).reshape(q.shape)
    return A.detach(), b.detach()


def _selector(model: GatedNet, layer: int, channels, positions):
    """The function q -> q[channels][:, positions] for one sample's pre-activation q of `layer`."""
    param = next(model.parameters())
    with torch.no_grad():
        shape = model.gating_preactivations(torch.zeros((1, *model.input_shape), dtype=param.dtype,
                                                        device=param.device))[layer].shape[1:]
    chans = None if channels is None else _indices("channels", channels, shape[0])
    pos = None
    if positions is not None:
        if len(shape) == 1:
            raise ValueError(f"positions= is for conv layers; layer {layer} is dense with {shape[0]} units: use channels=")
        if any(len(p) != len(shape) - 1 for p in positions):
            raise ValueError(f"each position must hold {len(shape) - 1} indices (layer {layer} has spatial shape "
                             f"{tuple(shape[1:])}), got {list(positions)}")
        pos = [_indices(f"positions' axis {a}", [p[a] for p in positions], n) for a, n in enumerate(shape[1:])]

    def select(q: torch.Tensor) -> torch.Tensor:
        if chans is not None:
            q = q[chans]
        return q if pos is None else q[(slice(None), *pos)]
    return select


def _indices(name: str, values, n: int) -> torch.Tensor:
    values = list(values)
    if not values or any(not isinstance(v, int) or not 0 <= v < n for v in values):
        raise ValueError(f"{name} must be a non-empty list of ints in 0..{n - 1}, got {values}")
    return torch.tensor(values)


def _jacobian(f, x: torch.Tensor, n_q: int) -> torch.Tensor:
    """df/dx at x as an (n_q, numel x) matrix: reverse mode for few outputs, forward mode for few inputs."""
    n_x = x.numel()
    if n_q <= n_x:
        _, pull = vjp(lambda v: f(v).reshape(-1), x)
        rows = vmap(lambda u: pull(u)[0], chunk_size=CHUNK)(torch.eye(n_q, dtype=x.dtype, device=x.device))
        return rows.reshape(n_q, n_x)
    tangents = torch.eye(n_x, dtype=x.dtype, device=x.device).reshape(n_x, *x.shape)
    cols = vmap(lambda t: jvp(lambda v: f(v).reshape(-1), (x,), (t,))[1], chunk_size=CHUNK)(tangents)
    return cols.T


# ------------------------------------------------------------------------------------------ conv filters
@dataclass
class Filters:
    """Effective filters of a conv gated layer: unit (c, o) applies weights[c] to the input window that
    starts at start + jump * o (per spatial axis) and spans weights.shape[2:]."""

    weights: torch.Tensor       # (C, C_in, *window)
    start: tuple[int, ...]
    jump: tuple[int, ...]

    def window(self, position: Sequence[int]) -> tuple[range, ...]:
        """The input index ranges (per axis, possibly outside the input) that unit (., position) reads."""
        return tuple(range(s + j * o, s + j * o + n)
                     for s, j, o, n in zip(self.start, self.jump, position, self.weights.shape[2:]))


def effective_filters(model: GatedNet, layer: int) -> Filters:
    """The composite kernel of every channel of conv gated layer `layer` of a linear gating network.

    Exact: the Jacobian of one unit far from the borders, on an enlarged input (so no padding is met),
    cropped to its receptive field. The bias is left out (it is b of `gating_map`).
    """
    if not isinstance(model, GatedNet) or model.gating not in LINEAR_GATINGS:
        raise ValueError("effective filters are those of a linear gating network (DLGN, DLGN-SF); for a DNN or "
                         "DGN use gating_map(model, layer, x), the map of x's linear region")
    if not isinstance(layer, int) or not 0 <= layer < model.n_gated:
        raise ValueError(f"layer must be an int in 0..{model.n_gated - 1}, got {layer!r}")
    start, jump, size = _receptive_field(model, layer)
    margin = [n + j for n, j in zip(size, jump)]
    centre = [-(-(m - s) // j) for m, s, j in zip(margin, start, jump)]          # window starts >= margin
    big = [s + j * o + n + m for s, j, o, n, m in zip(start, jump, centre, size, margin)]
    param = next(model.parameters())
    x = torch.zeros((model.input_shape[0], *big), dtype=param.dtype, device=param.device)

    def unit(v: torch.Tensor) -> torch.Tensor:
        return _stream_to(model, layer, v[None])[0][(slice(None), *centre)]

    n_c = unit(x).numel()
    J = _jacobian(unit, x, n_c).reshape(n_c, *x.shape)
    window = tuple(slice(s + j * o, s + j * o + n) for s, j, o, n in zip(start, jump, centre, size))
    return Filters(J[(slice(None), slice(None), *window)].detach().clone(), tuple(start), tuple(jump))


class _Reached(Exception):
    def __init__(self, q):
        super().__init__()
        self.q = q


def _stream_to(model: GatedNet, layer: int, X: torch.Tensor) -> torch.Tensor:
    """q_layer of a linear gating network on X of any spatial size (the run stops at the gate)."""
    def stop(l, q):
        if l == layer:
            raise _Reached(q)
        return q
    try:
        if model.gating == "linear":
            graph.run(model.gating_ops, X, stop, lambda op, h: op.average(h))
        else:
            graph.shallow_run(model.gating_ops, X, stop, lambda op, q: None)
    except _Reached as reached:
        return reached.q
    raise AssertionError(f"gate {layer} not reached")


def _receptive_field(model: GatedNet, layer: int) -> tuple[list[int], list[int], list[int]]:
    """(start, jump, size) per spatial axis: unit o of `layer` reads inputs start + jump * o + [0, size)."""
    d = len(model.input_shape) - 1
    if d == 0:
        raise ValueError("effective filters are for conv layers; a dense layer's units are the rows of gating_map's A")
    start, jump, size = [0] * d, [1] * d, [1] * d
    ops = list(model.gating_ops)
    last = next((i for i, op in enumerate(ops) if isinstance(op, graph.Gate) and op.layer == layer), None)
    if last is None or any(isinstance(op, graph.Residual) for op in ops[:last]):
        raise ValueError(f"layer {layer} lies inside or after a residual block, whose branches have different "
                         f"receptive fields; use gating_map(model, {layer}, positions=[...]) instead")
    own = max(i for i, op in enumerate(ops[:last]) if isinstance(op, graph.Linear))
    for i, op in enumerate(ops[:last]):
        if isinstance(op, graph.Linear) and (model.gating == "linear" or i == own):
            if not op.is_conv:
                raise ValueError(f"layer {layer} is dense: its units' maps are the rows of gating_map's A")
            axes = op.axes
        elif isinstance(op, (graph.AvgPool, graph.MaxPool)):
            axes = op.axes(d) if isinstance(op, graph.AvgPool) else graph.AvgPool(op.kernel_size, op.stride,
                                                                                  op.padding).axes(d)
        elif isinstance(op, (graph.GlobalAvgPool, graph.Flatten)):
            raise ValueError(f"layer {layer} is dense (after {type(op).__name__}): its units' maps are the rows "
                             f"of gating_map's A")
        else:
            continue
        for a, ax in enumerate(axes):
            start[a] -= ax.pad[0] * jump[a]
            size[a] += (ax.kernel - 1) * ax.dilation * jump[a]
            jump[a] *= ax.stride
    return start, jump, size


def on_grid(model: GatedNet, xlim: tuple[float, float], ylim: tuple[float, float], n: int = 200) -> dict:
    """A 2-input model on an n x n grid: {"xx", "yy", "qs": per gated layer (units, n, n), "f": (n, n) score}.

    The score is the output for one output, else the difference of the last two outputs (class 1 minus
    class 0 for two classes); `npk.plots.arrangement` draws it.
    """
    if model.input_shape != (2,):
        raise ValueError(f"on_grid draws models of 2-D inputs, got input shape {model.input_shape}")
    param = next(model.parameters())
    xx, yy = torch.meshgrid(torch.linspace(*xlim, n, dtype=param.dtype), torch.linspace(*ylim, n, dtype=param.dtype),
                            indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).to(param.device)
    with torch.no_grad():
        qs = [q.T.reshape(-1, n, n).cpu() for q in model.gating_preactivations(grid)]
        out = model(grid)
    f = out[:, 0] if out.shape[1] == 1 else out[:, -1] - out[:, -2]
    return {"xx": xx, "yy": yy, "qs": qs, "f": f.reshape(n, n).cpu()}
