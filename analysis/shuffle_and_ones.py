"""shuffle-and-ones: from "Explicitising the implicit interpretability of deep neural networks via duality"
(arXiv 2203.16455): a DLGN / DGN whose value network reads a constant all-ones input, and one whose gates
are shuffled (a fixed permutation of the gated layers; of the units of every layer as the control) with the
value network retrained; the NPK of shuffled and unshuffled gates compared exactly.

CPU (digits, FC 3x128):              npk run shuffle-and-ones
C4GAP on CIFAR-10 (GPU):             python analysis/shuffle_and_ones.py
The script runs its config, analysis/configs/shuffle-and-ones.json (--config FILE: another one); any flag of
`npk run` works here too (--out, --force, --set key=value).
"""
import sys
from pathlib import Path

from npk.cli import run_script

CONFIG = Path(__file__).with_name("configs") / "shuffle-and-ones.json"

if __name__ == "__main__":
    sys.exit(run_script("shuffle-and-ones", CONFIG, sys.argv[1:]))
