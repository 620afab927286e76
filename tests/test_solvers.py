"""The streamed kernel ridge solver (npk.solvers, kernel_ridge(solver="cg")) against the dense Cholesky solve."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import npk.fit
from npk.fit import kernel_ridge, kernel_svm
from npk.kernels.infinite import infinite_ntk
from npk.solvers import StreamedGram, ridge_cg


def grams_on_disk(tmp_path, n: int, m: int, seed: int = 0):
    """(train path, test path, y_train, y_test, K_train float64, K_test float64): an infinite-width NTK of
    random inputs with labels from their signs, written as float32 .npy files (read back as the solver sees them)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + m, 12, generator=g, dtype=torch.float64)
    y = ((X[:, 0] > 0).long() + 2 * (X[:, 1] > 0.3).long()).numpy()
    K = infinite_ntk(X, depth=2).numpy().astype(np.float32)
    np.save(tmp_path / "train.npy", K[:n, :n])
    np.save(tmp_path / "test.npy", K[n:, :n])
    return (tmp_path / "train.npy", tmp_path / "test.npy", y[:n], y[n:],
            K[:n, :n].astype(np.float64), K[n:, :n].astype(np.float64))


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    return grams_on_disk(tmp_path_factory.mktemp("grams"), 500, 120)


def relative(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("lam", [1e-5, 1e-3, 1e-1, 3.0])
def test_streamed_cg_matches_the_dense_cholesky_solve_to_1e_4_in_scores(disk, lam):
    train, test, y, yt, K, Kt = disk
    dense = kernel_ridge(K, y, Kt, yt, lambdas=[lam], solver="cholesky")
    cg = kernel_ridge(train, y, np.load(test, mmap_mode="r"), yt, lambdas=[lam], solver="cg", landmarks=50)
    assert relative(cg.scores, dense.scores) < 1e-4
    assert cg.accuracy == dense.accuracy and cg.solver["final"]["converged"] == [True]


def test_streamed_grid_search_picks_the_dense_ridge_with_the_same_validation_numbers(disk):
    train, test, y, yt, K, Kt = disk
    dense = kernel_ridge(K, y, Kt, yt, solver="cholesky")
    cg = kernel_ridge(train, y, test, yt, solver="cg", landmarks=50)
    assert cg.param_relative == dense.param_relative
    for a, b in zip(cg.validation, dense.validation):
        assert a["accuracy"] == b["accuracy"] and a["mse"] == pytest.approx(b["mse"], rel=1e-4)
    assert relative(cg.scores, dense.scores) < 1e-4
    # every ridge value of the grid shares the validation passes: no more passes than the slowest value
    v = cg.solver["validation"]
    assert v["passes"] == max(v["iterations"]) and len(v["iterations"]) == len(npk.fit.RIDGE_GRID)
    assert cg.solver["passes"] == v["passes"] + 1 + cg.solver["final"]["passes"] + 1


def test_the_nystrom_preconditioner_cuts_the_iterations():
    # an RBF Gram of 3-d inputs: fast spectral decay, so plain CG at a small ridge needs ~1800 iterations
    X = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    G = StreamedGram(torch.exp(-torch.cdist(X, X) ** 2 / 2))
    Y = npk.fit._targets((X[:, 0] > 0).long(), 2)
    plain = ridge_cg(G, Y, [1e-4], landmarks=0, max_iter=3000)[1]
    nystrom = ridge_cg(G, Y, [1e-4], landmarks=200)[1]
    assert nystrom.converged == plain.converged == [True]
    assert nystrom.iterations[0] < plain.iterations[0] / 10


def test_a_cg_that_does_not_converge_is_reported_and_not_chosen(disk):
    train, test, y, yt, _, _ = disk
    r = kernel_ridge(train, y, test, yt, lambdas=[1e-6, 10.0], solver="cg", landmarks=0, max_iter=15)
    assert r.validation[0]["accuracy"] is None and r.param_relative == 10.0
    assert r.solver["validation"]["converged"] == [False, True]
    assert r.solver["validation"]["residuals"][0] > 1e-2
    with pytest.warns(RuntimeWarning, match="raise max_iter"):
        kernel_ridge(train, y, test, yt, lambdas=[1e-6], solver="cg", landmarks=0, max_iter=15)
    with pytest.raises(ValueError, match="no grid value"):
        kernel_ridge(train, y, test, yt, lambdas=[1e-6, 10.0], solver="cg", landmarks=0, max_iter=8)


def test_auto_streams_when_the_dense_path_would_not_fit(disk, monkeypatch):
    train, test, y, yt, _, _ = disk
    monkeypatch.setattr(npk.fit, "available_memory", lambda: 10**6)
    assert kernel_ridge(train, y, test, yt, lambdas=[0.1]).solver["name"] == "cg"
    with pytest.raises(MemoryError, match=r"solver='cg'\) streams"):
        kernel_svm(train, y, test, yt)


def test_a_pass_over_a_file_in_reused_blocks_is_the_dense_product_and_a_truncated_file_is_named(tmp_path, disk):
    """Blocks of 7 rows (the last one partial) read into reused buffers give K[rows] @ P as the in-memory
    product does, to float64 rounding; a file cut short after it was opened stops the pass with its name."""
    K = disk[4]
    train = tmp_path / "train.npy"
    np.save(train, K.astype(np.float32))
    G = StreamedGram(train, block_bytes=7 * 8 * K.shape[1])
    P = torch.randn(K.shape[1], 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = np.sort(np.random.default_rng(0).choice(len(K), 300, replace=False))
    assert G.block == 7 and len(K) % 7 != 0
    assert relative(G.matmul(P).numpy(), K @ P.numpy()) < 1e-14
    assert relative(G.matmul(P, rows).numpy(), K[rows] @ P.numpy()) < 1e-14
    with open(train, "r+b") as f:
        f.truncate(train.stat().st_size - 4 * K.shape[1])                  # the last row gone
    with pytest.raises(ValueError, match="truncated"):
        G.matmul(P)


def test_streamed_inputs_are_checked(tmp_path, disk):
    train, test, y, yt, K, _ = disk
    np.save(tmp_path / "rect.npy", K[:, :-1].astype(np.float32))
    with pytest.raises(ValueError, match="square"):
        kernel_ridge(tmp_path / "rect.npy", y, test, yt, solver="cg")
    with pytest.raises(ValueError, match="K_test must be"):
        kernel_ridge(train, y, tmp_path / "rect.npy", yt, solver="cg")
    bad = K.copy()
    bad[7, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        kernel_ridge(tmp_path / "nan.npy", y, test, yt, lambdas=[0.1], solver="cg")
    with pytest.raises(FileNotFoundError, match="no Gram file"):
        kernel_ridge(tmp_path / "missing.npy", y, test, yt, solver="cg")
    s, V = np.linalg.eigh(K)
    np.save(tmp_path / "indefinite.npy", K - 2 * s[-1] * np.outer(V[:, -1], V[:, -1]))   # eigenvalue -s_max
    with pytest.raises(ValueError, match="positive semi-definite"):
        kernel_ridge(tmp_path / "indefinite.npy", y, test, yt, lambdas=[0.1], solver="cg")


PEAK = textwrap.dedent("""
    import sys
    import numpy as np
    import npk.solvers
    from npk.fit import kernel_ridge
    train, y = sys.argv[1:]
    y = np.load(y)
    npk.solvers.BLOCK_BYTES = 2**20
    kernel_ridge(np.eye(40), np.arange(40) % 2, np.eye(40), None, lambdas=[0.1, 1.0], solver="cg", landmarks=5)

    def peak_above_start(work) -> int:
        status = lambda key: [int(v.split()[1]) * 1024 for v in open("/proc/self/status") if v.startswith(key)][0]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                               # resets the peak resident set VmHWM to VmRSS
        start = status("VmRSS")
        work()
        return status("VmHWM") - start
    print(peak_above_start(lambda: kernel_ridge(train, y, train, None, lambdas=[1.0], solver="cg", landmarks=50)),
          peak_above_start(lambda: np.load(train).sum()))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_the_streamed_fit_does_not_copy_the_gram_into_memory(tmp_path):
    n = 4000
    X = torch.randn(n, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    path = tmp_path / "train.npy"
    np.save(path, torch.exp(-torch.cdist(X, X) ** 2 / 16).float().numpy())
    np.save(tmp_path / "y.npy", (X[:, 0] > 0).long().numpy())
    out = subprocess.run([sys.executable, "-c", PEAK, str(path), str(tmp_path / "y.npy")], capture_output=True,
                         text=True, check=True)
    cg, load = map(int, out.stdout.split())
    size = path.stat().st_size
    assert load > 0.9 * size        # the measurement sees a copy of the file (file reads map nothing)
    assert cg < 0.25 * size         # the solver holds 1 MiB row blocks, its Nyström factor and vectors only


def test_an_explicit_validation_set_chooses_the_ridge_without_refit_and_cg_agrees(disk):
    train, test, y, yt, K, Kt = disk
    fit, val = np.arange(400), np.arange(400, 500)
    dense = kernel_ridge(K[np.ix_(fit, fit)], y[fit], Kt[:, fit], yt, K_val=K[np.ix_(val, fit)], y_val=y[val],
                         solver="cholesky")
    best = max(dense.validation, key=lambda row: (row["accuracy"], -row["mse"]))
    assert dense.param_relative == best["relative"]
    refit = kernel_ridge(K[np.ix_(fit, fit)], y[fit], Kt[:, fit], yt, lambdas=[dense.param_relative])
    assert relative(dense.scores, refit.scores) < 1e-10          # the chosen fit is the one on all of K_train
    np.save(train.parent / "fit.npy", K[np.ix_(fit, fit)].astype(np.float32))
    np.save(train.parent / "val.npy", K[np.ix_(val, fit)].astype(np.float32))
    cg = kernel_ridge(train.parent / "fit.npy", y[fit], Kt[:, fit], yt, K_val=train.parent / "val.npy",
                      y_val=y[val], solver="cg", landmarks=50)
    assert cg.param_relative == dense.param_relative and relative(cg.scores, dense.scores) < 1e-4
    assert cg.solver["passes"] == cg.solver["validation"]["passes"] + 2      # + validation and test scores
    with pytest.raises(ValueError, match="go together"):
        kernel_ridge(K, y, Kt, yt, K_val=K[:10])


def test_the_gemm_angles_of_the_infinite_ntk_agree_with_the_exact_ones_below_float32_rounding():
    X = torch.randn(300, 50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact, fast = infinite_ntk(X, depth=3), infinite_ntk(X, depth=3, exact_angles=False)
    assert relative(fast.numpy(), exact.numpy()) < 1e-7
    assert relative(exact.numpy(), exact.float().double().numpy()) > 1e-9      # float32 rounding is coarser
