"""The training regimes of the NPF/NPK paper, as functions from a template model to a new model.

A *template* is a freshly initialised model of the wanted architecture (any GatedNet: FC, conv,
residual); its value weights become the new model's initial value weights, so regimes built from one
template start from the same value network. The template itself is never changed.

    ReLU       the plain DNN, hard gates                                   relu(template)
    DLNPF      decoupled learning: a DGN with soft gates (1 + eps) sigmoid(beta q), gating and value
               networks both trained                                       decoupled(template)
    FLNPF      fixed learnt gates: the gating network is a frozen copy of a trained ReLU network's
               best checkpoint (hard gates); the value network is freshly initialised, independently
               of the template and of the ReLU network          fixed_learnt_gates(dnn, fresh_value_network(template))
    FRNPF-II   fixed random gates, gating network initialised independently of the value network
               (frozen, hard gates)                                        fixed_random_gates(template)
    FRNPF-DI   fixed random gates, the value network starts as a copy of the gating network
               (dependent initialisation)                                  fixed_random_gates(template, True)

Source of every protocol: the NPF/NPK paper (Lakshminarayanan and Singh, NeurIPS 2020, arXiv
2006.10529) and its code, as summarised in PAPER.md section 3 ("names as in its code"); each function
names the point it follows. `fixed_learnt_gates(dnn, template)` (the value network starting from the
ReLU network's own initial weights) is not the paper's FLNPF: it asks whether the learnt gates alone,
with the *same* initial values, recover the ReLU network, and is kept as that option only.

`gate_copy` is FLNPF from a saved state (the gate-copying study; the state at initialisation gives
FRNPF-II), `shuffled_gates` permutes the units (channels) of every gated layer, or the gated layers
themselves, the same way for every input, and `dnn_as_dgn` rewrites a ReLU network as the DGN that
computes the same function (its gating network a copy of its hidden layers).

The fresh gating networks of DLNPF and FRNPF-II get He normal weights from the global torch RNG
(`GatedNet.with_gating`): seed with torch.manual_seed. That is the FC and conv initialisation; a
ResNet's extra scaling of each block's last layer is not applied to them. FLNPF's fresh value network
comes from a private generator seeded by one draw of the global RNG (`fresh_value_network`).

A DGN's gating layers mirror its value layers without the readout (`npk.graph.clone_for_gating`), so
gating layer l and value layer l have the same shape and copying between them is one state_dict.
"""
from __future__ import annotations

import copy
import math
import os
from typing import Callable, Mapping

import torch
from torch import nn

from .. import graph
from ..files import load_pt
from .base import GatedNet
from .init import init_weights
from .resnet import ResNet, scale_block_outputs


def freeze(module: nn.Module) -> nn.Module:
    """Set requires_grad False on every parameter of `module` (the trainer then leaves them fixed)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def relu(template: GatedNet) -> GatedNet:
    """ReLU: the plain DNN with hard gates, starting from the template's value weights (NPF/NPK paper, "ReLU")."""
    return _check_model(template, "template").with_gating("self", gate="hard")


def decoupled(template: GatedNet, *, beta: float = 4.0, eps: float = 0.1) -> GatedNet:
    """DLNPF: a DGN with soft gates (1 + eps) sigmoid(beta q) and a fresh gating network; both train.

    Source: the NPF/NPK paper's DLNPF, with its code's beta = 4, eps = 0.1 (PAPER.md sections 1 and 3).
    """
    return _check_model(template, "template").with_gating("relu", gate="soft", beta=beta, eps=eps)


def fixed_random_gates(template: GatedNet, dependent: bool = False) -> GatedNet:
    """FRNPF: a DGN with hard gates from a random gating network that stays frozen.

    dependent=False (FRNPF-II): the gating network is drawn independently of the value network.
    dependent=True (FRNPF-DI): the gating network is a copy of the value network's hidden layers, so
    at initialisation the value weights equal the gating weights (and the model equals the DNN).
    Source: the NPF/NPK paper's FRNPF-II (GaLU) and FRNPF-DI (PAPER.md section 3).
    """
    model = _check_model(template, "template").with_gating("relu", gate="hard")
    if dependent:
        _copy_hidden_to_gating(model, model)
    freeze(model.gating_layers)
    return model


