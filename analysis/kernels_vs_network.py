"""kernels-vs-network: kernel ridge with the NPK (gates at init / learnt), the empirical NTK (init / end)
and the infinite-width NTK, against the trained network's own accuracy (2006.10529, 2110.03403).

CPU (digits, a few minutes):   npk run kernels-vs-network
Fashion-MNIST, 10,000 samples: python analysis/kernels_vs_network.py
The script runs its config, analysis/configs/kernels-vs-network.json (--config FILE: another one); any flag of
`npk run` works here too (--out, --force, --set key=value).
"""
import sys
from pathlib import Path

from npk.cli import run_script

CONFIG = Path(__file__).with_name("configs") / "kernels-vs-network.json"

if __name__ == "__main__":
    sys.exit(run_script("kernels-vs-network", CONFIG, sys.argv[1:]))
