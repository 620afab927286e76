"""theorems: every theorem check of the dual view in one report (PAPER.md section 2; arXiv 2006.10529,
2110.03403): duality, E[K^v] = d sigma^(2(d-1)) H with fixed gates (FC, conv-GAP, residual), rotational
invariance of circular conv + GAP NPKs (random inputs and real images), the residual ensemble; with the
cases that must fail (zero padding, flatten head, a wrong constant). Float64, no training.

CPU (digits images, about a minute):   python analysis/theorems.py
Wider sweeps, more draws, CIFAR-10:    python analysis/theorems.py --config analysis/configs/theorems.json
  (CIFAR-10 python batches in ./data/cifar-10-batches-py, or pass --data-root; CPU, tens of minutes)
Any flag of `npk run` works here (--out, --force, --quick, --set key=value).
"""
import sys

from npk.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "theorems", *sys.argv[1:]]))