def dnn_as_dgn(dnn: GatedNet) -> GatedNet:
    """The DGN whose gating network is a copy of the ReLU network's hidden layers: the same function.

    With hard gates the DNN's hidden activations relu(q) are exactly the gating network's, so the
    gates, and hence the outputs, are identical. Nothing is frozen.
    """
    _check_dnn(dnn)
    model = dnn.with_gating("relu")
    _copy_hidden_to_gating(model, dnn)
    return model


def fixed_learnt_gates(trained_dnn: GatedNet, value_init: GatedNet | None = None) -> GatedNet:
    """FLNPF: hard gates from a frozen copy of a trained ReLU network; the value network starts afresh.

    The value network starts from `value_init`'s value weights (a model of the same architecture), or,
    without it, from `fresh_value_network(trained_dnn)`: independent of the trained network and of its
    initialisation. The gates equal the trained DNN's gates on every input. Source: the NPF/NPK paper's
    FLNPF (gates copied from the ReLU network's best checkpoint, value network trained from scratch;
    PAPER.md section 3). Passing the ReLU network's own initial weights as `value_init` is a different
    experiment (do the learnt gates with the same initial values recover the network?), not FLNPF.

    Example:
        >>> flnpf = fixed_learnt_gates(trained, fresh_value_network(template))
    """
    model = dnn_as_dgn(trained_dnn)
    value_init = fresh_value_network(trained_dnn) if value_init is None else value_init
    _check_model(value_init, "value_init")
    _check_same_shapes(value_init, trained_dnn)
    model.value_layers.load_state_dict(value_init.value_layers.state_dict())
    freeze(model.gating_layers)
    return model


@torch.no_grad()
def fresh_value_network(template: GatedNet) -> GatedNet:
    """A copy of `template` whose value weights are redrawn, independently of the template's.

    He normal weights (std sqrt(2 / fan_in)), zero biases and, for a ResNet, its block-output scaling
    1 / sqrt(blocks), drawn from a private generator seeded by one draw of the global torch RNG: seeded
    by torch.manual_seed, yet never equal to a network drawn from the global RNG with that same seed.
    """
    model = copy.deepcopy(_check_model(template, "template"))
    generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    init_weights(model.value_layers, generator=generator)
    if isinstance(model, ResNet):  # scale the value blocks only: a gating network keeps its weights
        gating = copy.deepcopy(model.gating_layers.state_dict())
        scale_block_outputs(model, 1 / math.sqrt(sum(isinstance(op, graph.Residual) for op in model.ops)))
        model.gating_layers.load_state_dict(gating)
    return model


def gate_copy(template: GatedNet, checkpoint: str | os.PathLike | Mapping) -> GatedNet:
    """FLNPF with gates from a saved ReLU network and a fresh value network: the gate-copying study.

    `checkpoint` is a DNN state_dict of the template's architecture (e.g. `TrainResult.best_state`,
    or one recorded by a training callback at some epoch), a checkpoint dict with a "model" entry
    (as written by `npk.train.train`), or the path of a file holding either. The value network is
    `fresh_value_network(template)`, so the template's own initial state gives FRNPF-II (random gates
    independent of the values). Source: the NPF/NPK paper's gate-copying study, which copies the ReLU
    network's best checkpoint so far (choosing that state is the caller's: `npk.experiments.gate_copy`).
    """
    _check_dnn(template)
    state = load_pt(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint must be a state_dict, a checkpoint dict or a path, got {type(state).__name__}")
    state = state.get("model", state)
    trained = copy.deepcopy(template)
    try:
        trained.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"the checkpoint does not fit the template's architecture: {err}") from err
    return fixed_learnt_gates(trained, fresh_value_network(template))


SHUFFLES = ("units", "layers")


