"""regimes: the table of training regimes of "Neural Path Features and Neural Path Kernel" (NeurIPS 2020,
arXiv 2006.10529): FRNPF-II, FRNPF-DI, DLNPF, FLNPF and ReLU, mean +- std over seeds of the best and the
final test accuracy.

CPU (digits, FC 6x128 and a small conv net, 2 seeds):  python analysis/regimes.py
GCONV on CIFAR-10 (Adam 3e-4, 200 epochs, 5 seeds, GPU): python analysis/regimes.py --config analysis/configs/regimes.json
  VCONV instead:      add --set conv_preset=VCONV --set epochs=80
  FC 6x128 on MNIST:  python analysis/regimes.py --dataset mnist --data-root DIR --set 'families=["fc"]' \\
                      --set lr=1e-4 --set epochs=100 --set n_seeds=5 --set device=cuda
Any flag of `npk run` works here (--out, --force, --quick, --set key=value).
"""
import sys

from npk.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "regimes", *sys.argv[1:]]))
