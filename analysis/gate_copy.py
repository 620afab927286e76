"""gate-copy: the gate-copying study of "Neural Path Features and Neural Path Kernel" (NeurIPS 2020,
arXiv 2006.10529): a value network trained from scratch on the frozen gates of a ReLU network copied after
k epochs of its training; its accuracy against k (GCONV, CIFAR-10: 67.09% at k = 0 to 79.43% at k = 60).

CPU (5,000 Fashion-MNIST images, FC 4x128, k = 0, 1, 2, 4, 8):  python analysis/gate_copy.py
GCONV on CIFAR-10, k = 0, 10, ..., 60 (GPU):                     python analysis/gate_copy.py --config analysis/configs/gate-copy.json
Any flag of `npk run` works here (--out, --force, --quick, --set key=value).
"""
import sys

from npk.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "gate-copy", *sys.argv[1:]]))