def shuffled_gates(model: GatedNet, seed: int = 0, over: str = "units") -> GatedNet:
    """A copy whose gates are permuted, the same way for every input: along the units of every gated layer
    (over="units") or across the gated layers (over="layers").

    units:  layer l's gates become G_l[:, pi_l], one random permutation pi_l per layer (seeded). In a fully
            connected net the NPK is unchanged, G_l P (G_l P)^T = G_l G_l^T: a relabelling, the control.
    layers: layer l's gates become G_{pi(l)}, one random permutation pi of the layers that moves at least
            one layer (seeded; needs two gated layers of equal gate shape). The fully connected NPK,
            <x, x'> prod_l overlap_l, is a product over layers, so it is unchanged when the widths agree;
            convolutions, with their sums over offsets between layers, do not commute like that
            (`npk.theory.layer_permutation` measures both). This reading of 2203.16455's "the gating masks
            can be shuffled" is the layer one; the unit one cannot change anything the NPK sees.
    A DNN is first rewritten as the DGN with its own gates (`dnn_as_dgn`).

    Example:
        >>> shuffled = shuffled_gates(dlgn, seed=1, over="layers")
    """
    _check_model(model, "model")
    if over not in SHUFFLES:
        raise ValueError(f"over must be one of {SHUFFLES} (permute the units of each layer, or the layers), "
                         f"got {over!r}")
    shuffled = dnn_as_dgn(model) if model.gating == "self" else copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    if over == "units":
        param = next(shuffled.parameters())
        with torch.no_grad():
            probe = torch.zeros((1, *shuffled.input_shape), dtype=param.dtype, device=param.device)
            units = [g.shape[1] for g in shuffled.gates(probe)]      # channels per gated layer, any op list
        shuffled.set_gate_permutations([torch.randperm(n, generator=generator) for n in units])
        return shuffled
    if shuffled.n_gated < 2:
        raise ValueError(f"a layer permutation needs at least two gated layers, the model has {shuffled.n_gated}")
    order = list(range(shuffled.n_gated))
    while order == list(range(shuffled.n_gated)):
        order = torch.randperm(shuffled.n_gated, generator=generator).tolist()
    shuffled.set_layer_order(order)
    return shuffled


REGIMES: dict[str, Callable[[GatedNet, GatedNet | None], GatedNet]] = {
    "FRNPF-II": lambda template, trained_dnn: fixed_random_gates(template, dependent=False),
    "FRNPF-DI": lambda template, trained_dnn: fixed_random_gates(template, dependent=True),
    "DLNPF": lambda template, trained_dnn: decoupled(template),
    "FLNPF": lambda template, trained_dnn: fixed_learnt_gates(trained_dnn, fresh_value_network(template)),
    "ReLU": lambda template, trained_dnn: relu(template),
}


def make_regime(name: str, template: GatedNet, trained_dnn: GatedNet | None = None) -> GatedNet:
    """The model of regime `name` (a key of REGIMES) built from `template`; FLNPF needs `trained_dnn`.

    Every regime but FLNPF starts from the template's value weights; FLNPF's are fresh (see
    `fixed_learnt_gates`). Seed the global torch RNG first: fresh networks are drawn from it.
    """
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}; known regimes: {', '.join(REGIMES)}")
    if name == "FLNPF" and trained_dnn is None:
        raise ValueError("FLNPF copies the gates of a trained ReLU network: pass trained_dnn= (e.g. the DNN "
                         "trained with regime 'ReLU', loaded from its best checkpoint)")
    return REGIMES[name](template, trained_dnn)


# ------------------------------------------------------------------------------------------ helpers
def _check_model(model, name: str) -> GatedNet:
    if not isinstance(model, GatedNet):
        raise TypeError(f"{name} must be an npk gated model (npk.models.DNN, ConvDNN, ...), got {type(model).__name__}")
    return model


def _check_dnn(model) -> None:
    _check_model(model, "the ReLU network")
    if model.gating != "self" or model.gate_kind != "hard":
        raise ValueError(f"need a ReLU network (a DNN with hard gates) to copy gates from, got a "
                         f"{type(model).__name__} with gating {model.gating!r} and {model.gate_kind!r} gates")


def _check_same_shapes(a: GatedNet, b: GatedNet) -> None:
    shapes_a = [tuple(p.shape) for p in a.value_parameters()]
    shapes_b = [tuple(p.shape) for p in b.value_parameters()]
    if shapes_a != shapes_b or a.input_shape != b.input_shape:
        raise ValueError(f"the template and the trained network must have the same architecture; value "
                         f"parameter shapes {shapes_a} vs {shapes_b}")


@torch.no_grad()
def _copy_hidden_to_gating(model: GatedNet, source: GatedNet) -> None:
    """Gating layer l of `model` <- value layer l of `source` (every value layer but the readout)."""
    hidden = nn.ModuleList(list(source.value_layers)[:-1])
    model.gating_layers.load_state_dict(hidden.state_dict())
