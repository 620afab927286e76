"""regimes: the table of training regimes of "Neural Path Features and Neural Path Kernel" (NeurIPS 2020,
arXiv 2006.10529): FRNPF-II, FRNPF-DI, DLNPF, FLNPF and ReLU, mean +- std over seeds of the best and the
final test accuracy.

CPU (digits, FC 6x128 and a small conv net, 2 seeds):  npk run regimes
GCONV on CIFAR-10 (Adam 3e-4, 200 epochs, 5 seeds, GPU): python analysis/regimes.py
  VCONV instead:      add --set conv_preset=VCONV --set epochs=80
  FC 6x128 on MNIST:  python analysis/regimes.py --dataset mnist --data-root DIR --set 'families=["fc"]' \\
                      --set lr=1e-4 --set epochs=100 --set n_seeds=5 --set device=cuda
The script runs its config, analysis/configs/regimes.json (--config FILE: another one); any flag of
`npk run` works here too (--out, --force, --set key=value).
"""
import sys
from pathlib import Path

from npk.cli import run_script

CONFIG = Path(__file__).with_name("configs") / "regimes.json"

if __name__ == "__main__":
    sys.exit(run_script("regimes", CONFIG, sys.argv[1:]))
