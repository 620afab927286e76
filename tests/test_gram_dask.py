"""Gram tiles on a Dask cluster: a LocalCluster of 2 worker processes, one killed mid-run, equals the serial run."""
import os
import signal
import threading
import time

import pytest
import torch

distributed = pytest.importorskip("distributed")

from npk.kernels.npk import NPKTiles, npk_gram  # noqa: E402
from npk.kernels.ntk import ntk_gram  # noqa: E402
from npk.models import ConvDGN  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_class=distributed.Nanny) as cluster, distributed.Client(cluster) as client:
        yield cluster, client


def model_and_inputs(n=24):
    torch.manual_seed(0)
    model = ConvDGN(1, [4, 3], input_size=6, d_out=2).double()
    X = torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, X


@pytest.mark.slow
@pytest.mark.usefixtures("p2_tiles")
def test_a_worker_killed_mid_run_changes_nothing_bit_for_bit(cluster, tmp_path, monkeypatch):
    _, client = cluster
    model, X = model_and_inputs()
    options = dict(memory_budget=200_000, progress=False)       # 2-sample tiles: 78 tiles
    serial = npk_gram(model, X, **options)
    pids = list(client.run(os.getpid).values())
    seen = {}

    def kill_after_first_tiles():                               # the workers write the tiles into the store
        deadline = time.time() + 60
        while time.time() < deadline and len(list(tmp_path.glob("tile_*.pt"))) < 3:
            time.sleep(0.01)
        seen["tiles at kill"] = len(list(tmp_path.glob("tile_*.pt")))
        os.kill(pids[0], signal.SIGKILL)
    killer = threading.Thread(target=kill_after_first_tiles)
    killer.start()
    distributed_run = npk_gram(model, X, scheduler=client, checkpoint_dir=tmp_path, **options)
    killer.join()
    assert 3 <= seen["tiles at kill"] < 78, "the worker was not killed mid-run"
    assert torch.equal(distributed_run, serial)
    monkeypatch.setattr(NPKTiles, "tile", lambda *a: pytest.fail("a tile the workers stored was recomputed"))
    assert torch.equal(npk_gram(model, X, checkpoint_dir=tmp_path, **options), serial)


@pytest.mark.slow
@pytest.mark.usefixtures("p2_tiles")
def test_tiles_from_the_cluster_fill_an_out_file_and_its_store(cluster, tmp_path):
    _, client = cluster
    model, X = model_and_inputs(8)
    serial = npk_gram(model, X, memory_budget=200_000, progress=False)
    H = npk_gram(model, X, memory_budget=200_000, progress=False, scheduler=client, out=tmp_path / "H.npy",
                 checkpoint_dir=tmp_path / "store")
    assert torch.equal(H, serial) and len(list((tmp_path / "store").glob("tile_*.pt"))) == 4 * 5 // 2


@pytest.mark.slow
def test_a_scheduler_address_works_like_a_client_for_the_ntk(cluster):
    local, _ = cluster
    model, X = model_and_inputs(6)
    Y = X[:4] + 0.5
    serial = ntk_gram(model, X, Y, memory_budget=2**20, progress=False)
    assert torch.equal(ntk_gram(model, X, Y, memory_budget=2**20, progress=False, scheduler=local.scheduler_address),
                       serial)


def test_a_bad_scheduler_is_refused():
    model, X = model_and_inputs(2)
    with pytest.raises(ValueError, match="scheduler must be a dask.distributed Client or an address"):
        npk_gram(model, X, scheduler=42)
