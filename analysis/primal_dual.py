"""primal-dual: the DLGN's two linearities (its gates as half-spaces, q = A x + b) and its learnt NPK against a
DNN's: eigenvalue decay, top-k eigenspaces, alignment, kernel ridge on the top-k eigenvectors.

Run (a few minutes each on one CPU thread):
  npk run primal-dual --threads 1 --out results/primal-dual/digits
  npk run primal-dual --dataset fashion-mnist --n 2000 --n-test 500 --threads 1 --out results/primal-dual/fashion-mnist
  npk run primal-dual --dataset cifar10 --data-root DIR --n 2000 --n-test 500 --threads 1 --out results/primal-dual/cifar10
The README's table:  python analysis/primal_dual.py results/primal-dual/*/
"""
import sys

from npk.experiments.primal_dual import readme_table

if __name__ == "__main__":
    print(readme_table(sys.argv[1:]))
