"""neural-tangents as the independent reference for the empirical NTK (optional extra: pip install -e .[ntref]).

`nt_ntk_fn(model, implementation, outputs)` rebuilds an npk ReLU network (a DNN with hard gates:
Linear / Conv2d layers, gates, global average pooling, readout) as the equivalent stax model with
the same weights, and returns neural-tangents' jit-compiled empirical NTK of it. PyTorch's y = x W^T + b
is stax's "standard" parameterization y = x W + b with W transposed; convolutions run channels-last
(NHWC inputs, HWIO kernels). JAX runs in float64 so that the comparison can be exact.
"""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import torch

from .. import graph
from ..models.base import GatedNet

NT_IMPLEMENTATIONS = {"jacobian": "JACOBIAN_CONTRACTION", "ntk-vp": "NTK_VECTOR_PRODUCTS",
                      "structured": "STRUCTURED_DERIVATIVES"}
_PADDINGS = {"zeros": "SAME", "circular": "CIRCULAR"}


def neural_tangents():
    """Import neural_tangents with JAX in float64 and the shim its structured derivatives need on jax 0.4.38.

    Its TensorFlow interop (neural_tangents.experimental, unused here) is replaced by an empty module
    unless neural_tangents is already loaded: importing TensorFlow takes about 25 s.
    """
    if "neural_tangents" not in sys.modules:
        sys.modules.setdefault("neural_tangents.experimental", types.ModuleType("neural_tangents.experimental"))
    import jax
    jax.config.update("jax_enable_x64", True)
    from jax.extend import source_info_util
    from jax.interpreters import ad
    ad.source_info_util = source_info_util
    ad.config = jax.config
    return importlib.import_module("neural_tangents")


def to_jax(X: torch.Tensor):
    """A torch batch (N, C, *spatial) as a channels-last JAX array (N, *spatial, C)."""
    import jax.numpy as jnp
    x = X.detach().cpu()
    if x.dim() > 2:
        x = x.permute(0, *range(2, x.dim()), 1)
    return jnp.asarray(x.numpy())


def stax_model(model: GatedNet):
    """(apply_fn, params): the stax network computing the same function as `model` with its weights."""
    from neural_tangents import stax
    if model.gating != "self" or model.gate_kind != "hard" or model.gate_permutations is not None:
        raise ValueError("the neural-tangents reference rebuilds plain ReLU networks only: a DNN / ConvDNN "
                         "with hard gates and no gate permutations")
    layers, params = [], []
    for op in model.ops:
        if isinstance(op, (graph.Linear, graph.Readout)):
            layer, p = _weight_layer(op.module, stax)
        elif isinstance(op, graph.Gate):
            layer, p = stax.Relu(), ()
        elif isinstance(op, graph.GlobalAvgPool):
            layer, p = stax.GlobalAvgPool(), ()
        else:
            raise ValueError(f"the neural-tangents reference supports Linear, Conv2d, Gate, GlobalAvgPool and "
                             f"Readout ops, got {op!r}")
        layers.append(layer)
        params.append(p)
    init_fn, apply_fn, _ = stax.serial(*layers)
    _check_shapes(init_fn, model, params)
    return apply_fn, params


def _weight_layer(module: torch.nn.Module, stax):
    import jax.numpy as jnp
    W = module.weight.detach().cpu().numpy()
    b_std = None if module.bias is None else 1.0
    if isinstance(module, torch.nn.Linear):
        layer = stax.Dense(W.shape[0], b_std=b_std, parameterization="standard")
        W_nt, b_shape = W.T, (1, W.shape[0])
    elif isinstance(module, torch.nn.Conv2d):
        layer = stax.Conv(W.shape[0], module.kernel_size, padding=_PADDINGS[module.padding_mode], b_std=b_std,
                          parameterization="standard")
        W_nt, b_shape = W.transpose(2, 3, 1, 0), (1, 1, 1, W.shape[0])
    else:
        raise ValueError(f"the neural-tangents reference supports nn.Linear and nn.Conv2d layers, got {module}")
    b = None if module.bias is None else jnp.asarray(module.bias.detach().cpu().numpy().reshape(b_shape))
    return layer, (jnp.asarray(W_nt), b)


def _check_shapes(init_fn, model: GatedNet, params: list) -> None:
    import jax
    shape = (1, *model.input_shape[1:], model.input_shape[0]) if len(model.input_shape) > 1 else (1, *model.input_shape)
    _, expected = init_fn(jax.random.PRNGKey(0), shape)
    got = jax.tree_util.tree_map(np.shape, params)
    if got != jax.tree_util.tree_map(np.shape, expected):
        raise AssertionError(f"converted parameter shapes {got} differ from stax's {expected}")


def nt_ntk_fn(model: GatedNet, implementation: str = "structured", outputs: str = "trace"):
    """fn(x1, x2=None) -> neural-tangents' jit-compiled empirical NTK of `model`, (N, M) or (N, M, K, K).

    x1, x2 are channels-last JAX arrays (`to_jax`); implementation is "jacobian", "ntk-vp" or "structured".
    Note: neural-tangents' trace over the output axis is the *mean* over the K output units, so for
    outputs="trace" it is npk's ntk_gram (the sum over output units) divided by K.
    """
    nt = neural_tangents()
    import jax
    apply_fn, params = stax_model(model)
    fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,) if outputs == "trace" else (), vmap_axes=0,
                             implementation=getattr(nt.NtkImplementation, NT_IMPLEMENTATIONS[implementation]))
    jitted = jax.jit(fn)
    return lambda x1, x2=None: jitted(x1, x2, params)
