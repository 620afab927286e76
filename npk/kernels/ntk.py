"""The empirical neural tangent kernel K(x, y) = J(x) J(y)^T of a model w.r.t. one parameter group.

J(x) = d f(x) / d theta is the (K outputs) x (P parameters) Jacobian at input x. outputs="full" gives
the (K, K) block K[k, k'](x, y) = <d f_k(x)/d theta, d f_k'(y)/d theta> per input pair, outputs="trace"
its trace over output units, sum_k <d f_k(x)/d theta, d f_k(y)/d theta>. Three exact implementations,
each run in blocks of samples sized to a memory budget:

    "jacobian"    per-sample Jacobians (torch.func: vmap of jacrev), contracted block by block
    "ntk-vp"      NTK-vector products: J(y)^T e_k by vjp, then J(x) (J(y)^T e_k) by jvp, vmapped;
                  the Jacobian of the x side is never formed
    "structured"  npk gated networks only: sums of per-layer Grams of layer inputs and output
                  cotangents, never an N x P Jacobian (see `npk.kernels.ntk_structured`)
    "auto"        "structured" for a gated network, else "jacobian" if a block of it fits the
                  budget, else "ntk-vp"

Parameter groups of an npk gated network: "value" = value_parameters(), "gating" =
gating_parameters(), "all" = every parameter; parameters outside the group are held fixed. A plain
nn.Module has only "all". For a DNN the value and gating groups are the same tensors, so all three
give the same kernel. Hard gates are step functions of the gating pre-activations: almost everywhere
the output does not change with the gating network's weights, so the gating NTK of a DGN / DLGN with
hard gates is exactly 0; with soft gates it is not.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ..models.base import GatedNet, check_input
from .gram import TileKernel, blocked_gram
from ..validate import check_gram_request
from .ntk_structured import Structured, add_feature_gram, select_layers

GROUPS = ("value", "gating", "all")
IMPLEMENTATIONS = ("jacobian", "ntk-vp", "structured", "auto")
OUTPUTS = ("trace", "full")
DEFAULT_MEMORY_BUDGET = 2**30  # bytes for one block pair's work (and cached features)
MIN_TRIANGLE_BLOCK = 128       # symmetric Grams of N >= 4 x this use at least 4 row blocks


def ntk_gram(model: nn.Module, X: torch.Tensor, Y: torch.Tensor | None = None, params: str = "all",
             implementation: str = "auto", outputs: str = "trace", memory_budget: int = DEFAULT_MEMORY_BUDGET,
             progress: bool | None = None, checkpoint_dir=None, *, out=None, max_memory: int | None = None,
             scheduler=None) -> torch.Tensor:
    """The empirical NTK Gram of `model` w.r.t. parameter group `params`: (N, M), or (N, M, K, K) if outputs="full".

    X (N, ...) and Y (M, ...) (None: Y = X) must have the model's parameter dtype and device; the model
    must map (n, ...) to (n, K). Every parameter of the group counts, frozen (requires_grad=False) or
    not. Tiles keep each one's estimated peak memory under `memory_budget` bytes (MemoryError,
    naming the implementations that fit, if not even a 1 x 1 tile does); `progress` shows a tqdm bar
    (None: only for 8 tiles or more). The Gram is filled by `npk.kernels.gram.blocked_gram`:
    `checkpoint_dir` (resume), `out` (array or .npy path), `max_memory` (preflight) and `scheduler`
    (Dask) work as in `npk.kernels.npk.npk_gram`.
    """
    _check_choice("params", params, GROUPS)
    _check_choice("implementation", implementation, IMPLEMENTATIONS)
    _check_choice("outputs", outputs, OUTPUTS)
    X, Y, symmetric = _check_inputs(model, X, Y)
    check_gram_request(X, Y, memory_budget)
    group = parameter_group(model, params)
    n_out, act = _probe(model, X)
    full = outputs == "full"
    with torch.no_grad(), _unchecked(model):
        method = _choose(implementation, model, params, group, n_out, act, full, memory_budget)
    kernel = NTKTiles(model, params, method, outputs, n_out, act, memory_budget, X.dtype)
    block = kernel.plan(len(X), len(Y), symmetric)
    return blocked_gram(kernel, X, None if symmetric else Y, block=block, out=out, checkpoint_dir=checkpoint_dir,
                        scheduler=scheduler, progress=progress, max_memory=max_memory, entry="ntk_gram")


def parameter_group(model: nn.Module, params: str) -> dict[str, nn.Parameter]:
    """{name: parameter} of the group: a gated network's value / gating / all parameters; "all" otherwise."""
    if isinstance(model, GatedNet):
        chosen = {"value": model.value_parameters, "gating": model.gating_parameters, "all": model.parameters}[params]()
    elif params == "all":
        chosen = model.parameters()
    else:
        raise ValueError(f"params={params!r} needs an npk gated network (npk.models.*); a plain "
                         f"{type(model).__name__} has no value / gating split, use params='all'")
    ids = {id(p) for p in chosen}
    group = {name: p for name, p in model.named_parameters() if id(p) in ids}
    if not group:
        others = [g for g in GROUPS[:2] if g != params and isinstance(model, GatedNet)
                  and any(True for _ in getattr(model, f"{g}_parameters")())]
        raise ValueError(f"{type(model).__name__} has no parameters in group {params!r}, so there is no NTK to "
                         f"compute" + (f"; groups with parameters: {others}" if others else ""))
    return group


