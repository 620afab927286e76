"""theorems: every theorem check of the dual view in one report (PAPER.md section 2; arXiv 2006.10529,
2110.03403): duality, E[K^v] = d sigma^(2(d-1)) H with fixed gates (FC, conv-GAP, residual), rotational
invariance of circular conv + GAP NPKs (random inputs and real images), the residual ensemble; with the
cases that must fail (zero padding, flatten head, a wrong constant). Float64, no training.

CPU (digits images, about a minute):   npk run theorems
Wider sweeps, more draws, CIFAR-10:    python analysis/theorems.py
  (CIFAR-10 python batches in ./data/cifar-10-batches-py, or pass --data-root; CPU, tens of minutes)
The script runs its config, analysis/configs/theorems.json (--config FILE: another one); any flag of
`npk run` works here too (--out, --force, --set key=value).
"""
import sys
from pathlib import Path

from npk.cli import run_script

CONFIG = Path(__file__).with_name("configs") / "theorems.json"

if __name__ == "__main__":
    sys.exit(run_script("theorems", CONFIG, sys.argv[1:]))
