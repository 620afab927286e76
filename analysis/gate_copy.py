"""gate-copy: the gate-copying study of "Neural Path Features and Neural Path Kernel" (NeurIPS 2020,
arXiv 2006.10529): a value network trained from scratch on the frozen gates of a ReLU network copied after
k epochs of its training; its accuracy against k (GCONV, CIFAR-10: 67.09% at k = 0 to 79.43% at k = 60).

CPU (5,000 Fashion-MNIST images, FC 4x128, k = 0, 1, 2, 4, 8):  npk run gate-copy
GCONV on CIFAR-10, k = 0, 10, ..., 60 (GPU):                     python analysis/gate_copy.py
The script runs its config, analysis/configs/gate-copy.json (--config FILE: another one); any flag of
`npk run` works here too (--out, --force, --set key=value).
"""
import sys
from pathlib import Path

from npk.cli import run_script

CONFIG = Path(__file__).with_name("configs") / "gate-copy.json"

if __name__ == "__main__":
    sys.exit(run_script("gate-copy", CONFIG, sys.argv[1:]))