# ------------------------------------------------------------------------------- implementations
class _Function:
    """f(theta, X): the model with the group's parameters replaced by theta, the rest held fixed."""

    def __init__(self, model: nn.Module, group: dict[str, nn.Parameter]):
        self.model = model
        self.params = {name: p.detach() for name, p in group.items()}
        self.n_params = sum(p.numel() for p in group.values())

    def __call__(self, theta: dict, X: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, theta, (X,))

    def single(self, theta: dict, x: torch.Tensor) -> torch.Tensor:
        return self(theta, x[None])[0]


class _Generic:
    """An implementation for any nn.Module: f's parameters, K outputs, `act` activations per sample."""

    def __init__(self, fn: _Function, n_out: int, act: int, full: bool, itemsize: int):
        self.fn, self.K, self.act, self.full, self.itemsize = fn, n_out, act, full, itemsize


class _Jacobian(_Generic):
    """K = sum over parameter tensors of J_x J_y^T, with J per sample from vmap(jacrev)."""

    name = "jacobian"

    def feature_bytes(self, n: int) -> int:
        return n * self.K * self.fn.n_params * self.itemsize

    def block_bytes(self, n: int, m: int) -> int:
        """Both sides' Jacobians, as much again for vmap's work while they are built, and the Gram block."""
        work = (n + m) * self.K * self.act + 2 * n * m * (self.K * self.K if self.full else 1)
        return 2 * self.feature_bytes(n + m) + work * self.itemsize

    def features(self, X: torch.Tensor) -> list[torch.Tensor]:
        """Per parameter tensor, the Jacobians d f_k(x) / d theta as (n, K, numel)."""
        J = vmap(jacrev(self.fn.single), in_dims=(None, 0))(self.fn.params, X)
        return [j.reshape(len(X), self.K, -1) for j in J.values()]

    def contract(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        n, m = len(fx[0]), len(fy[0])
        out = fx[0].new_zeros((n, m, self.K, self.K) if self.full else (n, m))
        for Jx, Jy in zip(fx, fy):
            add_feature_gram(out, Jx, Jy)
        return out


class _NtkVectorProducts(_Generic):
    """K(x, y)[:, k] = J_x (J_y^T e_k): vjps at each y, then jvps of the x block along them."""

    name = "ntk-vp"

    def feature_bytes(self, n: int) -> int:
        return 0  # the features are the inputs themselves

    def block_bytes(self, n: int, m: int) -> int:
        tangents = m * self.K * (self.fn.n_params + self.act)
        return (tangents + n * m * self.K * (2 * self.act + self.K)) * self.itemsize

    def features(self, X: torch.Tensor) -> torch.Tensor:
        return X

    def contract(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        fn, K, n, m = self.fn, self.K, len(X), len(Y)
        basis = torch.eye(K, dtype=X.dtype, device=X.device)

        def pullbacks(y):                                  # J_y^T e_k for every k: {name: (K, *shape)}
            return vmap(vjp(lambda theta: fn.single(theta, y), fn.params)[1])(basis)[0]

        def push(tangent):                                 # J_x tangent for the whole x block: (n, K)
            return jvp(lambda theta: fn(theta, X), (fn.params,), (tangent,))[1]

        tangents = {name: t.flatten(0, 1) for name, t in vmap(pullbacks)(Y).items()}
        out = vmap(push)(tangents).view(m, K, n, K).permute(2, 0, 3, 1)   # [x, y, k, k']
        return out if self.full else out.diagonal(dim1=2, dim2=3).sum(-1)


# --------------------------------------------------------------------------------- choosing
def _choose(implementation: str, model: nn.Module, params: str, group: dict, n_out: int, act: int,
            full: bool, budget: int):
    """The implementation object; a MemoryError names the ones whose smallest block fits the budget."""
    itemsize = next(iter(group.values())).element_size()
    fn = _Function(model, group)
    builders: dict[str, Callable] = {
        "jacobian": lambda: _Jacobian(fn, n_out, act, full, itemsize),
        "ntk-vp": lambda: _NtkVectorProducts(fn, n_out, act, full, itemsize),
    }
    structured_error = _structured_error(model, params, group)
    if structured_error is None:
        builders = {"structured": lambda: Structured(model, select_layers(model, params), n_out, full), **builders}
    elif implementation == "structured":
        raise ValueError(structured_error)
    if implementation != "auto":
        method = builders[implementation]()
        if method.block_bytes(1, 1) > budget:
            raise MemoryError(_no_fit_message(method, builders, budget))
        return method
    methods = [build() for build in builders.values()]
    for method in methods:
        if method.block_bytes(1, 1) <= budget:
            return method
    raise MemoryError(_no_fit_message(methods[0], builders, budget))


def _structured_error(model: nn.Module, params: str, group: dict) -> str | None:
    """Why "structured" cannot run on this model and group, or None if it can."""
    alternatives = "use implementation='jacobian' or 'ntk-vp'"
    if not isinstance(model, GatedNet):
        return (f"implementation='structured' needs an npk gated network (npk.models.*, or "
                f"npk.models.from_sequential for a ReLU nn.Sequential), got {type(model).__name__}; {alternatives}")
    covered = {id(p) for m in select_layers(model, params) for p in m.parameters()}
    extra = [name for name, p in group.items() if id(p) not in covered]
    if extra:
        return (f"implementation='structured' handles the weights of the op list's Linear / Conv layers only; "
                f"group {params!r} also has {extra}; {alternatives}")
    return None


def _no_fit_message(method, builders: dict, budget: int) -> str:
    needs = {name: build().block_bytes(1, 1) for name, build in builders.items()}
    fits = [f"'{name}' (needs {_mib(need)})" for name, need in needs.items() if need <= budget]
    advice = ("use implementation=" + " or ".join(fits)) if fits else "no implementation fits"
    return (f"implementation={method.name!r} needs about {_mib(needs[method.name])} for even a 1 x 1 block "
            f"(memory_budget={_mib(budget)}); {advice}, or raise memory_budget")


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


# --------------------------------------------------------------------------------- blocking
class NTKTiles(TileKernel):
    """The empirical NTK as a tile kernel: an implementation's features of a slice and their contraction."""

    name = "NTK"

    def __init__(self, model: nn.Module, params: str, method, outputs: str, n_out: int, act: int, budget: int,
                 dtype: torch.dtype):
        self.model, self.params, self.implementation, self.outputs = model, params, method.name, outputs
        self.n_out, self.act, self.budget, self.dtype = n_out, act, budget, dtype
        self.extra_shape = (n_out, n_out) if outputs == "full" else ()
        self.key = {"kernel": "ntk", "params": params, "implementation": method.name, "outputs": outputs,
                    "dtype": str(dtype)}
        self.cache_bytes, self._method = 0, method

    @property
    def method(self):
        """The implementation object (rebuilt from the model where the kernel was unpickled)."""
        if getattr(self, "_method", None) is None:
            group = parameter_group(self.model, self.params)
            with torch.no_grad(), _unchecked(self.model):
                self._method = _choose(self.implementation, self.model, self.params, group, self.n_out, self.act,
                                       self.outputs == "full", self.budget)
        return self._method

    def plan(self, N: int, M: int, symmetric: bool) -> int:
        """The tile side; column features are cached when they take at most half the budget."""
        method, budget = self.method, self.budget
        cached = method.feature_bytes(M) <= budget // 2 and method.block_bytes(1, 1) <= budget - method.feature_bytes(M)
        self.cache_bytes = method.feature_bytes(M) if cached else 0
        b = _largest_block(method, budget - self.cache_bytes, max(N, M))
        if symmetric and N >= 4 * MIN_TRIANGLE_BLOCK:   # 4+ row blocks: only the upper triangle (10/16) is computed
            b = min(b, max(MIN_TRIANGLE_BLOCK, -(-N // 4)))
        self.cache_blocks = -(-M // b) + 1 if cached else 2
        return b

    def prepare(self, xs):
        with torch.no_grad(), _unchecked(self.model):
            return self.method.features(xs)

    def tile(self, fx, fy) -> torch.Tensor:
        with torch.no_grad(), _unchecked(self.model):
            return self.method.contract(fx, fy)

    def work_bytes(self, n: int, m: int) -> int:
        return self.method.block_bytes(n, m) + self.cache_bytes


def _largest_block(method, budget: int, limit: int) -> int:
    """The largest b <= limit with block_bytes(b, b) <= budget (block_bytes grows with b)."""
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if method.block_bytes(mid, mid) <= budget else (lo, mid - 1)
    return lo


# ------------------------------------------------------------------------------------ checks
def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_inputs(model: nn.Module, X, Y) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """X and Y (Y = X when None) as checked tensors of the model's dtype and device."""
    if isinstance(model, GatedNet):
        X = model.check_input(X)
        Y = X if Y is None else check_input(Y, model.input_shape, "Y")
    else:
        X = _check_plain(X, None, "X")
        Y = X if Y is None else _check_plain(Y, tuple(X.shape[1:]), "Y")
    p = next(model.parameters(), None)
    if p is not None and (X.dtype != p.dtype or X.device != p.device or Y.dtype != p.dtype or Y.device != p.device):
        raise ValueError(f"X and Y must have the model's dtype and device ({p.dtype}, {p.device}), got "
                         f"{X.dtype}/{X.device} and {Y.dtype}/{Y.device}; convert the model (model.double(), "
                         f"model.to(device)) or the inputs")
    return X, Y, Y is X


def _check_plain(X, sample_shape, name: str) -> torch.Tensor:
    if not isinstance(X, torch.Tensor) or X.dim() < 2 or not X.is_floating_point():
        got = f"{X.dtype} tensor of shape {tuple(X.shape)}" if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"{name} must be a floating point tensor of shape (N, ...) (N samples), got {got}")
    if sample_shape is not None and tuple(X.shape[1:]) != sample_shape:
        raise ValueError(f"{name} must have samples of shape {sample_shape} like X, got {tuple(X.shape)}")
    if not torch.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf; clean or impute them first")
    return X


def _probe(model: nn.Module, X: torch.Tensor) -> tuple[int, int]:
    """(K, activation elements per sample) from a forward pass on X[:1]; ValueError unless it gives (1, K).

    The activation count (outputs of all leaf modules, times 3 for gates and products) is an estimate
    used only to size blocks.
    """
    sizes = []
    handles = [m.register_forward_hook(lambda mod, args, out: sizes.append(out.numel() if torch.is_tensor(out) else 0))
               for m in model.modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            y = model(X[:1])
    finally:
        for h in handles:
            h.remove()
    if not torch.is_tensor(y) or y.dim() != 2 or y.shape[0] != 1:
        shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"the model must map a batch of n inputs to outputs of shape (n, K); for one input it "
                         f"returned {shape}; make it return 2-D outputs (e.g. y[:, None] for a single output "
                         f"unit, y.flatten(1) for several output axes)")
    return y.shape[1], 3 * sum(sizes) + y.shape[1]


@contextlib.contextmanager
def _unchecked(model: nn.Module):
    """A gated network's per-call input check (data-dependent, so it cannot run under vmap) switched off.

    ntk_gram has checked X and Y already; blocks of them need no second check.
    """
    if not isinstance(model, GatedNet) or "check_input" in vars(model):   # not gated, or already switched off
        yield
        return
    model.check_input = lambda X: X
    try:
        yield
    finally:
        del model.check_input
