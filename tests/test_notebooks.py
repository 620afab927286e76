"""The tutorial notebooks run top to bottom, print the numbers they teach, and are stored with them.

Each notebook in notebooks/ runs under nbclient in a fresh `python3` kernel. The kernel spec is written
to a temporary JUPYTER_PATH entry pointing at this interpreter, so the kernel is this environment's
Python whatever kernels the machine has, and the repository root goes first on its PYTHONPATH, so the
notebooks import this checkout. OMP_NUM_THREADS defaults to 1 in the kernel: the notebooks' tensors are
small, and on a 2-core machine shared with other jobs two OpenMP threads spin-waiting cost several
times the CPU time of one. The last cell of every notebook prints its key results as JSON; the tests
read them from the executed notebook and compare them with the stored ones (DRIFT).

The notebooks are stored executed, figures included, so that a reader sees them without running them.
After editing one, store it again: `python tests/test_notebooks.py [NAME.ipynb ...]` (default: all). 05_two_linearities is checked like the others.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the dev extra: pip install -e .[dev]")
nbclient = pytest.importorskip("nbclient", reason="needs the dev extra: pip install -e .[dev]")
kernelspec = pytest.importorskip("ipykernel.kernelspec", reason="needs the dev extra: pip install -e .[dev]")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01_dual_view.ipynb", "02_conv_pooling_skips.ipynb", "03_kernels_vs_network.ipynb",
         "04_your_own_model.ipynb")
CELL_TIMEOUT = 300  # seconds per cell; the slowest cell takes a few seconds on an idle 2-core machine
MAX_BYTES = 1_000_000
DRIFT = {"rel_tol": 0.02, "abs_tol": 1e-6}   # a re-executed number may differ from the stored one this much


@contextlib.contextmanager
def kernel_environment():
    """A `python3` kernel spec for this interpreter, and the environment a notebook kernel runs in."""
    with tempfile.TemporaryDirectory() as prefix, pytest.MonkeyPatch.context() as mp:
        kernelspec.install(kernel_name="python3", prefix=prefix)   # argv[0] = sys.executable
        mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(Path(prefix) / "share" / "jupyter"),
                                                               os.environ.get("JUPYTER_PATH")])))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        mp.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
        yield


def execute_notebook(name: str):
    """notebooks/NAME executed top to bottom (raises CellExecutionError, with the traceback, if a cell fails)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def store(names=NAMES) -> None:
    """Execute the notebooks and write them back with their outputs (no timing metadata)."""
    with kernel_environment():
        for name in names:
            nb = execute_notebook(name)
            for cell in code_cells(nb):
                cell.metadata.pop("execution", None)
            nbformat.write(nb, NOTEBOOKS / name)
            print(f"stored {name}: {(NOTEBOOKS / name).stat().st_size:,} bytes")


@pytest.fixture(scope="module")
def execute():
    """execute(name) -> the executed notebook (each notebook runs once per module)."""
    done: dict = {}
    with kernel_environment():
        def run(name: str):
            if name not in done:
                done[name] = execute_notebook(name)
            return done[name]

        yield run


def code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def results(nb) -> dict:
    """The JSON dict that the notebook's last code cell prints."""
    last = code_cells(nb)[-1]
    text = "".join(out.get("text", "") for out in last.outputs
                   if out.output_type == "stream" and out.name == "stdout")
    return json.loads(text)


