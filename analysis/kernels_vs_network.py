"""kernels-vs-network: kernel ridge with the NPK (gates at init / learnt), the empirical NTK (init / end)
and the infinite-width NTK, against the trained network's own accuracy (2006.10529, 2110.03403).

CPU (digits, a few minutes):   python analysis/kernels_vs_network.py
Fashion-MNIST, 10,000 samples: python analysis/kernels_vs_network.py --config analysis/configs/kernels-vs-network.json
Any flag of `npk run` works here (--out, --force, --quick, --set key=value).
"""
import sys

from npk.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "kernels-vs-network", *sys.argv[1:]]))
