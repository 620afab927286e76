"""GatedNet: a value network (an op list) whose gates come from a gating network.

The gating network is one of
    "self"     DNN: the value network gates itself, relu(q) = G(q) q (hard gates: a plain ReLU net)
    "relu"     DGN: a separate ReLU network of the same shape; its pre-activations give the gates
    "linear"   DLGN: a separate deep *linear* network of the same shape, q_l = W_l ... W_1 x
    "shallow"  DLGN-SF: every gating layer reads the input directly, q_l = W_l x
and the value network reads x or an all-ones input of the same shape.
"""
from __future__ import annotations

import copy
from typing import Iterator, Sequence

import torch
from torch import nn

from .. import graph
from ..validate import finite_number
from .gates import check_kind, gate
from .init import he_init

GATINGS = ("self", "relu", "linear", "shallow")
VALUE_INPUTS = ("x", "ones")


class GatedNet(nn.Module):
    """A gated network described by an op list (see `npk.graph`).

    `gating` (one of GATINGS, default "self") is a constructor argument of every gated model; the
    architecture classes (FCNet, ConvNet, ResNet) build the op list, and the names DNN, DGN, DLGN,
    DLGNSF, ConvDNN, ..., ResDLGNSF are thin subclasses that fix `gating`. Everything else (forward,
    gates, parameter groups) is shared.

    `gating=` and `gate=` look alike and answer different questions:
        gating  WHICH network computes the pre-activations q_l: "self" (DNN), "relu" (DGN), "linear"
                (DLGN), "shallow" (DLGN-SF);
        gate    HOW q_l becomes a gate: "hard" 1{q > 0} (0/1, no gradient to the gating network) or
                "soft" sigmoid(beta q) (trainable gating; `npk_gram(..., gates="hard")` reads the hard ones).
    """

    gating: str = "self"

    def __init__(self, ops: Sequence[graph.Op], input_shape: tuple[int, ...], *, gating: str | None = None,
                 gate: str = "hard", beta: float = 4.0, eps: float = 0.1, value_input: str = "x"):
        super().__init__()
        if gating is not None:
            fixed = type(self).__dict__.get("gating") if type(self) is not GatedNet else None
            if fixed is not None and fixed != gating:
                raise ValueError(f"{type(self).__name__} is the gating={fixed!r} name of "
                                 f"{architecture_class(type(self)).__name__}; use "
                                 f"{architecture_class(type(self)).__name__}(..., gating={gating!r})")
            self.gating = gating
        graph.validate(ops)
        self.ops = list(ops)
        self.input_shape = tuple(input_shape)
        self.value_layers = nn.ModuleList(graph.modules(self.ops))
        self.n_gated = graph.n_gated_layers(self.ops)
        self.n_pools = len(graph.max_pools(self.ops))
        self._build_gating(gate, beta, eps, value_input)
        self._probe()

    def __repr__(self) -> str:
        """The class, its gating options and its op list (`npk.graph.describe`), one op a line."""
        ops = graph.describe(self.ops).replace("\n", "\n    ")
        return (f"{type(self).__name__}(gating={self.gating!r}, gate={self.gate_kind!r}, value_input="
                f"{self.value_input!r}, input_shape={self.input_shape},\n  ops:\n    {ops}\n)")

    def _probe(self) -> None:
        """Run one zero input through both networks, so an op list that does not fit its input fails here."""
        param = next(self.parameters())
        with torch.no_grad():
            try:
                self(torch.zeros((1, *self.input_shape), dtype=param.dtype, device=param.device))
            except (RuntimeError, ValueError) as err:
                raise ValueError(f"the op list does not fit the input shape {self.input_shape}: {err}") from err

    def _build_gating(self, gate: str, beta: float, eps: float, value_input: str) -> None:
        """Check the gating options and build a fresh gating network of kind `self.gating`."""
        if self.gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {self.gating!r}")
        if value_input not in VALUE_INPUTS:
            raise ValueError(f"value_input must be one of {VALUE_INPUTS}, got {value_input!r}")
        if self.gating == "self" and value_input != "x":
            raise ValueError("a DNN gates itself, so its value network must read x; "
                             "use a DGN or DLGN for an all-ones value input")
        self.gate_kind = check_kind(gate)
        self.beta, self.eps = finite_number("beta", beta, 0, strict=True), finite_number("eps", eps, 0)
        self.value_input = value_input
        if self.gating == "self":
            self.gating_ops = None
            self.gating_layers = nn.ModuleList()
        else:
            self.gating_ops = (graph.shallow_gating_ops(self.ops, self.input_shape) if self.gating == "shallow"
                               else graph.clone_for_gating(self.ops))
            self.gating_layers = nn.ModuleList(graph.modules(self.gating_ops))
        self.gate_permutations: list[torch.Tensor] | None = None
        self.layer_order: list[int] | None = None

    def with_gating(self, gating: str, *, gate: str | None = None, beta: float | None = None,
                    eps: float | None = None, value_input: str | None = None) -> "GatedNet":
        """A copy with the same value network (weights copied) and a new gating network of kind `gating`.

        `gating` picks the network that computes the pre-activations, `gate` ("hard" / "soft") how they
        become gates (see the class docstring); None keeps this model's gate, beta, eps and value input.

        The new gating layers get He normal weights (std sqrt(2 / fan_in)) and zero biases from the
        global torch RNG; options left None keep this model's. Gating is an argument, not a class: the
        copy is of the architecture's class (DNN -> FCNet, ConvDNN -> ConvNet, ResDNN -> ResNet, a
        GatedNet stays one) with `gating` set on it.
        """
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
        model = copy.deepcopy(self)
        model.__class__ = architecture_class(type(self))
        model.gating = gating
        model._build_gating(gate or self.gate_kind, self.beta if beta is None else beta,
                            self.eps if eps is None else eps, value_input or self.value_input)
        he_init(model.gating_layers)
        return model

    # ----------------------------------------------------------------------------------- gates
    def gate_fn(self, q: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        return gate(q, kind or self.gate_kind, self.beta, self.eps)

    def gating_preactivations(self, X: torch.Tensor) -> list[torch.Tensor]:
        """The pre-activations q_l(x) that the gates of each gated layer are computed from."""
        return self.gating_pass(X)[0]

    def selections(self, X: torch.Tensor) -> list[torch.Tensor]:
        """Per MaxPool, the selected position of every window: flat spatial indices, (N, C, *S_out).

        The stream that selects is the one the gating kind reads, as for the gates: a DNN's own stream;
        a DGN's gating network's (ReLU) stream; for a DLGN or DLGN-SF the pre-activation q_l of the gate
        before the pool (linear in x). A DLGN's gating stream itself pools by average over the same
        windows, so that it stays a linear function of x; a DLGN-SF's input stream does the same.
        """
        return self.gating_pass(X)[1]

    def gating_pass(self, X: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(pre-activations q_l, max-pool selections) from one pass of the gating network."""
        X = self.check_input(X)
        qs: list[torch.Tensor] = []
        sels: list[torch.Tensor] = []

        def record(then):
            def on_gate(layer, q):
                qs.append(q)
                return then(q)
            return on_gate

        def by_max(op, h):
            pooled, sel = op.pool(h)
            sels.append(sel)
            return pooled

        def by_linear(op, h):
            sels.append(op.pool(h)[1])
            return op.average(h)

        if self.gating == "self":
            graph.run(self.ops, X, record(lambda q: self.gate_fn(q) * q), by_max)
        elif self.gating == "relu":
            graph.run(self.gating_ops, X, record(torch.relu), by_max)
        elif self.gating == "linear":
            graph.run(self.gating_ops, X, record(lambda q: q), by_linear)
        else:
            graph.shallow_run(self.gating_ops, X, record(lambda q: q), lambda op, q: sels.append(op.pool(q)[1]))
        return qs, sels

    def gates(self, X: torch.Tensor, kind: str | None = None) -> list[torch.Tensor]:
        """One gate tensor per gated layer, (N, C) or (N, C, *spatial); `kind` overrides hard/soft."""
        return self._gates_of(self.gating_preactivations(X), kind)

    def _gates_of(self, qs: list[torch.Tensor], kind: str | None) -> list[torch.Tensor]:
        gs = [self.gate_fn(q, kind) for q in qs]
        if self.layer_order is not None:
            gs = [gs[k] for k in self.layer_order]
        if self.gate_permutations is not None:
            gs = [g[:, perm] for g, perm in zip(gs, self.gate_permutations)]
        return gs

    def set_gate_permutations(self, perms: Sequence[torch.Tensor] | None) -> None:
        """Permute the units (channels) of each gated layer's gates, the same way for every input."""
        if perms is not None:
            if self.gating == "self":
                raise ValueError("a DNN's gates are its own activations and cannot be shuffled; "
                                 "shuffle the gates of a DGN / DLGN (npk.models.regimes.shuffled_gates)")
            if len(perms) != self.n_gated:
                raise ValueError(f"need one permutation per gated layer ({self.n_gated}), got {len(perms)}")
            perms = [torch.as_tensor(p, dtype=torch.long) for p in perms]
        self.gate_permutations = perms

    def set_layer_order(self, order: Sequence[int] | None) -> None:
        """Gated layer l takes the gates of gated layer order[l] (a permutation), the same for every input.

        The layers' gate tensors must have equal shapes (equal widths; for convolutions, equal channels and
        positions). Unit permutations (`set_gate_permutations`) apply after this reordering.

        Example:
            >>> dgn.set_layer_order([1, 0])     # a two-layer DGN with its layers' gates swapped
        """
        if order is not None:
            if self.gating == "self":
                raise ValueError("a DNN's gates are its own activations and cannot be reordered; "
                                 "reorder the gates of a DGN / DLGN (npk.models.regimes.shuffled_gates)")
            order = [int(k) for k in order]
            if sorted(order) != list(range(self.n_gated)):
                raise ValueError(f"order must be a permutation of the {self.n_gated} gated layers "
                                 f"0..{self.n_gated - 1}, got {order}")
            param = next(self.parameters())
            with torch.no_grad():
                shapes = [tuple(q.shape[1:]) for q in self.gating_preactivations(
                    torch.zeros((1, *self.input_shape), dtype=param.dtype, device=param.device))]
            if any(shapes[k] != shapes[l] for l, k in enumerate(order)):
                raise ValueError(f"a layer takes another layer's gates only if their shapes agree; gate shapes "
                                 f"{shapes} and order {order}")
        self.layer_order = order

    # --------------------------------------------------------------------------------- forward
    def value_stream_input(self, X: torch.Tensor) -> torch.Tensor:
        return X if self.value_input == "x" else torch.ones_like(X)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = self.check_input(X)
        if self.gating == "self" and self.gate_permutations is None and self.layer_order is None:
            return graph.run(self.ops, X, lambda layer, q: self.gate_fn(q) * q)
        qs, sels = self.gating_pass(X)
        gs = self._gates_of(qs, None)
        return graph.run(self.ops, self.value_stream_input(X), lambda layer, q: gs[layer] * q,
                         lambda op, h: graph.select(h, sels[op.index]))

    # ----------------------------------------------------------------------- parameter groups
    def value_parameters(self) -> Iterator[nn.Parameter]:
        return self.value_layers.parameters()

    def gating_parameters(self) -> Iterator[nn.Parameter]:
        """The gating network's parameters; for a DNN the same tensors as the value network's."""
        return (self.value_layers if self.gating == "self" else self.gating_layers).parameters()

    # ------------------------------------------------------------------------------ checks
    def check_input(self, X: torch.Tensor) -> torch.Tensor:
        """Raise a clear error unless X is a finite (N, *input_shape) tensor."""
        return check_input(X, self.input_shape)


def architecture_class(cls: type) -> type:
    """The first class in cls's MRO that does not fix `gating` itself: FCNet for DNN, GatedNet for GatedNet."""
    return next(c for c in cls.__mro__ if "gating" not in c.__dict__ or c is GatedNet)


def check_input(X, input_shape: tuple[int, ...], name: str = "X") -> torch.Tensor:
    """X as a tensor of shape (N, *input_shape) with finite entries, or a ValueError saying what is wrong."""
    if not isinstance(X, torch.Tensor):
        X = torch.as_tensor(X)
    expected = "(N, " + ", ".join(map(str, input_shape)) + ")"
    if X.dim() != len(input_shape) + 1:
        hint = " (a single sample? use X[None])" if X.dim() == len(input_shape) else ""
        raise ValueError(f"{name} must have shape {expected}, got {tuple(X.shape)}{hint}")
    if tuple(X.shape[1:]) != tuple(input_shape):
        hint = ""
        if len(input_shape) == 3 and tuple(X.shape[1:]) == (input_shape[1], input_shape[2], input_shape[0]):
            hint = " (channels-last? use X.permute(0, 3, 1, 2))"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(X.shape)}{hint}")
    if not X.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {X.dtype}")
    if not torch.isfinite(X).all():
        bad = (~torch.isfinite(X)).reshape(len(X), -1).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} contains NaN or inf (first bad rows: {bad}); clean or impute them first")
    return X