def check_ran(nb, n_figures: int) -> None:
    """Every code cell ran, none raised, and the notebook drew at least `n_figures` images."""
    cells = code_cells(nb)
    assert all(cell.execution_count is not None for cell in cells)
    errors = [out for cell in cells for out in cell.outputs if out.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    images = sum("image/png" in out.get("data", {}) for cell in cells for out in cell.outputs)
    assert images >= n_figures


def stored(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def assert_no_drift(fresh, kept, where: str = "RESULTS") -> None:
    """The re-executed results equal the stored ones: same keys and flags, numbers within DRIFT."""
    if isinstance(kept, dict):
        assert isinstance(fresh, dict) and fresh.keys() == kept.keys(), f"{where}: keys differ"
        for key in kept:
            assert_no_drift(fresh[key], kept[key], f"{where}[{key!r}]")
    elif isinstance(kept, list):
        assert isinstance(fresh, list) and len(fresh) == len(kept), f"{where}: lengths differ"
        for i, (a, b) in enumerate(zip(fresh, kept)):
            assert_no_drift(a, b, f"{where}[{i}]")
    elif isinstance(kept, (int, float)) and not isinstance(kept, bool):
        assert math.isclose(fresh, kept, **DRIFT), f"{where}: re-executed {fresh} vs stored {kept}"
    else:
        assert fresh == kept, f"{where}: re-executed {fresh!r} vs stored {kept!r}"


@pytest.mark.parametrize("name", NAMES)
def test_stored_with_outputs_and_figures(name):
    nb = stored(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    check_ran(nb, n_figures=1)
    assert (NOTEBOOKS / name).stat().st_size < MAX_BYTES
    assert results(nb)                                     # the stored numbers the tests compare with


def test_drift_is_caught():
    kept = {"accuracy": 0.95, "passed": True, "errors": [1e-15, 2e-3]}
    assert_no_drift({"accuracy": 0.951, "passed": True, "errors": [3e-15, 2.01e-3]}, kept)
    for fresh in ({"accuracy": 0.90, "passed": True, "errors": [1e-15, 2e-3]},
                  {"accuracy": 0.95, "passed": False, "errors": [1e-15, 2e-3]},
                  {"accuracy": 0.95, "passed": True, "errors": [1e-15, 3e-3]}):
        with pytest.raises(AssertionError):
            assert_no_drift(fresh, kept)


@pytest.mark.slow
def test_dual_view(execute):
    nb = execute("01_dual_view.ipynb")
    assert_no_drift(results(nb), results(stored("01_dual_view.ipynb")))
    check_ran(nb, n_figures=3)
    r = results(nb)
    assert r["duality_max_error"] < 1e-10          # net(X) = Phi v
    assert r["npk_max_error"] < 1e-10              # npk_gram = (X X^T) * prod G G^T = Phi Phi^T
    lin = r["linearity_error"]
    assert lin["DLGN"] < 1e-10 and min(lin["DNN"], lin["DGN"]) > 1e-3   # only a DLGN's gating is linear in x
    assert min(r["gate_regions"].values()) > 10
    assert r["digits_cosine"]["within_class"] > r["digits_cosine"]["between_class"] + 0.1


@pytest.mark.slow
def test_conv_pooling_skips(execute):
    nb = execute("02_conv_pooling_skips.ipynb")
    assert_no_drift(results(nb), results(stored("02_conv_pooling_skips.ipynb")))
    check_ran(nb, n_figures=3)
    r = results(nb)
    circular, zero = r["rotation_circular"], r["rotation_zero"]
    assert circular["passed"] and circular["statistic"] <= circular["tolerance"] <= 1e-12
    assert not zero["passed"] and zero["statistic"] > 1e-2        # zero padding breaks the invariance
    ensemble = r["ensemble"]
    assert ensemble["passed"] and ensemble["statistic"] < 1e-10
    assert len(ensemble["depth_share"]) == 5                        # 4 blocks: depths 0..4
    assert min(ensemble["depth_share"]) >= 0
    assert ensemble["share_sum"] == pytest.approx(1, abs=1e-10)


@pytest.mark.slow
def test_kernels_vs_network(execute):
    nb = execute("03_kernels_vs_network.ipynb")
    assert_no_drift(results(nb), results(stored("03_kernels_vs_network.ipynb")))
    check_ran(nb, n_figures=2)
    r = results(nb)
    assert min(r["DNN network"], r["DLGN network"]) > 0.9
    assert min(r["KRR"].values()) > 0.9
    for name in ("DNN", "DLGN"):   # training aligns the NPK with the labels
        assert r["alignment"][f"{name} NPK learnt"] > r["alignment"][f"{name} NPK init"]
    ntk = r["ntk_vs_npk"]
    assert ntk["passed"] and abs(ntk["ratio_mean"] - 1) < 0.1 and abs(ntk["slope"] + 0.5) <= 0.15


@pytest.mark.slow
def test_your_own_model(execute):
    nb = execute("04_your_own_model.ipynb")
    assert_no_drift(results(nb), results(stored("04_your_own_model.ipynb")))
    check_ran(nb, n_figures=1)
    r = results(nb)
    assert r["CNN network"] > 0.9 and r["DLGN twin network"] > 0.8
    assert r["traced_max_error"] < 1e-4                 # the traced CNN is the CNN (float32)
    assert r["twin_linearity_error"] < 1e-4             # the twin's gating network stays affine in x
    assert min(r["KRR"].values()) > 0.8
    assert all(0 < a < 1 for a in r["alignment"].values())


def test_two_linearities(execute):
    nb = execute("05_two_linearities.ipynb")
    check_ran(nb, n_figures=3)
    r = results(nb)
    assert r["map_max_error"] < 1e-10 and r["gates_are_half_spaces"]   # q = A x + b; gates = 1{A x + b > 0}
    assert r["npk_rel_error"] < 1e-12                                    # (X X^T) ⊙ prod G_l G_l^T = npk_gram
    assert r["test_accuracy"] > 0.8 and r["npk_ridge_accuracy"] > 0.9
    assert r["alignment"]["NPK"] > r["alignment"]["X X^T"] + 0.05        # the learnt gates add label structure


def test_two_linearities_is_stored_executed_and_small():
    path = NOTEBOOKS / "05_two_linearities.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert path.stat().st_size < 1_000_000
    check_ran(nb, n_figures=3)
    assert results(nb)["map_max_error"] < 1e-10


if __name__ == "__main__":
    store(sys.argv[1:] or NAMES)
