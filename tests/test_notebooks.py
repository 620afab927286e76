"""The tutorial notebooks run top to bottom and print the numbers they teach.

Each notebook in notebooks/ runs under nbclient in a fresh `python3` kernel. The kernel spec is written
to a temporary JUPYTER_PATH entry pointing at this interpreter, so the kernel is this environment's
Python whatever kernels the machine has, and the repository root goes first on its PYTHONPATH, so the
notebooks import this checkout. OMP_NUM_THREADS defaults to 1 in the kernel: the notebooks' tensors are
small, and on a 2-core machine shared with other jobs two OpenMP threads spin-waiting cost several
times the CPU time of one. The last cell of every notebook prints its key results as JSON; the tests
read them from the executed notebook. 05_two_linearities is stored executed (its figures show without running
it); the tests run it afresh like the others.
"""
from __future__ import annotations

import json
import os
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


@pytest.fixture(scope="module")
def execute(tmp_path_factory):
    """execute(name) -> the executed notebook (each notebook runs once per module)."""
    prefix = tmp_path_factory.mktemp("kernel")
    kernelspec.install(kernel_name="python3", prefix=str(prefix))   # argv[0] = sys.executable
    done: dict[str, nbformat.NotebookNode] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(prefix / "share" / "jupyter"),
                                                               os.environ.get("JUPYTER_PATH")])))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        mp.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))

        def run(name: str) -> nbformat.NotebookNode:
            if name not in done:
                nb = nbformat.read(NOTEBOOKS / name, as_version=4)
                client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                                 resources={"metadata": {"path": str(NOTEBOOKS)}})
                client.execute()   # raises CellExecutionError, with the traceback, if a cell fails
                done[name] = nb
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


@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert all(cell.execution_count is None and cell.outputs == [] for cell in code_cells(nb))


@pytest.mark.slow
def test_dual_view(execute):
    nb = execute("01_dual_view.ipynb")
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
