"""npk-evolution: nu_t = y^T (H_t / tr H_t)^(-1) y and the alignment of a ReLU net's NPK along training, on
the binary 4-vs-7 task and the multi-class task ("Neural Path Features and Neural Path Kernel",
arXiv 2006.10529: a depth-6, width-100, bias-free net with weights +-sqrt(2/w); nu_t falls during training).

CPU (digits, about a minute):         npk run npk-evolution
MNIST 4 vs 7 and 10 classes (GPU):    python analysis/npk_evolution.py
  (the four MNIST idx files in ./data/mnist, or pass --data-root)
The script runs its config, analysis/configs/npk-evolution.json (--config FILE: another one); any flag of
`npk run` works here too (--out, --force, --set key=value).
"""
import sys
from pathlib import Path

from npk.cli import run_script

CONFIG = Path(__file__).with_name("configs") / "npk-evolution.json"

if __name__ == "__main__":
    sys.exit(run_script("npk-evolution", CONFIG, sys.argv[1:]))
