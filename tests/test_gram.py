"""The blocked-Gram driver: tiles, compact gates, preflight, out-of-core output and the tile store."""
import os
import socket
import threading

import numpy as np
import pytest
import torch

from npk.kernels import compact, conv_fast, cost, gram
from npk.kernels.gram import TileKernel, blocked_gram, preflight
from npk.kernels.infinite import expected_npk
from npk.kernels.npk import DEFAULT_MEMORY_BUDGET, TILE_SECONDS, NPKTiles, block_size, npk_gram
from npk.kernels.ntk import ntk_gram
from npk.kernels.reference import reference_npk
from npk.files import atomic_write
from npk.kernels.store import TileStore
from npk.models import C4GAP, DGN, ConvDGN, ConvDNN

from helpers import lock_holder


class Dot(TileKernel):
    """<x, y>, counting its tiles."""

    def __init__(self):
        self.calls = 0

    def tile(self, fx, fy):
        self.calls += 1
        return fx @ fy.T


def data(n, d=4, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def conv_model(gate="hard", seed=0):
    torch.manual_seed(seed)
    return ConvDGN(1, [3, 2], input_size=5, d_out=2, gate=gate).double()


def images(n, seed=0):
    return torch.randn(n, 1, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------- tiles
def test_symmetric_grams_compute_only_the_upper_tiles_and_mirror_them():
    X, Y = data(10), data(7, seed=1)
    kernel = Dot()
    H = blocked_gram(kernel, X, block=3)
    assert kernel.calls == 4 * 5 // 2                      # 4 row tiles: 10 of the 16 tiles
    assert torch.allclose(H, X @ X.T, rtol=0, atol=1e-14) and torch.equal(H, H.T)
    kernel = Dot()
    assert torch.allclose(blocked_gram(kernel, X, Y, block=3), X @ Y.T, rtol=0, atol=1e-14)
    assert kernel.calls == 4 * 3


def test_every_entry_point_fills_its_gram_through_the_driver(monkeypatch):
    seen = []
    original = gram.blocked_gram

    def spy(kernel, *args, **kwargs):
        seen.append(type(kernel).__name__)
        return original(kernel, *args, **kwargs)
    for module in ("npk.kernels.npk", "npk.kernels.ntk", "npk.kernels.infinite"):
        monkeypatch.setattr(f"{module}.blocked_gram", spy)
    model, X = conv_model(), images(4)
    npk_gram(model, X), ntk_gram(model, X), expected_npk(model, X)
    assert seen == ["NPKTiles", "NTKTiles", "ExpectedTiles"]


# ---------------------------------------------------------------------------------- gates
@pytest.mark.parametrize("gate", ["hard", "soft"])
def test_compact_gates_are_exact_and_per_tile_gates_give_the_same_gram(gate):
    model, X = conv_model(gate), images(9)
    gates = model.gates(X)
    stored = compact.compute_gates(model, X, gate, rows=4)
    assert all(torch.equal(a, b) for a, b in zip(compact.unpack_gates(stored, torch.float64), gates))
    if gate == "hard":
        assert isinstance(stored, compact.PackedGates) and stored.nbytes == 9 * (25 + 25)    # one byte per position for 3 and 2 channels
    H = npk_gram(model, X, memory_budget=100_000)            # gates of all inputs, compact
    whole_run = conv_fast.takes_inputs_to_pool(model, gate, X.dtype, X.device)   # npk_gram's tile size
    per_tile = NPKTiles(model, gate, X.dtype, 100_000, whole_run)
    per_tile.precomputed = False                            # gates recomputed for every tile's inputs
    assert torch.equal(blocked_gram(per_tile, X, block=block_size(model, 8, 100_000, whole_run, len(X))), H)
    assert (H - reference_npk(model, X)).abs().max() < 1e-10 * H.abs().max()


@pytest.mark.usefixtures("p2_tiles")
def test_gates_that_do_not_fit_beside_the_gram_are_computed_per_tile(monkeypatch):
    model, X = conv_model(), images(9)
    H = npk_gram(model, X, memory_budget=100_000)
    kernel = NPKTiles(model, "hard", X.dtype, 100_000)
    block = block_size(model, 8, 100_000)
    just_short = 9 * 9 * 8 + kernel.work_bytes(block, block) + kernel.gate_bytes(9)   # room for half the gates
    monkeypatch.setattr(NPKTiles, "all_gates", lambda *a: pytest.fail("gates of all inputs were computed"))
    assert torch.equal(npk_gram(model, X, memory_budget=100_000, max_memory=just_short), H)


def test_a_conv_net_fused_from_its_inputs_to_the_pool_gets_tiles_sized_by_time_not_by_p2():
    """C4GAP-16 on 32x32 images: its P^2 pair kernels (16 MiB a pair) would make every tile one pair, and
    with a store one record file per pair; the fused run keeps 63 diagonal sums a pair, so a tile holds about
    TILE_SECONDS of estimated single-thread work, and at most 1/8 of the samples (diagonal tiles are whole)."""
    model = ConvDNN(3, [16] * 4, d_out=10, input_size=32)
    cpu = torch.device("cpu")
    assert conv_fast.takes_inputs_to_pool(model, "hard", torch.float32, cpu)
    assert not conv_fast.takes_inputs_to_pool(model, "soft", torch.float32, cpu)         # float gates: no fused run
    assert not conv_fast.takes_inputs_to_pool(ConvDNN(3, [16] * 4, d_out=10, input_size=32, pool_every=[1]),
                                              "hard", torch.float32, cpu)               # a max pool ends the run
    with conv_fast.backend("torch"):
        assert not conv_fast.takes_inputs_to_pool(model, "hard", torch.float32, cpu)
    assert block_size(model, 4, DEFAULT_MEMORY_BUDGET) == 1
    block = block_size(model, 4, DEFAULT_MEMORY_BUDGET, whole_run=True, samples=10_000)
    ms = cost.estimate(model, 4).ms_per_pair
    assert block >= 20 and block ** 2 * ms <= TILE_SECONDS * 1e3 < (block + 1) ** 2 * ms
    assert block_size(model, 4, DEFAULT_MEMORY_BUDGET, whole_run=True, samples=100) == 13   # 1/8 of the samples


def test_packing_refuses_soft_gates():
    with pytest.raises(ValueError, match="only hard gates"):
        compact.pack_gates([torch.tensor([[0.5, 1.0]])])


def test_cifar10_c4gap128_hard_gates_take_a_32nd_of_their_float32_bytes():
    """Computed from the gate shapes (nothing allocated): 50,000 x 524,288 gates."""
    shapes = compact.gate_shapes(C4GAP("dnn", width=128, input_size=32))
    assert compact.gates_per_sample(shapes) == 4 * 128 * 32 * 32
    float32 = compact.gate_bytes(shapes, 50_000, "soft", 4)
    packed = compact.gate_bytes(shapes, 50_000, "hard", 4)
    assert float32 == 104_857_600_000 and packed == 3_276_800_000
    assert packed <= float32 / 16


# ------------------------------------------------------------------------------ preflight
def test_a_gram_that_cannot_fit_is_refused_up_front_with_what_to_change():
    model = DGN(64, [8, 8], 1).double()
    X = data(20_000, d=64)
    with pytest.raises(MemoryError, match=r"npk_gram needs about 3.01 GiB \(Gram 2.98 GiB, one tile 32.2 MiB\) but max_memory is 1 GiB; "
                                          r"use a smaller N, out= a .npy file"):
        npk_gram(model, X, max_memory=2**30)
    with pytest.raises(MemoryError, match="ntk_gram needs about"):
        ntk_gram(model, X[:2000], max_memory=2**20)


def test_experiments_refuse_grams_that_cannot_fit_before_computing_them():
    with pytest.raises(MemoryError, match=r"regimes needs about 23.4 GiB \(Grams 22.4 GiB, one tile 1 GiB\) but "
                                          r"max_memory is 16 GiB"):
        gram.preflight_grams("regimes", [(50_000, None), (10_000, 50_000)], max_memory=16 * 2**30)
    assert gram.preflight_grams("regimes", [(100, None)], max_memory=2**31) == 100 * 100 * 8 + 2**30


def test_preflight_counts_every_part_and_passes_under_the_limit():
    assert preflight("x", {"Gram": 10, "gates": 5}, max_memory=15) == 15
    with pytest.raises(MemoryError, match=r"x needs about 16 B \(Gram 10 B, gates 6 B\) but max_memory is 15 B"):
        preflight("x", {"Gram": 10, "gates": 6}, max_memory=15)


# ---------------------------------------------------------------------------------- output
def test_a_gram_written_to_a_npy_file_or_a_memmap_equals_the_in_memory_one(tmp_path):
    model, X, Y = conv_model(), images(7), images(4, seed=1)
    for Y_ in (None, Y):
        H = npk_gram(model, X, Y_, memory_budget=100_000)
        path = tmp_path / f"H{Y_ is None}.npy"
        Hf = npk_gram(model, X, Y_, memory_budget=100_000, out=path)
        assert torch.equal(Hf, H) and np.array_equal(np.load(path), H.numpy())
    mm = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float64, shape=(7, 7))
    npk_gram(model, X, memory_budget=100_000, out=mm)
    assert np.array_equal(mm, npk_gram(model, X, memory_budget=100_000).numpy())
    with pytest.raises(ValueError, match=r"out must have shape \(7, 7\) and dtype float64"):
        npk_gram(model, X, out=np.zeros((7, 7), np.float32))


def test_the_full_ntk_is_mirrored_with_its_output_axes_swapped(tmp_path):
    model, X = conv_model(), images(6)
    H = ntk_gram(model, X, outputs="full", memory_budget=2**16)
    direct = ntk_gram(model, X, X.clone(), outputs="full", memory_budget=2**16)
    assert torch.allclose(H, direct, rtol=0, atol=1e-12)
    assert torch.equal(ntk_gram(model, X, outputs="full", memory_budget=2**16, out=tmp_path / "K.npy"), H)


# ----------------------------------------------------------------------------------- store
@pytest.mark.usefixtures("p2_tiles")
def test_a_rerun_loads_every_tile_from_the_store(tmp_path, monkeypatch):
    model, X = conv_model(), images(7)
    H = npk_gram(model, X, memory_budget=100_000, checkpoint_dir=tmp_path)
    assert len(list(tmp_path.glob("tile_*.pt"))) == 4 * 5 // 2
    monkeypatch.setattr(NPKTiles, "tile", lambda *a: pytest.fail("a stored tile was recomputed"))
    assert torch.equal(npk_gram(model, X, memory_budget=100_000, checkpoint_dir=tmp_path), H)


@pytest.mark.usefixtures("p2_tiles")
def test_an_out_file_resumes_and_recomputes_only_missing_tiles(tmp_path, monkeypatch):
    model, X = conv_model(), images(7)
    path, store = tmp_path / "H.npy", tmp_path / "store"
    H = npk_gram(model, X, memory_budget=100_000, out=path, checkpoint_dir=store)
    assert "tile" not in torch.load(store / "tile_0_0.pt", weights_only=True)       # records only: data in H.npy
    (store / "tile_1_2.pt").unlink()
    calls = []
    original = NPKTiles.tile
    monkeypatch.setattr(NPKTiles, "tile", lambda self, fx, fy: calls.append(1) or original(self, fx, fy))
    assert torch.equal(npk_gram(model, X, memory_budget=100_000, out=path, checkpoint_dir=store), H)
    assert len(calls) == 1


@pytest.mark.usefixtures("p2_tiles")
@pytest.mark.parametrize("change,part", [("weights", "model"), ("inputs", "inputs"), ("gates", "kernel"),
                                         ("budget", "tiling")])
def test_a_store_of_another_gram_is_refused_naming_what_differs(tmp_path, change, part):
    model, X = conv_model(), images(6)
    npk_gram(model, X, memory_budget=100_000, checkpoint_dir=tmp_path)
    kwargs = dict(memory_budget=100_000, checkpoint_dir=tmp_path)
    if change == "weights":
        model = conv_model(seed=1)                 # same architecture and shapes, other weights
    elif change == "inputs":
        X = images(6, seed=5)                      # same shape, other values
    elif change == "gates":
        kwargs["gates"] = "soft"
    else:
        kwargs["memory_budget"] = 200_000
    with pytest.raises(ValueError, match=rf"holds tiles of another Gram \({part} differ"):
        npk_gram(model, X, **kwargs)


@pytest.mark.usefixtures("p2_tiles")
@pytest.mark.parametrize("damage", ["truncate", "random bytes", "other tile"])
def test_a_corrupt_tile_is_recomputed_with_a_warning_naming_its_file(tmp_path, damage):
    model, X = conv_model(), images(7)
    H = npk_gram(model, X, memory_budget=100_000, checkpoint_dir=tmp_path)
    bad = tmp_path / "tile_0_1.pt"
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:100])
    elif damage == "random bytes":
        bad.write_bytes(os.urandom(2000))
    else:                                          # a valid file whose tile does not match its checksum
        record = torch.load(bad, weights_only=True)
        torch.save({"sha256": record["sha256"], "tile": record["tile"] + 1}, bad)
    with pytest.warns(UserWarning, match=f"{bad}.*recomputing that tile"):
        again = npk_gram(model, X, memory_budget=100_000, checkpoint_dir=tmp_path)
    assert torch.equal(again, H)


