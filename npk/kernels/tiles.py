"""The tile contract: what a kernel implements so that the Gram driver (`npk.kernels.gram`) can fill a
Gram with it, serially or on Dask workers (`npk.kernels.dist`)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class TileKernel:
    """A kernel the driver can fill a Gram with. To add one, subclass and define:

        tile(fx, fy) -> tensor (n, m, *extra_shape)   the kernel between the features of two input slices
        name, dtype, extra_shape                       for the progress bar and the output
        note: str                                      shown on the progress bar (e.g. an estimate)
        key: dict                                      options that change the values (JSON), for the store
    and, when the default does not fit:
        prepare(xs) -> features of a slice of inputs   default: the slice itself
        work_bytes(n, m) -> int                        peak bytes of one tile with its features (default 0)
        cache_blocks: int                              how many blocks' features to keep (default 2)
    Inputs are a tensor or a tuple of sample-indexed objects (sliced together). Attributes that are
    nn.Modules travel to Dask workers as their module tree and state dict; attributes whose name starts
    with "_" are caches, rebuilt where the kernel runs.
    """

    name = "Gram"
    note = ""
    dtype = torch.float64
    extra_shape: tuple[int, ...] = ()
    key: dict = {}
    cache_blocks = 2

    def prepare(self, xs):
        return xs

    def tile(self, fx, fy) -> torch.Tensor:
        raise NotImplementedError

    def work_bytes(self, n: int, m: int) -> int:
        return 0

    def compute(self, xs, ys) -> torch.Tensor:
        """The tile of two input slices (what a Dask task runs)."""
        return self.tile(self.prepare(xs), self.prepare(ys))

    def modules(self) -> list[nn.Module]:
        return [v for v in vars(self).values() if isinstance(v, nn.Module)]

    def __getstate__(self) -> dict:
        return {k: _ModelParcel(v) if isinstance(v, nn.Module) else v for k, v in vars(self).items()
                if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({k: v.rebuild() if isinstance(v, _ModelParcel) else v for k, v in state.items()})


class _ModelParcel:
    """A model as its module tree without weights (on the meta device) and its state dict."""

    def __init__(self, model: nn.Module):
        self.skeleton = copy.deepcopy(model).to("meta")
        self.state = {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def rebuild(self) -> nn.Module:
        model = copy.deepcopy(self.skeleton).to_empty(device="cpu")
        model.load_state_dict(self.state)
        return model.eval()


def take(inputs, rows: slice):
    """The rows of sample-indexed inputs: a tensor, or a tuple of them (sliced together)."""
    return tuple(x[rows] for x in inputs) if isinstance(inputs, tuple) else inputs[rows]
