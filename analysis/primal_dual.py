"""primal-dual: the DLGN's two linearities (its gates as half-spaces, q = A x + b) and its learnt NPK against a
DNN's: eigenvalue decay, top-k eigenspaces, alignment, kernel ridge on the top-k eigenvectors.

CPU runs quoted in the README (a few minutes each on one thread):
  npk run primal-dual --threads 1 --out results/primal-dual/digits
  npk run primal-dual --dataset fashion-mnist --n 2000 --n-test 500 --threads 1 --out results/primal-dual/fashion-mnist
  npk run primal-dual --dataset cifar10 --data-root DIR --n 2000 --n-test 500 --threads 1 --out results/primal-dual/cifar10
A larger CIFAR-10 run (GPU):  python analysis/primal_dual.py --data-root DIR
  (its config, analysis/configs/primal-dual.json; --config FILE: another one; any flag of `npk run` works)
The README's table from finished runs:  python analysis/primal_dual.py table results/primal-dual/*/
"""
import sys
from pathlib import Path

from npk.cli import run_script
from npk.experiments.primal_dual import readme_table

CONFIG = Path(__file__).with_name("configs") / "primal-dual.json"

if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        print(readme_table(sys.argv[2:]))
        sys.exit(0)
    sys.exit(run_script("primal-dual", CONFIG, sys.argv[1:]))