@pytest.mark.slow
def test_a_store_in_use_by_a_live_process_is_refused_and_a_dead_ones_claim_is_taken_over(tmp_path):
    model, X = conv_model(), images(5)
    holder = lock_holder(tmp_path / "lock")
    try:
        with pytest.raises(RuntimeError, match=f"in use by pid {holder.pid} since .* on {socket.gethostname()}"):
            npk_gram(model, X, checkpoint_dir=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    H = npk_gram(model, X, checkpoint_dir=tmp_path)                  # the holder is dead: its claim is stale
    assert torch.equal(H, npk_gram(model, X)) and not (tmp_path / "lock").exists()


def test_store_records_load_with_weights_only(tmp_path, monkeypatch):
    loads = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or original(*a, **k))
    with TileStore(tmp_path, {"tiling": 1}) as store:
        store.save(0, 0, torch.ones(2, 2))
        assert torch.equal(store.load(0, 0), torch.ones(2, 2))
    assert loads == [True]


def test_concurrent_writers_of_one_file_never_share_a_temporary_name(tmp_path):
    errors = []

    def writer(k):
        try:
            for _ in range(30):
                atomic_write(tmp_path / "f.pt", lambda tmp: torch.save(torch.full((100,), float(k)), tmp))
        except Exception as err:           # noqa: BLE001  (any failure fails the test below)
            errors.append(err)
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and torch.load(tmp_path / "f.pt", weights_only=True)[0].item() in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["f.pt"]


def test_the_store_refuses_a_model_whose_gates_were_permuted_across_or_within_layers(tmp_path):
    """The fingerprint covers the gate options the weights do not show: layer order (which changes a conv
    net's NPK) and unit permutations (a relabelling, same NPK, but another model)."""
    from npk.models import regimes
    torch.manual_seed(0)
    model = ConvDGN(1, [3, 3, 3], input_size=5, d_out=1).double()
    X = images(4)
    npk_gram(model, X, checkpoint_dir=tmp_path / "t")
    for over in ("layers", "units"):
        shuffled = regimes.shuffled_gates(model, seed=1, over=over)
        assert torch.equal(npk_gram(shuffled, X), npk_gram(model, X)) is (over == "units")
        with pytest.raises(ValueError, match="model"):
            npk_gram(shuffled, X, checkpoint_dir=tmp_path / "t")
